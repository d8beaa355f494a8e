"""Proxy mode's relay, run inside the daemon.

The programs send every TCP connect() of a proxy-mode session to
127.0.0.1:PORT (or [::1]:PORT) and record, under the socket's cookie,
where it was going and whose it is (map `redirect`). The relay accepts,
asks the kernel which socket is at the other end (its cookie: socket
diagnostics, which no process can make lie), reads that record, opens a
connection to the session's proxy (bound to the session's interface, if
it has one), does the proxy's handshake for the original destination, and
then moves bytes both ways with splice(2) (the data stays in the kernel),
one thread per connection.

DNS of such sessions comes here too (UDP to one of two answerers, TCP to
the relay like any connection), told apart the same way: with a proxy
that takes names (socks5h, http) a name gets a stand-in address from a
reserved block, the session's own (no other session, nor any other
program, can ask for them or connect to them), and a connection to that
address goes to the proxy with the name; with socks5, which takes
addresses only, every query is refused.

Whatever the relay has no record for (another local program that found
its ports) gets nothing: the relay is no open proxy, and no oracle.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import ipaddress
import logging
import os
import queue
import select
import socket
import struct
import threading
import time
from typing import Callable

from . import fakedns
from ..core import abi
from ..core.errors import NetleakError
from ..kernel import bpfsys
from .handshake import Handshake, ProxyError

log = logging.getLogger("netleak.relay")

REDIRECT_SIZE = abi.REDIRECT.size     # the map `redirect`'s value, by socket cookie
_STAND_INS = ipaddress.ip_network(fakedns.FAKE_NET4)
CONNECT_TIMEOUT = 10.0      # to the proxy, and its handshake
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
SO_MARK = 36
SO_BINDTODEVICE = 25
F_SETPIPE_SZ = 1031
EVENTS_PER_SECOND = 20      # the relay's own events, all sessions together
MAX_CONNECTIONS = 4096      # relayed at once (each: a thread, 2 sockets, 2 pipes)
SESSION_CONNECTIONS = 1024  # ... of them one session's: no session takes them all
DNS_TCP_SECONDS = 60.0      # a DNS-over-TCP connection's whole life
DNS_TCP_QUERIES = 1000      # ... and the queries it may ask


@dataclasses.dataclass(frozen=True)
class Route:
    """How one session's connections leave: what the relay needs of it."""

    scheme: str             # socks5, socks5h, http
    addr: str               # the proxy's address (resolved at session start)
    port: int
    user: str = ""
    password: str = ""
    iface: str = ""         # bind the connection to the proxy to it ("": routing decides)
    mark: int = 0           # and give it this fwmark
    info: dict = dataclasses.field(default_factory=dict)  # session id, cgroup... for events

    @property
    def names(self) -> bool:
        """The proxy takes host names (so DNS gets stand-in addresses)."""
        return self.scheme != "socks5"


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Where a session's socket was going, and where the programs sent it."""

    orig_addr: str
    orig_port: int      # host order
    server_addr: str
    server_port: int
    cgroup: int         # the session (its policy key)
    proxy: bool         # a TCP connection to the relay


def unpack_redirect(raw: bytes) -> Redirect:
    r = abi.REDIRECT.unpack(raw)
    return Redirect(abi.addr_text(r["orig"]), abi.net_port(r["orig_port"]),
                    abi.addr_text(r["server"]), abi.net_port(r["server_port"]), r["cgroup"],
                    bool(r["proxy"]))


def cookie_key(cookie: int) -> bytes:
    return cookie.to_bytes(8, "little")


def _same_addr(a: str, b: str) -> bool:
    def norm(x: str):
        v = ipaddress.ip_address(x.split("%", 1)[0])
        return v.ipv4_mapped or v if v.version == 6 else v
    return norm(a) == norm(b)


def kernel_identify(protocol: int, peer: tuple, local: tuple) -> int | None:
    """The cookie of the socket at PEER that talks to LOCAL, as the kernel
    says (None: there is none, or it is gone)."""
    from ..kernel import sockdiag
    try:
        found = sockdiag.lookup(protocol, peer[:2], local[:2])
    except OSError:
        return None
    return found.cookie if found else None


