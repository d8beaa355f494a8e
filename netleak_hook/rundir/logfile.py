"""Logs that cannot grow without bound, never write through a link, and
do not repeat one warning thousands of times a second.

What a workload does can make the daemon warn (a reply that cannot be
sent, a connection that fails), as fast as the workload likes: the same
warning is let through a few times a minute and then counted, and every
log file turns over into NAME.1 at a size cap.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Callable

from . import safedir

DAEMON_LOG_MAX = 4 << 20        # daemon.log, then daemon.log.1
HOOK_LOG_MAX = 1 << 20          # hook.log, then hook.log.1


class CappedFile:
    """Appends to NAME in the directory DIR_FD (never through a link),
    turning the file over into NAME.1 when a write would take it past
    MAX_BYTES: at most about twice MAX_BYTES on disk."""

    def __init__(self, dir_fd: int, name: str, max_bytes: int, where: str = "") -> None:
        self.dir_fd = dir_fd
        self.name = name
        self.max_bytes = max_bytes
        self.where = where          # the directory's path, for messages
        self._fd: int | None = None

    def _open(self) -> int:
        if self._fd is None:
            self._fd = safedir.open_file(self.dir_fd, self.name,
                                         os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600,
                                         self.where)
        return self._fd

    def write(self, data: bytes) -> None:
        """Append DATA (whole lines); more than MAX_BYTES at once goes in
        pieces of whole lines, and only what the two files can hold."""
        if len(data) <= self.max_bytes:
            self._write(data)
            return
        pieces, start = [], 0
        while start < len(data):
            end = data.rfind(b"\n", start, start + self.max_bytes)
            end = start + self.max_bytes if end < 0 else end + 1
            pieces.append(data[start:end])
            start = end
        for piece in pieces[-2:]:       # the older ones would be turned over at once
            self._write(piece)

    def _write(self, data: bytes) -> None:
        fd = self._open()
        st = os.fstat(fd)
        try:        # removed, or turned over by another writer: the name is another file
            gone = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False).st_ino != \
                st.st_ino
        except FileNotFoundError:
            gone = True
        if gone or (st.st_size and st.st_size + len(data) > self.max_bytes):
            self.close()
            if not gone:
                os.replace(self.name, self.name + ".1", src_dir_fd=self.dir_fd,
                           dst_dir_fd=self.dir_fd)
            fd = self._open()
        os.write(fd, data)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def append_capped(dir_fd: int, name: str, data: bytes, max_bytes: int,
                  where: str = "") -> None:
    """One append to a capped file (for writers that come and go, as the
    hook does: several may append at once; O_APPEND keeps lines whole)."""
    f = CappedFile(dir_fd, name, max_bytes, where)
    try:
        f.write(data)
    finally:
        f.close()


class RepeatFilter(logging.Filter):
    """At WARNING and above, at most BURST records of one kind (logger,
    level, message before its arguments) per PERIOD seconds; the first one
    let through after that says how many were held back."""

    MAX_KINDS = 1024

    def __init__(self, burst: int = 5, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst = burst
        self.period = period
        self.clock = clock
        self.kinds: dict[tuple, list] = {}     # kind -> [window start, let through, held]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        now = self.clock()
        kind = (record.name, record.levelno, str(record.msg))
        seen = self.kinds.get(kind)
        if seen is None:
            if len(self.kinds) >= self.MAX_KINDS:
                self.kinds.clear()
            seen = self.kinds[kind] = [now, 0, 0]
        if now - seen[0] >= self.period:
            seen[0], seen[1] = now, 0
        if seen[1] >= self.burst:
            seen[2] += 1
            return False
        seen[1] += 1
        if seen[2]:
            held, seen[2] = seen[2], 0
            record.msg = f"{record.msg} [{held} more like it suppressed]"
        return True


class CappedHandler(logging.Handler):
    """A logging handler writing formatted lines into a CappedFile."""

    def __init__(self, target: CappedFile) -> None:
        super().__init__()
        self.target = target

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.target.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:
            self.handleError(record)

    def close(self) -> None:
        self.target.close()
        super().close()
