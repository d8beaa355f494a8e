"""Proxy mode's relay, run inside the daemon.

The programs send every TCP connect() of a proxy-mode session to
127.0.0.1:PORT (or [::1]:PORT) and record, under the socket's cookie,
where it was going and whose it is (map `redirect`). The relay accepts,
asks the kernel which socket is at the other end (its cookie: socket
diagnostics, which no process can make lie), reads that record, opens a
connection to the session's proxy (bound to the session's interface, if
it has one), does the proxy's handshake for the original destination, and
then moves bytes both ways with splice(2) (the data stays in the kernel),
one thread per open tunnel. Accepting, asking the kernel, connecting to
the proxy and its handshake are one event loop's work: no thread waits on
a proxy that is slow to answer.

DNS of such sessions comes here too (UDP to one of two answerers, TCP to
the relay like any connection), told apart the same way: with a proxy
that takes names (socks5h, http) a name gets a stand-in address from a
reserved block, the session's own (no other session, nor any other
program, can ask for them or connect to them), and a connection to that
address goes to the proxy with the name; with socks5, which takes
addresses only, every query is refused.

Whatever the relay has no record for (another local program that found
its ports) gets nothing: the relay is no open proxy, and no oracle.

Here: the listeners, the event loop, the limits, whom DNS is answered
for, the relay's own events. Its parts: records.py (the record of a
socket, whose it is, the session's route), opening.py (the connection to
the proxy, opened without blocking), tunnel.py (the bytes both ways),
answerer.py (what DNS is answered).
"""
from __future__ import annotations

import contextlib
import errno
import heapq
import itertools
import logging
import os
import queue
import socket
import threading
import time
from typing import Callable

from ..core.errors import NetleakError
from ..kernel import bpfsys
from .answerer import Answerer
from .handshake import ProxyError
from .opening import Opening
from .records import (REDIRECT_SIZE, Redirect, Route, cookie_key, kernel_identify, same_addr,
                      unpack_redirect)
from .poller import ERR, HUP, IN, OUT, Poller
from .tunnel import CONNECT_TIMEOUT, reset, splice_both, why
# found here too, as they were before the relay had parts
from .records import destination
from .tunnel import SO_BINDTODEVICE, SO_MARK

log = logging.getLogger("netleak.relay")

EVENTS_PER_SECOND = 20      # the relay's own events, all sessions together
MAX_CONNECTIONS = 4096      # relayed at once (each open one: a thread, 2 sockets, 2 pipes)
SESSION_CONNECTIONS = 1024  # ... of them one session's: no session takes them all
DNS_TCP_SECONDS = 60.0      # a DNS-over-TCP connection's whole life
DNS_TCP_QUERIES = 1000      # ... and the queries it may ask