def destination(addr: str, port: int, route: Route,
                name_for: Callable[[str], str | None]) -> tuple[str | None, str]:
    """What to ask the proxy for (pure): the host (the name behind a
    stand-in address, when the proxy takes names), or None and why not."""
    if route.names:
        name = name_for(addr)
        if name is not None:
            return name, ""
        if ipaddress.ip_address(addr) in _STAND_INS:
            return None, (f"{addr} is a stand-in address this session was not given "
                          f"(another session's, or from before the daemon restarted): "
                          f"look the name up again")
    return addr, ""


class Relay:
    """The listeners and their threads. `lookup(cgroup_id)` gives the Route
    of a session (None: not a proxy-mode session); events go to EVENTS as
    dicts of the event log's form."""

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
        self.pools: dict[int, fakedns.FakePool] = {}    # session (cgroup id) -> its names
        self.pool_lock = threading.Lock()
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

    def _loop(self) -> None:
        poller = select.poll()
        by_fd = {}
        for s in self.tcp + self.dns_names + self.dns_refuse:
            poller.register(s.fileno(), select.POLLIN)
            by_fd[s.fileno()] = s
        poller.register(self._wake_r, select.POLLIN)
        while not self._stopping:
            try:
                ready = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in ready:
                s = by_fd.get(fd)
                if s is None:
                    continue
                try:
                    if s.type == socket.SOCK_STREAM:
                        conn, _ = s.accept()
                        conn.setblocking(True)
                        if self.active >= MAX_CONNECTIONS:
                            _reset(conn)
                            conn.close()
                            self._event("proxy-failed", None, "tcp", "", 0,
                                        f"more than {MAX_CONNECTIONS} connections through "
                                        f"the relay at once: this one was reset")
                            continue
                        with self._count:
                            self.active += 1
                        threading.Thread(target=self._serve, args=(conn,),
                                         name="relay-conn", daemon=True).start()
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
                except Exception:
                    log.exception("relay")

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
        if r.server_port != local[1] or not _same_addr(r.server_addr, local[0]):
            return None     # sent elsewhere (a resolver), or here by itself
        if (protocol == socket.IPPROTO_TCP) != r.proxy:
            return None
        return r

    def _pool(self, route: Route) -> fakedns.FakePool | None:
        """The stand-in names of ROUTE's session (None: it takes no names)."""
        if not route.names:
            return None
        key = route.info.get("cgroup_id", 0)
        pool = self.pools.get(key)
        if pool is None:
            pool = self.pools[key] = fakedns.FakePool()
        return pool

    def forget(self, cgroup_id: int) -> None:
        """A session ended: its names go with it."""
        with self.pool_lock:
            self.pools.pop(cgroup_id, None)

    def _respond(self, query: bytes, route: Route) -> tuple[bytes | None, str]:
        with self.pool_lock:
            return fakedns.respond(query, self._pool(route))

    def _answer_udp(self, s: socket.socket, names: bool) -> None:
        data, peer = s.recvfrom(4096)
        r = self._entry(socket.IPPROTO_UDP, peer, s.getsockname())
        route = self.lookup(r.cgroup) if r is not None else None
        if route is None or route.names != names:
            self.strangers += 1     # nothing to say to whoever that is
            return
        answer, why = self._respond(data, route)
        if answer is not None:
            s.sendto(answer, peer)
        if why == "refused-local":
            self._event("proxy-dns", route, "udp", r.orig_addr, r.orig_port,
                        "names are not resolved with a socks5:// proxy (it takes addresses "
                        "only): use socks5h:// to have the proxy resolve them")

    def _serve_dns_tcp(self, conn: socket.socket, route: Route) -> None:
        """DNS over TCP, for a while and a number of queries: a connection
        kept open by a trickle would hold a place for good."""
        deadline = time.monotonic() + DNS_TCP_SECONDS
        asked = 0
        buf = b""
        while asked < DNS_TCP_QUERIES:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            conn.settimeout(min(CONNECT_TIMEOUT, left))
            chunk = conn.recv(65536)
            if not chunk:
                return
            msgs, buf = fakedns.tcp_frames(buf + chunk)
            asked += len(msgs)
            for m in msgs[:DNS_TCP_QUERIES]:
                answer, why = self._respond(m, route)
                if answer is not None:
                    conn.sendall(fakedns.tcp_frame(answer))
                if why == "refused-local":
                    self._event("proxy-dns", route, "tcp", "", 53,
                                "names are not resolved with a socks5:// proxy: use "
                                "socks5h:// to have the proxy resolve them")

    # ---------- connections ----------

    def _serve(self, conn: socket.socket) -> None:
        upstream = None
        counted = None      # the session whose connection this is, once counted
        try:
            r = self._entry(socket.IPPROTO_TCP, conn.getpeername(), conn.getsockname())
            if r is None:
                return      # not from a proxy-mode session: no open proxy here
            addr, port = r.orig_addr, r.orig_port
            route = self.lookup(r.cgroup)
            if route is None:
                return
            with self._count:
                held = self.per_session.get(r.cgroup, 0)
                if held < SESSION_CONNECTIONS:
                    self.per_session[r.cgroup] = held + 1
            if held >= SESSION_CONNECTIONS:
                self._event("proxy-failed", route, "tcp", addr, port,
                            f"the session has {SESSION_CONNECTIONS} connections through the "
                            f"relay at once: this one was reset")
                _reset(conn)
                return
            counted = r.cgroup
            if port == 53:
                self._serve_dns_tcp(conn, route)
                return
            with self.pool_lock:
                pool = self._pool(route)
                host, why = destination(addr, port, route,
                                        pool.name_for if pool else lambda a: None)
            if host is None:
                self._event("proxy-failed", route, "tcp", addr, port, why)
                _reset(conn)
                return
            try:
                upstream, leftover = open_tunnel(route, host, port)
            except (OSError, ProxyError) as e:
                self._event("proxy-failed", route, "tcp", addr, port,
                            f"{host}:{port} through {route.scheme}://{route.addr}:"
                            f"{route.port}: {_why(e)}")
                _reset(conn)
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if leftover:
                conn.sendall(leftover)
            self.served += 1
            splice_both(conn, upstream)
        except OSError as e:
            log.debug("relay connection: %s", e)
        finally:
            conn.close()
            if upstream is not None:
                upstream.close()
            with self._count:
                self.active -= 1
                if counted is not None:
                    left = self.per_session.get(counted, 1) - 1
                    if left > 0:
                        self.per_session[counted] = left
                    else:
                        self.per_session.pop(counted, None)

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


