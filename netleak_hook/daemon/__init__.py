"""The daemon, one per network namespace, by role (see each module's first line)."""
