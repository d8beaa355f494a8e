"""The relay's DNS answerer: each session's stand-in names, and its queries
answered over UDP and TCP (or refused, with a proxy that takes addresses
only). The relay decides whom it answers; this says what.
"""
from __future__ import annotations

import socket
import threading
import time
from typing import Callable

from . import fakedns
from .records import Redirect, Route, destination


class Answerer:
    """The stand-in names of every session (POOLS, by cgroup id), and the
    answers from them. EVENT(reason, route, proto, daddr, dport, detail):
    the relay's events."""

    def __init__(self, event: Callable[..., None]) -> None:
        self.event = event
        self.pools: dict[int, fakedns.FakePool] = {}    # session (cgroup id) -> its names
        self.lock = threading.Lock()

    def _pool(self, route: Route) -> fakedns.FakePool | None:
        """The stand-in names of ROUTE's session (None: it takes no names);
        the lock held."""
        if not route.names:
            return None
        key = route.info.get("cgroup_id", 0)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = fakedns.FakePool()
        return pool

    def forget(self, cgroup_id: int) -> None:
        """A session ended: its names go with it."""
        with self.lock:
            self.pools.pop(cgroup_id, None)

    def destination(self, addr: str, port: int, route: Route) -> tuple[str | None, str]:
        """What to ask ROUTE's proxy for, to reach ADDR (records.destination
        with the session's names)."""
        with self.lock:
            pool = self._pool(route)
            return destination(addr, port, route, pool.name_for if pool else lambda a: None)

    def respond(self, query: bytes, route: Route) -> tuple[bytes | None, str]:
        with self.lock:
            return fakedns.respond(query, self._pool(route))

    def udp(self, s: socket.socket, query: bytes, peer: tuple, r: Redirect,
            route: Route) -> None:
        """Answer QUERY, from the session socket at PEER, on S."""
        answer, why = self.respond(query, route)
        if answer is not None:
            s.sendto(answer, peer)
        if why == "refused-local":
            self.event("proxy-dns", route, "udp", r.orig_addr, r.orig_port,
                       "names are not resolved with a socks5:// proxy (it takes addresses "
                       "only): use socks5h:// to have the proxy resolve them")

    def tcp(self, conn: socket.socket, r: Redirect, route: Route, seconds: float,
            queries: int, wait: float) -> None:
        """DNS over TCP, from the session socket whose record is R, for
        SECONDS and QUERIES at most, a read waiting
        WAIT at most: a connection kept open by a trickle would hold a
        place for good."""
        deadline = time.monotonic() + seconds
        asked = 0
        buf = b""
        while asked < queries:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(min(wait, left))
            chunk = conn.recv(65536)
            if not chunk:
                return
            msgs, buf = fakedns.tcp_frames(buf + chunk)
            asked += len(msgs)
            for m in msgs[:queries]:
                answer, why = self.respond(m, route)
                if answer is not None:
                    conn.sendall(fakedns.tcp_frame(answer))
                if why == "refused-local":
                    self.event("proxy-dns", route, "tcp", r.orig_addr, r.orig_port,
                               "names are not resolved with a socks5:// proxy: use "
                               "socks5h:// to have the proxy resolve them")