class Relay:
    """The listeners and the event loop. `lookup(cgroup_id)` gives the
    Route of a session (None: not a proxy-mode session); events go to
    EVENTS as dicts of the event log's form."""

    def __init__(self, redirect_fd: int, lookup: Callable[[int], Route | None],
                 events: "queue.SimpleQueue[dict]", port: int = 0, netns: int = 0,
                 identify: Callable[[int, tuple, tuple], int | None] = kernel_identify,
                 make=None) -> None:
        """PORT: TCP and DNS with names on it, refused DNS on the next (0:
        any free ones, for tests). NETNS: this namespace's cookie.
        IDENTIFY(protocol, peer, local): the cookie of the socket at PEER.
        MAKE(fn): the sockets FN makes, made where they should be (the
        daemon makes them in a cgroup of their own, whose ingress program
        keeps strangers out); by default, here."""
        self.make = make or (lambda fn: fn())
        self.redirect_fd = redirect_fd
        self.lookup = lookup
        self.events = events
        self.identify = identify
        self.answers = Answerer(self._event)
        self.pools = self.answers.pools     # session (cgroup id) -> its names
        self.strangers = 0          # what came from no session's socket: no answer
        self.tcp: list[socket.socket] = []
        self.dns_names: list[socket.socket] = []    # answers with stand-in addresses
        self.dns_refuse: list[socket.socket] = []   # refuses every query
        self.port = self.names_port = self.refuse_port = 0
        self.want_port = port
        self.netns = netns
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC)
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._window = (0, 0)       # (second, events sent in it)
        self.served = 0             # connections carried, for status and tests
        self.active = 0             # connections being served now
        self.per_session: dict[int, int] = {}   # cgroup id -> its connections now
        self._count = threading.Lock()
        # the loop's own (its thread alone touches them)
        self._poll: Poller | None = None
        self._timers: list = []     # heap of (when, n, fn)
        self._n = itertools.count()
        self._openings: set["_Pending"] = set()

    # ---------- listeners ----------

    def start(self) -> None:
        p = self.want_port
        try:
            socks = self.make(lambda: listeners(p))
        except OSError as e:
            raise NetleakError(
                f"proxy mode's relay cannot listen on 127.0.0.1 and ::1, ports {p} and "
                f"{p + 1} ({e.strerror}): another program uses them; set "
                f"NETLEAK_RELAY_PORT to a free port below 1023") from None
        third = len(socks) // 3
        self.tcp, self.dns_names, self.dns_refuse = \
            socks[:third], socks[third:2 * third], socks[2 * third:]
        self.port = self.tcp[0].getsockname()[1]
        self.names_port = self.dns_names[0].getsockname()[1]
        self.refuse_port = self.dns_refuse[0].getsockname()[1]
        for s in socks:
            s.setblocking(False)
        self._poll = Poller()       # here: a descriptor short fails start
        threading.stack_size(512 * 1024)
        self._thread = threading.Thread(target=self._loop, name="relay", daemon=True)
        self._thread.start()
        log.info("relay on 127.0.0.1 and ::1: TCP port %d, DNS ports %d (names) and %d "
                 "(refused)", self.port, self.names_port, self.refuse_port)

    @property
    def ports(self) -> tuple[int, int, int]:
        return self.port, self.names_port, self.refuse_port

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        if self._thread is not None:
            self._thread.join(timeout=5)
        for s in self.tcp + self.dns_names + self.dns_refuse:
            s.close()
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)

    # ---------- the loop ----------

    def _loop(self) -> None:
        poll = self._poll
        for s in self.tcp + self.dns_names + self.dns_refuse:
            poll.add(s, IN, self._listener_ready, s)
        poll.add(self._wake_r, IN, self._woken, None)
        try:
            while not self._stopping:
                for fn, arg, ev in poll.wait(self._timeout()):
                    try:
                        fn(arg, ev)
                    except Exception:
                        log.exception("relay")
                self._due()
        finally:
            for p in list(self._openings):
                p.end()             # its place goes back too
            poll.close()

    def later(self, seconds: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._timers, (time.monotonic() + seconds, next(self._n), fn))

    def _timeout(self) -> float | None:
        return max(0.0, self._timers[0][0] - time.monotonic()) if self._timers else None

    def _due(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, fn = heapq.heappop(self._timers)
            try:
                fn()
            except Exception:
                log.exception("relay timer")

    def _woken(self, _arg, _ev) -> None:
        with contextlib.suppress(OSError):
            os.read(self._wake_r, 64)

    def _listener_ready(self, s: socket.socket, _ev) -> None:
        try:
            if s.type == socket.SOCK_STREAM:
                conn, _ = s.accept()
                if self.active >= MAX_CONNECTIONS:
                    reset(conn)
                    conn.close()
                    self._event("proxy-failed", None, "tcp", "", 0,
                                f"more than {MAX_CONNECTIONS} connections through "
                                f"the relay at once: this one was reset")
                    return
                with self._count:
                    self.active += 1
                self._begin(conn)
            else:
                self._answer_udp(s, names=s in self.dns_names)
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # the connection waits in the backlog: let descriptors
                # free up rather than spin on it
                log.warning("relay: %s", e.strerror)
                time.sleep(0.05)
            elif e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EINTR):
                log.warning("relay: %s", e)

    # ---------- DNS ----------

    def _entry(self, protocol: int, peer: tuple, local: tuple) -> Redirect | None:
        """The record of the session socket at PEER, when the programs sent
        it here (to LOCAL); None for anything else."""
        cookie = self.identify(protocol, peer, local)
        if cookie is None:
            return None
        raw = bpfsys.map_lookup(self.redirect_fd, cookie_key(cookie), REDIRECT_SIZE)
        if raw is None:
            return None
        r = unpack_redirect(raw)
        if r.server_port != local[1] or not same_addr(r.server_addr, local[0]):
            return None     # sent elsewhere (a resolver), or here by itself
        if (protocol == socket.IPPROTO_TCP) != r.proxy:
            return None
        return r

    def forget(self, cgroup_id: int) -> None:
        """A session ended: its names go with it."""
        self.answers.forget(cgroup_id)

    def _answer_udp(self, s: socket.socket, names: bool) -> None:
        data, peer = s.recvfrom(4096)
        r = self._entry(socket.IPPROTO_UDP, peer, s.getsockname())
        route = self.lookup(r.cgroup) if r is not None else None
        if route is None or route.names != names:
            self.strangers += 1     # nothing to say to whoever that is
            return
        self.answers.udp(s, data, peer, r, route)

    # ---------- connections ----------

    def _begin(self, conn: socket.socket) -> None:
        """A connection accepted: whose it is, then the way to its proxy
        (or DNS over TCP, in a thread of its own)."""
        counted = None
        try:
            r = self._entry(socket.IPPROTO_TCP, conn.getpeername(), conn.getsockname())
            if r is None:
                raise _Drop      # not from a proxy-mode session: no open proxy here
            addr, port = r.orig_addr, r.orig_port
            route = self.lookup(r.cgroup)
            if route is None:
                raise _Drop
            with self._count:
                held = self.per_session.get(r.cgroup, 0)
                if held < SESSION_CONNECTIONS:
                    self.per_session[r.cgroup] = held + 1
            if held >= SESSION_CONNECTIONS:
                self._event("proxy-failed", route, "tcp", addr, port,
                            f"the session has {SESSION_CONNECTIONS} connections through the "
                            f"relay at once: this one was reset")
                reset(conn)
                raise _Drop
            counted = r.cgroup
            if port == 53:
                threading.Thread(target=self._dns_tcp, args=(conn, r, route), name="relay-dns",
                                 daemon=True).start()
                return
            host, refused = self.answers.destination(addr, port, route)
            if host is None:
                self._event("proxy-failed", route, "tcp", addr, port, refused)
                reset(conn)
                raise _Drop
            p = _Pending(self, conn, route, host, port, r.cgroup, addr)
        except (_Drop, OSError) as e:
            if isinstance(e, OSError):
                log.debug("relay connection: %s", e)
            conn.close()
            self.release(counted)
            return
        try:
            p.opening = Opening(route, host, port)
        except OSError as e:
            p.failed(e)
            return
        self._openings.add(p)
        self._poll.add(p.opening.sock, OUT, self._opening_ready, p)
        self.later(CONNECT_TIMEOUT, p.timed_out)

    def _opening_ready(self, p: "_Pending", ev: int) -> None:
        if p.over:
            return
        trouble = bool(ev & (ERR | HUP))    # step finds out what
        try:
            if not p.opening.step(bool(ev & IN) or trouble, bool(ev & OUT) or trouble):
                self._poll.change(p.opening.sock, IN | (OUT if p.opening.wants_write() else 0))
                return
        except (OSError, ProxyError) as e:
            p.failed(e)
            return
        self._poll.drop(p.opening.sock)
        p.over = True               # open: no longer the deadline's
        self._openings.discard(p)
        self._carry(p)

    def _carry(self, p: "_Pending") -> None:
        """The tunnel is open: a thread of its own moves its bytes."""
        conn, up, leftover = p.conn, p.opening.sock, p.opening.leftover
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as e:
            log.debug("relay connection: %s", e)
            reset(up)
            p.close()
            self.release(p.cgroup)
            return
        self.served += 1
        # the destination's first bytes go first, from that thread: a
        # client that takes not even those never holds up the loop
        threading.Thread(target=self._splice, args=(conn, up, p.cgroup, leftover),
                         name="relay-conn", daemon=True).start()

    def _splice(self, conn: socket.socket, up: socket.socket, cgroup: int,
                first: bytes = b"") -> None:
        """FIRST: bytes for CONN before the rest."""
        try:
            if first:
                conn.settimeout(CONNECT_TIMEOUT)
                conn.sendall(first)
            splice_both(conn, up)
        except OSError as e:
            log.debug("relay connection: %s", e)
        finally:
            conn.close()
            up.close()
            self.release(cgroup)

    def _dns_tcp(self, conn: socket.socket, r: Redirect, route: Route) -> None:
        try:
            conn.setblocking(True)
            self.answers.tcp(conn, r, route, DNS_TCP_SECONDS, DNS_TCP_QUERIES, CONNECT_TIMEOUT)
        except OSError as e:
            log.debug("relay connection: %s", e)
        finally:
            conn.close()
            self.release(r.cgroup)

    def release(self, cgroup: int | None) -> None:
        """A connection ended: its place goes back."""
        with self._count:
            self.active -= 1
            if cgroup is not None:
                left = self.per_session.get(cgroup, 1) - 1
                if left > 0:
                    self.per_session[cgroup] = left
                else:
                    self.per_session.pop(cgroup, None)

    # ---------- events ----------

    def _event(self, reason: str, route: Route | None, proto: str, daddr: str,
               dport: int, detail: str) -> None:
        now = time.time()
        second, sent = self._window
        if int(now) != second:
            second, sent = int(now), 0
        if sent >= EVENTS_PER_SECOND:
            return
        self._window = (second, sent + 1)
        info = route.info if route else {}
        fam = None if not daddr else ("ipv6" if ":" in daddr else "ipv4")
        from ..core.events import iso
        self.events.put({
            "time": iso(now), "ts": round(now, 6), "session": info.get("id"),
            "container": info.get("container") or None, "cgroup": info.get("cgroup"),
            "cgroup_id": info.get("cgroup_id"), "iface": info.get("iface"),
            "pid": None, "comm": None, "family": fam, "protocol": proto,
            "daddr": daddr or None, "dport": dport or None, "reason": reason,
            "hook": "relay", "suppressed": 0, "detail": detail})


