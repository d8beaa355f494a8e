"""The relay's event loop's readiness: epoll, each descriptor with its
handler."""
from __future__ import annotations

import contextlib
import select

IN, OUT, RDHUP = select.EPOLLIN, select.EPOLLOUT, select.EPOLLRDHUP
ERR, HUP = select.EPOLLERR, select.EPOLLHUP     # reported whatever is asked


class Poller:
    """epoll, each descriptor with its handler: FN(ARG, events). A mask of
    0 still reports errors and hang-ups (what a side that ended or waits
    is watched for)."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.handlers: dict[int, tuple] = {}

    @staticmethod
    def _fd(f) -> int:
        return f if isinstance(f, int) else f.fileno()

    def add(self, f, mask: int, fn, arg) -> None:
        fd = self._fd(f)
        self.ep.register(fd, mask)
        self.handlers[fd] = (fn, arg)

    def change(self, f, mask: int) -> None:
        fd = self._fd(f)
        if fd in self.handlers:
            self.ep.modify(fd, mask)

    def drop(self, f) -> None:
        fd = self._fd(f)
        if self.handlers.pop(fd, None) is not None:
            with contextlib.suppress(OSError):
                self.ep.unregister(fd)

    def wait(self, timeout: float | None) -> list[tuple]:
        try:
            ready = self.ep.poll(-1 if timeout is None else timeout)
        except InterruptedError:
            return []
        return [(*self.handlers[fd], ev) for fd, ev in ready if fd in self.handlers]

    def close(self) -> None:
        self.ep.close()
