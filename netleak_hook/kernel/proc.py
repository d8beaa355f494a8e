"""Processes as /proc shows them."""
from __future__ import annotations

import os


def running(pid: int) -> bool:
    """Whether PID is a process that still runs: not gone, and not a zombie
    (one that exited and waits for its parent, or for an init that reaps
    slowly, to collect it; kill(pid, 0) still finds those)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except FileNotFoundError:
        return False            # gone between the two looks
    except OSError:
        return True
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")
