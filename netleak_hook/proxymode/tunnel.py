"""The relay's tunnel: the connection to the session's proxy (with its
mark and device), and the bytes moved both ways with splice(2), the data
staying in the kernel; a failure on either side resets both.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import select
import socket
import struct

from .handshake import ProxyError
from .records import Route

CONNECT_TIMEOUT = 10.0      # to the proxy, and its handshake
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
SO_MARK = 36
SO_BINDTODEVICE = 25
F_SETPIPE_SZ = 1031


def upstream_socket(route: Route) -> socket.socket:
    """A socket for the connection to ROUTE's proxy (not connected)."""
    fam = socket.AF_INET6 if ":" in route.addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if route.iface:
            # a session with an interface: the proxy is reached through it
            # only (the device binding holds even if routing would differ)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, route.mark)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, route.iface.encode())
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except BaseException:
        s.close()
        raise
    return s


def splice_both(a: socket.socket, b: socket.socket) -> None:
    """Bytes both ways, in this thread, until both sides are done: a
    half-close is passed on; a reset or error on either side resets both
    (also while the other is blocked, as poll watches both at once)."""
    Pump(a, b).run()


class Pump:
    """Both directions of one tunnel: per direction a pipe that splice(2)
    fills from one socket and drains into the other, all non-blocking
    under one poll."""

    def __init__(self, a: socket.socket, b: socket.socket) -> None:
        self.socks = (a, b)
        self.pipes: list[tuple[int, int]] = []
        try:
            for _ in self.socks:
                r, w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
                self.pipes.append((r, w))
                with contextlib.suppress(OSError):
                    fcntl.fcntl(w, F_SETPIPE_SZ, PIPE_SIZE)
        except OSError:
            self._close_pipes()
            raise
        self.queued = [0, 0]        # bytes in the pipe read from socks[i]
        # the pipe read from socks[i] took no more (splice said EAGAIN with
        # bytes in it): not read into until some drained; a pipe fills by
        # slots, one a fragment, so its byte size says little
        self.full = [False, False]
        self.eof = [False, False]   # socks[i] has nothing more to send
        self.shut = [False, False]  # socks[i]'s end passed on (other's write side shut)
        self.hup = [False, False]   # poll said socks[i] hung up (closed both ways)

    def run(self) -> None:
        try:
            for s in self.socks:
                s.setblocking(False)
            poller = select.poll()
            while not all(self.shut):
                want = {}
                for i, s in enumerate(self.socks):
                    ev = 0
                    if not self.eof[i] and not self.full[i]:
                        ev |= select.POLLIN
                    if self.queued[1 - i]:
                        ev |= select.POLLOUT
                    if not ev and self.hup[i]:
                        # nothing to do with it now, and its hang-up (its end
                        # came, ours went) would wake us in a loop
                        with contextlib.suppress(KeyError):
                            poller.unregister(s.fileno())
                        continue
                    # also with nothing asked: poll reports an error (a
                    # reset while the other side blocks) and a hang-up
                    want[s.fileno()] = (i, ev)
                    poller.register(s.fileno(), ev)
                for fd, ev in poller.poll():
                    i, asked = want[fd]
                    if ev & (select.POLLERR | select.POLLNVAL):
                        raise ConnectionResetError
                    if ev & select.POLLOUT and asked & select.POLLOUT:
                        self._write(i)
                    if ev & (select.POLLIN | select.POLLHUP) and asked & select.POLLIN:
                        self._read(i)
                    elif ev & select.POLLHUP:
                        self.hup[i] = True
                self._pass_on_ends()
        except OSError:
            for s in self.socks:
                reset(s)
        finally:
            self._close_pipes()

    def _close_pipes(self) -> None:
        for r, w in self.pipes:
            os.close(r)
            os.close(w)
        self.pipes = []

    def _read(self, i: int) -> None:
        try:
            n = os.splice(self.socks[i].fileno(), self.pipes[i][1], CHUNK,
                          flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            self.full[i] = self.queued[i] > 0
            return
        if n == 0:
            self.eof[i] = True
        self.queued[i] += n

    def _write(self, i: int) -> None:
        """Drain what socks[1 - i] sent into socks[i]."""
        try:
            n = os.splice(self.pipes[1 - i][0], self.socks[i].fileno(), self.queued[1 - i],
                          flags=os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK)
        except BlockingIOError:
            return
        self.queued[1 - i] -= n
        if n:
            self.full[1 - i] = False

    def _pass_on_ends(self) -> None:
        for i in (0, 1):
            if self.eof[i] and not self.queued[i] and not self.shut[i]:
                self.socks[1 - i].shutdown(socket.SHUT_WR)
                self.shut[i] = True


def reset(s: socket.socket) -> None:
    """Have S's close send a reset, so its peer sees the failure (not an
    end of file)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def why(e: BaseException) -> str:
    """What failed on the way through the proxy, in a few words."""
    if isinstance(e, ProxyError):
        return e.message
    if isinstance(e, socket.timeout):
        return "no answer from the proxy"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e)
