"""netleak-hook: the OCI hook entry point (containers are not supported yet)."""
from __future__ import annotations

import sys


def main() -> None:
    sys.stderr.write("netleak-hook: container support is not available in this "
                     "version; use 'netleak-exec IFACE CMD' for now\n")
    sys.exit(125)
