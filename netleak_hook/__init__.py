"""netleak: a process tree's traffic leaves by one interface or not at all."""

__version__ = "0.1.0"