def open_tunnel(route: Route, host: str, port: int) -> tuple[socket.socket, bytes]:
    """A connection through ROUTE's proxy to HOST:PORT, and the first bytes
    of the destination that came with the proxy's answer."""
    fam = socket.AF_INET6 if ":" in route.addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        if route.iface:
            # a session with an interface: the proxy is reached through it
            # only (the device binding holds even if routing would differ)
            s.setsockopt(socket.SOL_SOCKET, SO_MARK, route.mark)
            s.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, route.iface.encode())
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.settimeout(CONNECT_TIMEOUT)
        s.connect((route.addr, route.port))
        hs = Handshake(route.scheme, host, port, route.user, route.password)
        s.sendall(hs.start())
        deadline = time.monotonic() + CONNECT_TIMEOUT
        while not hs.done:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            out = hs.feed(s.recv(4096))
            if out:
                s.sendall(out)
        s.settimeout(None)
        return s, hs.leftover
    except BaseException:
        s.close()
        raise


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
                _reset(s)
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


def _reset(s: socket.socket) -> None:
    """Have S's close send a reset, so its peer sees the failure (not an
    end of file)."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


def _why(e: BaseException) -> str:
    if isinstance(e, ProxyError):
        return e.message
    if isinstance(e, socket.timeout):
        return "no answer from the proxy"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower()
    return str(e)
