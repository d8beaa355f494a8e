"""The connection to a session's proxy, opened without blocking: connect,
then the proxy's handshake (handshake.Handshake), driven by the relay's
event loop one readiness at a time."""
from __future__ import annotations

import errno
import socket

from .handshake import Handshake
from .records import Route
from .tunnel import upstream_socket


class Opening:
    """One connection to the proxy on its way; `step` after each readiness
    of `sock`, until it returns True (open: `leftover` holds the
    destination's first bytes). OSError or ProxyError when it failed."""

    def __init__(self, route: Route, host: str, port: int) -> None:
        self.sock = upstream_socket(route)
        self.hs = Handshake(route.scheme, host, port, route.user, route.password)
        self.connected = False
        self.out = b""          # to send to the proxy
        self.read = 0           # bytes read from the proxy (all of them the handshake's)
        self.sock.setblocking(False)
        try:
            err = self.sock.connect_ex((route.addr, route.port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, errno.errorcode.get(err, str(err)).lower())
        except BaseException:
            self.sock.close()
            raise

    @property
    def leftover(self) -> bytes:
        return self.hs.leftover

    def wants_write(self) -> bool:
        return not self.connected or bool(self.out)

    def step(self, readable: bool, writable: bool) -> bool:
        if not self.connected:
            if not writable:
                return False
            err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, _strerror(err))
            self.connected = True
            self.out = self.hs.start()
        if self.out:
            try:
                n = self.sock.send(self.out)
            except BlockingIOError:
                n = 0
            self.out = self.out[n:]
        if readable:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return False
            self.read += len(data)
            self.out += self.hs.feed(data)
            if self.out:
                return self.step(False, True)
        return self.hs.done and not self.out


def _strerror(err: int) -> str:
    import os
    return os.strerror(err)
