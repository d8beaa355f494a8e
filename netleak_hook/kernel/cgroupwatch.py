"""cgroup.events of many cgroups in one epoll set: the kernel reports a
change (populated 1 -> 0) as EPOLLPRI at once."""
from __future__ import annotations

import contextlib
import os
import select

from . import cgroupfs


class CgroupWatch:
    """cgroup.events of every session, kept open in one epoll set: the
    kernel reports a change (populated 1 -> 0) as EPOLLPRI at once."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.files: dict[str, object] = {}   # session id -> open cgroup.events
        self.by_fd: dict[int, str] = {}

    def fileno(self) -> int:
        return self.ep.fileno()

    def sync(self, paths: dict[str, str]) -> set[str]:
        """Watch exactly these sessions (id -> cgroup directory). Returns
        the newly watched ones already empty or gone: their change came
        before the watch, and no event will report it."""
        for sid in [k for k in self.files if k not in paths]:
            self._close(sid)
        missed = set()
        for sid, path in paths.items():
            if sid in self.files:
                continue
            try:
                f = open(os.path.join(path, "cgroup.events"), "rb", buffering=0)
            except OSError:
                missed.add(sid)     # gone
                continue
            try:
                first = f.read()    # arms the notification
            except OSError:
                f.close()
                missed.add(sid)     # gone
                continue
            try:
                self.ep.register(f.fileno(), select.EPOLLPRI | select.EPOLLERR)
            except BaseException:
                f.close()
                raise
            self.files[sid] = f
            self.by_fd[f.fileno()] = sid
            if cgroupfs.parse_populated(first) is False:
                missed.add(sid)
        return missed

    def drain(self) -> set[str]:
        """Acknowledge reported changes (a read re-arms the file); returns
        the sessions whose cgroup changed."""
        changed = set()
        for fd, _ in self.ep.poll(0):
            sid = self.by_fd.get(fd)
            if sid is None:
                continue
            changed.add(sid)
            f = self.files[sid]
            try:
                f.seek(0)
                f.read()
            except OSError:     # the cgroup was removed
                self._close(sid)
        return changed

    def _close(self, sid: str) -> None:
        f = self.files.pop(sid)
        fd = f.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError):
            self.ep.unregister(fd)
        f.close()
