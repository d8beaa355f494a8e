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


def socket_owners(pids) -> dict[int, tuple[int, int]]:
    """The sockets PIDS hold, by inode: inode -> (pid, fd) of the first
    holder found. A process gone, or one whose descriptors cannot be read,
    holds none."""
    out: dict[int, tuple[int, int]] = {}
    for pid in pids:
        try:
            names = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in names:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and fd.isdigit():
                out.setdefault(int(target[8:-1]), (pid, int(fd)))
    return out


_PIDFD_GETFD = 438      # the same number on every architecture (new-style table)


def borrow_fd(pid: int, fd: int) -> int:
    """A descriptor of this process for PID's FD (pidfd_getfd(2), Linux 5.6;
    needs the right to ptrace PID): the caller closes it. OSError when it
    cannot be had."""
    import ctypes
    pidfd = os.pidfd_open(pid)
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        got = libc.syscall(_PIDFD_GETFD, pidfd, fd, 0)
        if got < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return got
    finally:
        os.close(pidfd)


def comm(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/comm", "rb") as f:
            return f.read().rstrip(b"\n").decode("utf-8", "replace")
    except OSError:
        return None


def boot_ns() -> int:
    """CLOCK_BOOTTIME in ns: the programs' clock (bpf_ktime_get_boot_ns)."""
    import time
    return time.clock_gettime_ns(time.CLOCK_BOOTTIME)