class _Drop(Exception):
    """A connection the relay closes at once."""


class _Pending:
    """An accepted connection whose way to the proxy is being opened."""

    def __init__(self, relay: Relay, conn: socket.socket, route: Route, host: str,
                 port: int, cgroup: int, addr: str) -> None:
        self.relay = relay
        self.addr = addr            # where the program was going (for events)
        self.conn = conn
        self.route = route
        self.host = host
        self.port = port
        self.cgroup = cgroup
        self.opening: Opening | None = None
        self.over = False

    def failed(self, e: BaseException) -> None:
        r = self.route
        self.relay._event("proxy-failed", r, "tcp", self.addr, self.port,
                          f"{self.host}:{self.port} through {r.scheme}://{r.addr}:{r.port}: "
                          f"{why(e)}")
        reset(self.conn)
        self.end()

    def timed_out(self) -> None:
        if not self.over and self.opening is not None:
            self.failed(socket.timeout())

    def end(self) -> None:
        if self.over:
            return
        self.close()
        self.relay.release(self.cgroup)

    def close(self) -> None:
        self.over = True
        self.relay._openings.discard(self)
        if self.opening is not None:
            self.relay._poll.drop(self.opening.sock)
            self.opening.sock.close()
        self.conn.close()


def listeners(port: int = 0) -> list[socket.socket]:
    """The relay's sockets, on 127.0.0.1 and ::1: TCP on PORT, DNS with names
    on PORT, refused DNS on the next (0: free ones), in that order, as many
    of each (::1 only where the machine has IPv6)."""
    made: list[socket.socket] = []
    try:
        for kind, want in ((socket.SOCK_STREAM, port), (socket.SOCK_DGRAM, port),
                           (socket.SOCK_DGRAM, port + 1 if port else 0)):
            made += _pair(kind, want)[1]
    except OSError:
        for s in made:
            s.close()
        raise
    if len(made) % 3:       # ::1 for some, not all: keep to one family
        for s in made:
            s.close()
        raise OSError(errno.EADDRNOTAVAIL, "::1 is usable for only some of the ports")
    return made


