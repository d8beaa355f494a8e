"""What a workload starts with: no sockets from outside its session.

netleak-exec's last steps before exec. A socket the caller opened (and
passed on, as shells and service managers do) belongs to the caller's
cgroup: no program of the session sees its traffic, so a workload that
inherited one could send through it whatever its session says.
"""
from __future__ import annotations

import os
import stat


def inherited_sockets(first: int = 3) -> list[int]:
    """Open descriptors from FIRST on that are sockets."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < first:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            continue        # the directory listing's own descriptor, gone
    return found


def close_inherited_sockets() -> list[int]:
    """Close every socket above standard error; returns their numbers."""
    fds = inherited_sockets()
    for fd in fds:
        os.close(fd)
    return fds