def _pair(kind: int, want: int = 0) -> tuple[int, list[socket.socket]]:
    """Sockets of KIND on 127.0.0.1 and ::1 with one port number, WANT or a
    free one (::1 only where the machine has IPv6)."""
    for _ in range(20):
        v4 = socket.socket(socket.AF_INET, kind | socket.SOCK_CLOEXEC)
        if kind == socket.SOCK_STREAM:
            v4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            v4.bind(("127.0.0.1", want))
        except OSError:
            v4.close()
            raise
        port = v4.getsockname()[1]
        try:
            v6 = socket.socket(socket.AF_INET6, kind | socket.SOCK_CLOEXEC)
        except OSError:
            return port, _listening([v4])
        v6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if kind == socket.SOCK_STREAM:
            v6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            v6.bind(("::1", port))
        except OSError as e:
            v6.close()
            if e.errno == errno.EADDRINUSE:
                v4.close()
                if want:
                    raise
                continue
            return port, _listening([v4])      # no ::1 here
        return port, _listening([v4, v6])
    raise OSError(errno.EADDRINUSE, "no port free on both 127.0.0.1 and ::1")


def _listening(socks: list[socket.socket]) -> list[socket.socket]:
    """Non-blocking: the loop never waits on one that turned out empty."""
    for s in socks:
        if s.type == socket.SOCK_STREAM:
            s.listen(1024)
        s.setblocking(False)
    return socks
