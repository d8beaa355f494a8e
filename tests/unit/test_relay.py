"""The relay of proxy mode, run for real on loopback, without BPF or root.

The map `redirect` is a dict (relay.bpfsys replaced by a fake offering
map_lookup); the proxy is tests/proxyd.py, run as a subprocess
on 127.0.0.1 port 0; the destinations are small servers in threads on
127.0.0.1 port 0. A client files its original destination under its own
socket's cookie (SO_COOKIE), as the programs do, and connects to the relay,
which asks the kernel (socket diagnostics, for real) whose socket it hears
from. Nothing but loopback sockets is used: no
addresses, routes or sysctls, so these run as root in the root network
namespace too. Every socket has a timeout, so a bug cannot hang the suite.
"""
from __future__ import annotations

import base64
import errno
import hashlib
import ipaddress
import os
import queue
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import types
import weakref

import pytest

from tests import helpers
from netleak_hook.proxymode import relay, tunnel

HERE = os.path.dirname(os.path.abspath(__file__))
PROXYD = os.path.join(HERE, "..", "proxyd.py")
T = 5.0                 # any one socket operation
T_BULK = 30.0           # a 20 MB sendall
BIG = 20 << 20
CGROUP = 4242           # the session of the tests' map entries
NAME = "server.example"     # proxyd resolves it (--hosts) to 127.0.0.1
USER, PASSWORD = "alice", "pw-Secret-123"
WRONG = "pw-WRONG-456"
STAND_IN = ipaddress.ip_network("198.18.0.0/15")


# ---------------------------------------------------------------- the map

class FakeBpf:
    """bpfsys as the relay uses it, over a dict."""

    def __init__(self) -> None:
        self.map: dict[bytes, bytes] = {}
        self.lock = threading.Lock()
        self.calls: list[tuple] = []

    def map_lookup(self, fd: int, key: bytes, size: int) -> bytes | None:
        with self.lock:
            self.calls.append(("lookup", fd, key, size))
            return self.map.get(key)


SO_COOKIE = 57


def cookie(s: socket.socket) -> bytes:
    """The socket's cookie, as the map's key."""
    return s.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8)


def _addr16(addr: str) -> bytes:
    a = ipaddress.ip_address(addr)
    return b"\0" * 10 + b"\xff\xff" + a.packed if a.version == 4 else a.packed


def _net(port: int) -> bytes:
    return port.to_bytes(2, "big") + b"\0\0"


def redirect(addr: str, port: int, server: str, server_port: int, cgroup: int = CGROUP,
             proxy: bool = True) -> bytes:
    """struct nl_redirect by hand: where the socket was going (ADDR:PORT)
    and where the programs sent it (SERVER:SERVER_PORT), ports in network
    order in the low half of a u32; the session; a TCP connection to the
    relay (PROXY)."""
    raw = (_addr16(addr) + _addr16(server) + _net(port) + _net(server_port) +
           cgroup.to_bytes(8, "little") + int(proxy).to_bytes(4, "little") + b"\0" * 4)
    assert relay.unpack_redirect(raw) == relay.Redirect(addr, port, server, server_port,
                                                        cgroup, proxy)
    return raw


# ---------------------------------------------------------------- servers

class Server:
    """A TCP server on HOST port 0 in a thread; MODE says what each
    connection gets; what the server saw goes to `seen`."""

    def __init__(self, mode: str, host: str = "127.0.0.1", data: bytes = b"") -> None:
        self.mode, self.data = mode, data
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self.port = self.sock.getsockname()[1]
        self.seen: queue.Queue = queue.Queue()
        self.accepted = 0
        self.stopping = False
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.stopping = True
        self.thread.join(T)
        self.sock.close()

    def _accept(self) -> None:
        while not self.stopping:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            c.settimeout(T_BULK)
            threading.Thread(target=self._handle, args=(c,), daemon=True).start()

    def _handle(self, c: socket.socket) -> None:
        try:
            getattr(self, "_" + self.mode)(c)
        except OSError as e:
            self.seen.put(("error", type(e).__name__))
        finally:
            c.close()

    def _echo(self, c: socket.socket) -> None:
        while True:
            d = c.recv(1 << 20)
            if not d:
                c.shutdown(socket.SHUT_WR)
                return
            c.sendall(d)

    def _count(self, c: socket.socket) -> None:
        """Answers only after the client's EOF: how much came, and its hash."""
        n, h = _drain(c)
        c.sendall(f"{n} {h}\n".encode())

    def _talk(self, c: socket.socket) -> None:
        """Says hello and half-closes first; then reads to EOF."""
        c.sendall(b"hello\n")
        c.shutdown(socket.SHUT_WR)
        self.seen.put(("got", *_drain(c)))

    def _duplex(self, c: socket.socket) -> None:
        """Sends DATA while reading the client's bytes, both at once."""
        err = []
        t = threading.Thread(target=_send_and_close, args=(c, self.data, err), daemon=True)
        t.start()
        got = _drain(c)
        t.join(T_BULK)
        self.seen.put(("got", *got) if not err else ("error", err[0]))

    def _banner(self, c: socket.socket) -> None:
        c.sendall(b"BANNER\n")
        self._echo(c)

    def _watch(self, c: socket.socket) -> None:
        """Acks each read with 'ok'; on 'RST' resets; reports how it ended."""
        while True:
            try:
                d = c.recv(65536)
            except ConnectionResetError:
                self.seen.put("reset")
                return
            if not d:
                self.seen.put("eof")
                return
            if b"RST" in d:
                c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.seen.put("sent-reset")
                return
            c.sendall(b"ok")


def _drain(s: socket.socket) -> tuple[int, str]:
    n, h = 0, hashlib.sha256()
    while True:
        d = s.recv(1 << 20)
        if not d:
            return n, h.hexdigest()
        n += len(d)
        h.update(d)


def _send_while_draining(s: socket.socket, data: bytes):
    """Send DATA (then half-close) from a thread while reading S to its end:
    (bytes read, their SHA-256), the sender's errors, whether it still runs."""
    err: list = []
    sender = threading.Thread(target=_send_and_close, args=(s, data, err), daemon=True)
    sender.start()
    got = _drain(s)
    sender.join(T_BULK)
    return got, err, sender.is_alive()


def _send_and_close(s: socket.socket, data: bytes, err: list) -> None:
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
    except OSError as e:
        err.append(repr(e))


def read_all(s: socket.socket) -> bytes:
    out = []
    while True:
        d = s.recv(1 << 20)
        if not d:
            return b"".join(out)
        out.append(d)


def read_exactly(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        d = s.recv(n - len(buf))
        assert d, f"EOF after {len(buf)} of {n} bytes: {buf!r}"
        buf += d
    return buf


def wait_for(s: socket.socket, write: bool) -> tuple[bool, bool]:
    """Whether S is readable, writable (asked only with WRITE) within T:
    poll, not select, whose descriptors stop at 1023 (a long run has more)."""
    p = select.poll()
    p.register(s, select.POLLIN | (select.POLLOUT if write else 0))
    ev = 0
    for _, e in p.poll(T * 1000):
        ev |= e
    return bool(ev & (select.POLLIN | select.POLLERR | select.POLLHUP)), \
        bool(ev & (select.POLLOUT | select.POLLERR))


# sockets whose connect() the relay's reset beat (on loopback it can)
RESET_AT_CONNECT: "weakref.WeakSet[socket.socket]" = weakref.WeakSet()


def ended(s: socket.socket) -> str:
    """How S ends without any byte: 'eof' or 'reset' (a byte fails the test)."""
    if s in RESET_AT_CONNECT:
        return "reset"
    try:
        d = s.recv(4096)
    except ConnectionResetError:
        return "reset"
    except OSError as e:
        if e.errno == errno.ENOTCONN:   # reset while connect() was returning
            return "reset"
        raise
    assert d == b"", f"got bytes {d[:60]!r}: the relay is an open proxy"
    return "eof"


def has_v6() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def servers():
    big = os.urandom(BIG)
    made = {m: Server(m, data=big if m == "duplex" else b"")
            for m in ("echo", "count", "talk", "duplex", "banner", "watch")}
    yield types.SimpleNamespace(**made)
    for s in made.values():
        s.close()


# ---------------------------------------------------------------- proxyd

class Proxyd:
    """tests/proxyd.py on 127.0.0.1 port 0, killed by PID."""

    def __init__(self, tmp, kind: str, *extra: str) -> None:
        self.kind = kind
        self.log = str(tmp / f"{kind}.log")
        self.out = str(tmp / f"{kind}.out")
        with open(self.out, "w") as out:
            self.proc = subprocess.Popen(
                [sys.executable, PROXYD, "--kind", kind, "--listen", "127.0.0.1:0",
                 "--hosts", f"{NAME}=127.0.0.1", "--log", self.log, *extra],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.port = 0

    def wait_ready(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with open(self.out) as f:
                first = f.readline()
            if first.startswith("ready ") and first.endswith("\n"):
                self.port = int(first.split()[1])
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        with open(self.out) as f:
            pytest.fail(f"proxyd {self.kind} not ready: {f.read()!r}")

    def lines(self) -> list[str]:
        """`DEST_HOST DEST_PORT RESULT` of each tunnel asked for."""
        try:
            with open(self.log) as f:
                return [" ".join(ln.split()[3:]) for ln in f if ln.startswith("connect ")]
        except FileNotFoundError:
            return []

    def kill(self) -> None:
        try:
            os.kill(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=T)


@pytest.fixture(scope="module")
def proxies(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("proxyd")
    made = {}
    try:
        for name, kind, extra in [
                ("socks5", "socks5", ()), ("http", "http", ()),
                ("socks5_auth", "socks5", ("--user", USER, "--password", PASSWORD)),
                ("http_auth", "http", ("--user", USER, "--password", PASSWORD))]:
            sub = tmp / name
            sub.mkdir()
            made[name] = Proxyd(sub, kind, *extra)
        for p in made.values():
            p.wait_ready()
        yield types.SimpleNamespace(**made)
    finally:
        for p in made.values():
            p.kill()


@pytest.fixture
def silent():
    """A listener that never accepts: contacted or not, and a proxy that
    never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


def untouched(listener: socket.socket) -> bool:
    listener.setblocking(False)
    try:
        c, _ = listener.accept()
    except BlockingIOError:
        return True
    c.close()
    return False


@pytest.fixture
def closed_port():
    """A port nothing listens on (held, so nothing else takes it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    yield s.getsockname()[1]
    s.close()


# ---------------------------------------------------------------- the relay

class Lab:
    def __init__(self, monkeypatch) -> None:
        self.bpf = FakeBpf()
        monkeypatch.setattr(relay, "bpfsys", self.bpf)
        self.routes: dict[int, relay.Route] = {}
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.relay = relay.Relay(redirect_fd=-1, lookup=self.routes.get, events=self.events)
        self.relay.start()
        self.socks: list[socket.socket] = []

    def route(self, scheme: str, port: int, cgroup: int = CGROUP, **kw) -> relay.Route:
        kw.setdefault("info", {"id": f"session-{cgroup}", "cgroup_id": cgroup})
        r = relay.Route(scheme=scheme, addr="127.0.0.1", port=port, **kw)
        self.routes[cgroup] = r
        return r

    def via(self, proxies, scheme: str, auth: str = "") -> relay.Route:
        """A route of SCHEME through the matching proxyd (socks5h: the socks5 one)."""
        kind = "socks5" if scheme.startswith("socks5") else "http"
        if auth:
            return self.route(scheme, getattr(proxies, kind + "_auth").port,
                              user=USER, password=auth)
        return self.route(scheme, getattr(proxies, kind).port)

    def client(self, addr: str, port: int, cgroup: int = CGROUP, src: str = "127.0.0.1",
               entry: bool = True, src_port: int = 0, timeout: float = T) -> socket.socket:
        """A connection to the relay from SRC whose map entry says it was
        going to ADDR:PORT (none if not ENTRY)."""
        s = self.socket(src, timeout)
        if src_port:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, src_port))
        if entry:
            with self.bpf.lock:
                self.bpf.map[cookie(s)] = redirect(addr, port, src, self.relay.port, cgroup)
        try:
            s.connect((src, self.relay.port))
        except ConnectionResetError:
            RESET_AT_CONNECT.add(s)     # on loopback a relay that resets at once can
        return s                        # beat connect()

    def socket(self, src: str = "127.0.0.1", timeout: float = T,
               kind: int = socket.SOCK_STREAM) -> socket.socket:
        s = socket.socket(socket.AF_INET6 if ":" in src else socket.AF_INET, kind)
        s.settimeout(timeout)
        self.socks.append(s)
        return s

    def event(self, timeout: float = T) -> dict:
        return self.events.get(timeout=timeout)

    def no_event(self, wait: float = 0.1) -> None:
        with pytest.raises(queue.Empty):
            print("unexpected event:", self.events.get(timeout=wait))

    def close(self) -> None:
        for s in self.socks:
            s.close()
        self.relay.close()


@pytest.fixture
def lab(monkeypatch):
    lab = Lab(monkeypatch)
    yield lab
    lab.close()
    # every connection's place given back, once
    assert wait_until(lambda: lab.relay.active == 0 and not lab.relay.per_session), \
        (lab.relay.active, lab.relay.per_session)
    # the map was used as the programs' layouts say, on the given descriptor
    for call in lab.bpf.calls:
        assert call == ("lookup", -1, call[2], 56) and len(call[2]) == 8, call


def rst_close(s: socket.socket) -> None:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()


def wait_until(cond, timeout: float = T) -> bool:
    return helpers.wait_until(cond, timeout, step=0.005)


# ---------------------------------------------------------------- DNS by hand

def dns_query(name: str, qtype: int = 1, qid: int = 0x4A4B) -> bytes:
    header = struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0)       # RD, one question
    qname = b"".join(bytes([len(x)]) + x.encode() for x in name.split(".")) + b"\0"
    return header + qname + struct.pack("!HH", qtype, 1)


def dns_answer(msg: bytes) -> tuple[int, int, int, list[tuple[int, bytes]]]:
    """(id, flags, rcode, [(type, rdata)]) of a response with one question."""
    qid, flags, qd, an, _, _ = struct.unpack_from("!6H", msg)
    assert qd == 1
    pos = 12
    while msg[pos]:
        pos += 1 + msg[pos]
    pos += 5
    records = []
    for _ in range(an):
        assert msg[pos:pos + 2] == b"\xc0\x0c"
        rtype, rclass, _ttl, rdlen = struct.unpack_from("!HHIH", msg, pos + 2)
        assert rclass == 1
        pos += 12
        records.append((rtype, msg[pos:pos + rdlen]))
        pos += rdlen
    assert pos == len(msg)
    return qid, flags, flags & 0xF, records


def ask_udp(lab: Lab, port: int, query: bytes, host: str = "127.0.0.1",
            cgroup: int = CGROUP, entry: bool = True, orig: str = "192.0.2.53") -> bytes:
    """A query by UDP from a socket the programs sent to PORT (with no
    ENTRY: one they did not) on its way to the resolver ORIG, and the answer."""
    s = lab.socket(host, kind=socket.SOCK_DGRAM)
    if entry:
        s.bind((host, 0))
        with lab.bpf.lock:
            lab.bpf.map[cookie(s)] = redirect(orig, 53, host, port, cgroup, proxy=False)
    s.sendto(query, (host, port))
    data, peer = s.recvfrom(4096)
    assert peer[:2] == (host, port)
    return data


def stand_in(lab: Lab, name: str = NAME, host: str = "127.0.0.1") -> str:
    """NAME's stand-in address, asked for by UDP at the relay's names port."""
    qid, flags, rcode, records = dns_answer(ask_udp(lab, lab.relay.names_port,
                                                    dns_query(name), host))
    assert (qid, flags & 0x8000, rcode) == (0x4A4B, 0x8000, 0)
    assert len(records) == 1 and records[0][0] == 1
    addr = str(ipaddress.IPv4Address(records[0][1]))
    assert ipaddress.ip_address(addr) in STAND_IN
    return addr


# ================================================================ 1. data

@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
def test_20mb_each_way_at_once_through_echo(lab, proxies, servers, scheme):
    lab.via(proxies, scheme)
    data = os.urandom(BIG)
    s = lab.client("127.0.0.1", servers.echo.port, timeout=T_BULK)
    (n, h), err, alive = _send_while_draining(s, data)  # the echo comes back meanwhile
    assert not err and not alive
    assert (n, h) == (BIG, hashlib.sha256(data).hexdigest())
    assert lab.relay.served == 1


@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_20mb_different_bytes_each_way(lab, proxies, servers, scheme):
    """Not an echo: the server sends its own 20 MB while the client sends 20 MB."""
    lab.via(proxies, scheme)
    data = os.urandom(BIG)
    s = lab.client("127.0.0.1", servers.duplex.port, timeout=T_BULK)
    got, err, _ = _send_while_draining(s, data)
    assert not err
    assert got == (BIG, hashlib.sha256(servers.duplex.data).hexdigest())
    assert servers.duplex.seen.get(timeout=T) == ("got", BIG, hashlib.sha256(data).hexdigest())


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
def test_bytes_sent_before_the_tunnel_is_up_arrive_in_order(lab, proxies, servers,
                                                            scheme, monkeypatch):
    """The client writes (and even half-closes) while the relay is still
    talking to the proxy: nothing is lost or reordered."""
    started = threading.Event()

    class Slow(relay.Opening):
        def step(self, readable, writable):
            if not started.is_set():
                self.t0 = time.monotonic()
                started.set()
            if time.monotonic() - self.t0 < 0.2:    # the client's bytes are all in by then
                time.sleep(0.01)
                return False
            return super().step(readable, writable)

    monkeypatch.setattr(relay, "Opening", Slow)
    lab.via(proxies, scheme)
    first = b"GET / HTTP/1.1\r\n\r\n" + os.urandom(100_000)
    s = lab.client("127.0.0.1", servers.echo.port)
    s.sendall(first)
    assert started.wait(T)
    s.sendall(b"--second--")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == first + b"--second--"


def fake_http_proxy(early: bytes, then):
    """A one-connection HTTP proxy on loopback that answers 200 (with EARLY
    bytes of the destination in the same segment), then calls THEN(conn,
    request head). Returns its listener and thread."""
    fake = socket.socket()
    fake.bind(("127.0.0.1", 0))
    fake.listen(1)
    fake.settimeout(T)

    def proxy():
        c, _ = fake.accept()
        c.settimeout(T)
        head = b""
        while b"\r\n\r\n" not in head:
            head += c.recv(4096)
        c.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n" + early)
        then(c, head)

    t = threading.Thread(target=proxy, daemon=True)
    t.start()
    return fake, t


def test_destination_bytes_that_come_with_the_proxys_answer(lab, servers):
    """A proxy that sends the destination's first bytes in the same segment
    as its answer: the relay passes them on first (open_tunnel's leftover)."""
    got: list = []

    def then(c: socket.socket, head: bytes) -> None:
        got.append(head)
        while d := c.recv(4096):    # an echo
            c.sendall(d)
        c.close()

    fake, t = fake_http_proxy(b"EARLY", then)
    lab.route("http", fake.getsockname()[1])
    s = lab.client("192.0.2.7", 8443)       # only asked of the fake proxy
    assert read_exactly(s, 5) == b"EARLY"
    s.sendall(b"ping")
    assert read_exactly(s, 4) == b"ping"
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    t.join(T)
    fake.close()
    assert got[0].startswith(b"CONNECT 192.0.2.7:8443 HTTP/1.1\r\n")


def test_banner_of_the_destination_reaches_the_client(lab, proxies, servers):
    lab.via(proxies, "socks5")
    s = lab.client("127.0.0.1", servers.banner.port)
    assert read_exactly(s, 7) == b"BANNER\n"
    s.sendall(b"x")
    assert read_exactly(s, 1) == b"x"


def test_many_connections_at_once(lab, proxies, servers):
    lab.via(proxies, "http")
    socks = [lab.client("127.0.0.1", servers.echo.port) for _ in range(20)]
    blobs = [os.urandom(64 << 10) for _ in socks]
    for s, b in zip(socks, blobs):
        s.sendall(b)
        s.shutdown(socket.SHUT_WR)
    for s, b in zip(socks, blobs):
        assert read_all(s) == b
    assert wait_until(lambda: lab.relay.served == 20)


@pytest.mark.skipif(not has_v6(), reason="no ::1 here")
def test_client_on_ipv6_loopback(lab, proxies, servers):
    """The [::1] listener: the key is the ::1 peer; the original destination
    may be IPv6 too (the proxy is asked for the address)."""
    assert len(lab.relay.tcp) == 2
    v6 = Server("echo", host="::1")
    try:
        for scheme in ("socks5", "http"):
            lab.via(proxies, scheme)
            s = lab.client("::1", v6.port, src="::1")
            s.sendall(b"six")
            s.shutdown(socket.SHUT_WR)
            assert read_all(s) == b"six"
        assert f"::1 {v6.port} ok" in proxies.socks5.lines()
        assert f"::1 {v6.port} ok" in proxies.http.lines()
    finally:
        v6.close()


# ================================================================ 2. half-close

@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_client_half_close_still_gets_the_reply_then_eof(lab, proxies, servers, scheme):
    lab.via(proxies, scheme)
    s = lab.client("127.0.0.1", servers.count.port)
    body = os.urandom(5000)
    s.sendall(body)
    s.shutdown(socket.SHUT_WR)      # the server answers only after this EOF
    line = read_exactly(s, len(f"5000 {hashlib.sha256(body).hexdigest()}\n"))
    assert line == f"5000 {hashlib.sha256(body).hexdigest()}\n".encode()
    assert s.recv(100) == b""       # then EOF, not a reset


@pytest.mark.parametrize("scheme", ["socks5", "http"])
def test_server_half_close_client_may_still_send(lab, proxies, servers, scheme):
    lab.via(proxies, scheme)
    s = lab.client("127.0.0.1", servers.talk.port)
    assert read_all(s) == b"hello\n"        # the server's EOF arrived...
    body = os.urandom(3000)
    s.sendall(body)                          # ...and the other way is still open
    s.shutdown(socket.SHUT_WR)
    assert servers.talk.seen.get(timeout=T) == ("got", 3000, hashlib.sha256(body).hexdigest())


def test_reset_by_the_client_reaches_the_server_as_a_reset(lab, proxies, servers):
    lab.via(proxies, "socks5")
    s = lab.client("127.0.0.1", servers.watch.port)
    s.sendall(b"hi")
    assert read_exactly(s, 2) == b"ok"
    rst_close(s)
    assert servers.watch.seen.get(timeout=T) == "reset"


def test_reset_by_the_server_reaches_the_client_as_a_reset(lab, proxies, servers):
    lab.via(proxies, "http")
    s = lab.client("127.0.0.1", servers.watch.port)
    s.sendall(b"hi")
    assert read_exactly(s, 2) == b"ok"
    s.sendall(b"RST")
    assert servers.watch.seen.get(timeout=T) == "sent-reset"
    with pytest.raises(ConnectionResetError):
        s.recv(100)


# ================================================================ 3. no open proxy

def test_connection_without_map_entry_is_closed_at_once(lab, silent):
    lab.route("socks5", silent.getsockname()[1])
    t0 = time.monotonic()
    s = lab.client("127.0.0.1", 9, entry=False)
    assert ended(s) in ("eof", "reset")
    assert time.monotonic() - t0 < 1.0
    assert untouched(silent)                 # the proxy never heard of it
    assert lab.relay.served == 0
    assert [c[0] for c in lab.bpf.calls] == ["lookup"]
    lab.no_event()


def test_connection_of_no_proxy_session_is_closed(lab, silent):
    """An entry whose cgroup is no proxy-mode session (lookup gives None)."""
    lab.route("socks5", silent.getsockname()[1])
    s = lab.client("127.0.0.1", 9, cgroup=CGROUP + 1)
    assert ended(s) in ("eof", "reset")
    assert untouched(silent)


def test_an_entry_is_its_sockets_alone(lab, proxies, servers):
    """Another socket from the same address and port (the first one
    closed) has another cookie: with no entry of its own, it gets nothing."""
    lab.via(proxies, "socks5")
    s = lab.client("127.0.0.1", servers.echo.port)
    port = s.getsockname()[1]
    s.sendall(b"one")
    assert read_exactly(s, 3) == b"one"
    rst_close(s)                              # no TIME_WAIT: the port may be reused
    accepted = servers.echo.accepted
    again = lab.client("127.0.0.1", servers.echo.port, entry=False, src_port=port)
    assert again.getsockname()[1] == port
    again.sendall(b"two")
    assert ended(again) in ("eof", "reset")
    assert servers.echo.accepted == accepted
    assert lab.relay.served == 1


# ================================================================ 4. proxy failures

@pytest.mark.parametrize("scheme, words", [
    ("socks5", "connection refused by destination (reply 5)"),
    ("http", "502 Bad Gateway"),
])
def test_proxy_refuses_client_reset_and_event(lab, proxies, closed_port, scheme, words):
    route = lab.via(proxies, scheme)
    s = lab.client("127.0.0.1", closed_port)
    assert ended(s) == "reset"            # README: the connection is reset
    e = lab.event()
    assert e["reason"] == "proxy-failed" and e["hook"] == "relay"
    assert (e["protocol"], e["family"], e["daddr"], e["dport"]) == (
        "tcp", "ipv4", "127.0.0.1", closed_port)
    assert (e["session"], e["cgroup_id"]) == ("session-4242", CGROUP)
    assert "\n" not in e["detail"] and words in e["detail"], e["detail"]
    assert e["detail"].startswith(f"127.0.0.1:{closed_port} through {scheme}://127.0.0.1:"
                                  f"{route.port}: ")
    assert f"127.0.0.1 {closed_port} ECONNREFUSED" in getattr(proxies, scheme).lines()
    assert lab.relay.served == 0


@pytest.mark.parametrize("scheme", ["socks5", "socks5h", "http"])
def test_right_password_opens_the_tunnel(lab, proxies, servers, scheme):
    lab.via(proxies, scheme, auth=PASSWORD)
    s = lab.client("127.0.0.1", servers.echo.port)
    s.sendall(b"authorized")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b"authorized"
    lab.no_event()


@pytest.mark.parametrize("scheme, words", [
    ("socks5", "rejected the user name and password"),
    ("http", "407"),
])
def test_wrong_password_event_does_not_tell_it(lab, proxies, servers, scheme, words):
    lab.via(proxies, scheme, auth=WRONG)
    s = lab.client("127.0.0.1", servers.echo.port)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed" and words in e["detail"], e["detail"]
    assert "\n" not in e["detail"]
    token = base64.b64encode(f"{USER}:{WRONG}".encode()).decode()
    for secret in (WRONG, PASSWORD, token):
        assert secret not in str(e)


def test_no_password_for_a_proxy_that_wants_one(lab, proxies, servers):
    lab.route("socks5", proxies.socks5_auth.port)
    s = lab.client("127.0.0.1", servers.echo.port)
    assert ended(s) == "reset"
    assert "accepts none of the offered authentication methods" in lab.event()["detail"]


def test_proxy_down(lab, closed_port):
    lab.route("http", closed_port)
    s = lab.client("192.0.2.7", 443)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed"
    assert e["detail"] == (f"192.0.2.7:443 through http://127.0.0.1:{closed_port}: "
                           f"connection refused")


def test_proxy_that_never_answers(lab, silent, monkeypatch):
    monkeypatch.setattr(relay, "CONNECT_TIMEOUT", 0.3)
    lab.route("socks5", silent.getsockname()[1])
    s = lab.client("192.0.2.7", 443)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed" and e["detail"].endswith(": no answer from the proxy")


def test_events_are_limited_per_second(lab, monkeypatch):
    """At most EVENTS_PER_SECOND of the relay's own events in one second."""
    monkeypatch.setattr(relay, "time", types.SimpleNamespace(
        time=lambda: 1_000_000.5, monotonic=time.monotonic, sleep=time.sleep))
    lab.route("socks5", 9)          # a session whose proxy takes no names
    for i in range(relay.EVENTS_PER_SECOND + 5):
        _, _, rcode, _ = dns_answer(ask_udp(lab, lab.relay.refuse_port, dns_query(f"n{i}.example")))
        assert rcode == 5                       # every query is answered
    got = []
    while len(got) < relay.EVENTS_PER_SECOND:
        got.append(lab.event())
    lab.no_event(0.2)
    assert {e["reason"] for e in got} == {"proxy-dns"}


# ================================================================ 5. names

@pytest.mark.parametrize("scheme", ["socks5h", "http"])
def test_stand_in_address_reaches_the_proxy_as_the_name(lab, proxies, servers, scheme):
    lab.via(proxies, scheme)
    addr = stand_in(lab)
    assert stand_in(lab) == addr                          # the same name, the same address
    assert stand_in(lab, "other.example") != addr
    s = lab.client(addr, servers.echo.port)
    s.sendall(b"by name")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b"by name"
    lines = getattr(proxies, scheme.rstrip("h")).lines()
    assert f"{NAME} {servers.echo.port} ok" in lines
    assert not any(ln.startswith(addr + " ") for ln in lines)
    lab.no_event()


def test_names_answerer_gives_no_aaaa(lab):
    lab.route("socks5h", 9)
    _, _, rcode, records = dns_answer(ask_udp(lab, lab.relay.names_port,
                                              dns_query(NAME, qtype=28)))
    assert (rcode, records) == (0, [])


@pytest.mark.skipif(not has_v6(), reason="no ::1 here")
def test_names_answerer_on_ipv6_loopback(lab):
    lab.route("socks5h", 9)
    assert stand_in(lab, host="::1") == stand_in(lab)


def test_malformed_query_gets_no_answer_and_the_answerer_lives_on(lab):
    lab.route("socks5h", 9)
    s = lab.socket(kind=socket.SOCK_DGRAM)
    s.sendto(b"\x01\x02garbage", ("127.0.0.1", lab.relay.names_port))
    s.settimeout(0.2)
    with pytest.raises(socket.timeout):
        s.recvfrom(4096)
    stand_in(lab)


def test_unknown_stand_in_address_fails_with_event(lab, silent):
    """A stand-in address the relay never handed out to this session (its
    daemon restarted, or it is another session's): not sent to the proxy
    as an address."""
    lab.route("socks5h", silent.getsockname()[1])
    s = lab.client("198.18.200.200", 443)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed" and "was not given" in e["detail"]
    assert e["daddr"] == "198.18.200.200" and e["dport"] == 443
    assert untouched(silent)


def test_refusing_answerer_says_refused_with_event(lab):
    lab.route("socks5", 9)
    query = dns_query(NAME, qid=0x1111)
    qid, flags, rcode, records = dns_answer(ask_udp(lab, lab.relay.refuse_port, query))
    assert (qid, flags & 0x8000, rcode, records) == (0x1111, 0x8000, 5, [])
    e = lab.event()
    assert e["reason"] == "proxy-dns" and e["protocol"] == "udp" and e["dport"] == 53
    assert "socks5h://" in e["detail"] and "\n" not in e["detail"]
    # the session, and where the query was going (not the answerer's address)
    assert e["session"] == f"session-{CGROUP}" and e["daddr"] == "192.0.2.53"


def _no_answer(lab, port: int, **kw) -> None:
    s_before = lab.relay.strangers
    with pytest.raises(socket.timeout):
        s = lab.socket(kind=socket.SOCK_DGRAM, timeout=0.3)
        if kw.pop("entry", False):
            s.bind(("127.0.0.1", 0))
            with lab.bpf.lock:
                lab.bpf.map[cookie(s)] = kw["raw"](s)
        s.sendto(dns_query(NAME), ("127.0.0.1", port))
        s.recvfrom(4096)
    assert wait_until(lambda: lab.relay.strangers > s_before)


def test_queries_from_no_sessions_socket_get_no_answer(lab):
    """Any local program may send to the answerers: one the programs did
    not send there learns nothing (no address, no refusal)."""
    lab.route("socks5h", 9)
    _no_answer(lab, lab.relay.names_port)
    _no_answer(lab, lab.relay.refuse_port)
    # an entry for elsewhere (DNS sent to a resolver) is not one for here
    _no_answer(lab, lab.relay.names_port, entry=True, raw=lambda s: redirect(
        "127.0.0.53", 53, "192.0.2.53", 53, proxy=False))
    # an entry of a session that is no proxy session
    _no_answer(lab, lab.relay.names_port, entry=True, raw=lambda s: redirect(
        "127.0.0.53", 53, "127.0.0.1", lab.relay.names_port, cgroup=CGROUP + 7, proxy=False))
    lab.no_event()


def test_a_session_without_names_is_not_answered_with_names(lab):
    lab.route("socks5", 9)
    _no_answer(lab, lab.relay.names_port, entry=True, raw=lambda s: redirect(
        "127.0.0.53", 53, "127.0.0.1", lab.relay.names_port, proxy=False))


def test_stand_ins_are_the_sessions_own(lab, proxies, servers):
    """Two sessions: one's stand-in address means nothing to the other (the
    relay never asks the other's proxy for the first one's name), and the
    names one looked up cannot be told by the other."""
    lab.via(proxies, "socks5h")
    other = CGROUP + 1
    lab.route("socks5h", proxies.socks5.port, cgroup=other)
    addr = stand_in(lab)
    asked = len(proxies.socks5.lines())
    s = lab.client(addr, servers.echo.port, cgroup=other)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed" and e["session"] == f"session-{other}"
    assert len(proxies.socks5.lines()) == asked         # the proxy was not asked
    # the first session's own connection to it goes through, by name
    s = lab.client(addr, servers.echo.port)
    s.sendall(b"mine")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b"mine"
    assert lab.relay.pools[CGROUP].name_for(addr) == NAME
    lab.relay.forget(CGROUP)                    # the session ends: its names go
    assert CGROUP not in lab.relay.pools


def _dns_tcp_exchange(s: socket.socket, queries: list[bytes]) -> list[bytes]:
    """Send QUERIES framed, the first two in one write, the last split in two."""
    frames = [struct.pack("!H", len(q)) + q for q in queries]
    s.sendall(frames[0] + frames[1] + frames[2][:5])
    time.sleep(0.02)
    s.sendall(frames[2][5:])
    answers = []
    for _ in queries:
        (n,) = struct.unpack("!H", read_exactly(s, 2))
        answers.append(read_exactly(s, n))
    return answers


def test_tcp_port_53_is_answered_as_dns_over_tcp(lab, silent):
    lab.route("socks5h", silent.getsockname()[1])
    s = lab.client("192.0.2.53", 53)
    names = [NAME, "b.example", NAME]
    answers = _dns_tcp_exchange(s, [dns_query(n, qid=i) for i, n in enumerate(names)])
    addrs = []
    for i, a in enumerate(answers):
        qid, flags, rcode, records = dns_answer(a)
        assert (qid, flags & 0x8000, rcode, len(records)) == (i, 0x8000, 0, 1)
        addrs.append(str(ipaddress.IPv4Address(records[0][1])))
    assert all(ipaddress.ip_address(a) in STAND_IN for a in addrs)
    assert addrs[0] == addrs[2] != addrs[1]
    assert stand_in(lab) == addrs[0]          # one pool for UDP and TCP
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    assert untouched(silent)                  # answered by the relay itself
    assert lab.relay.served == 0
    lab.no_event()


def test_tcp_port_53_with_socks5_is_refused_with_event(lab, silent):
    lab.route("socks5", silent.getsockname()[1])
    s = lab.client("192.0.2.53", 53)
    answers = _dns_tcp_exchange(s, [dns_query(NAME, qid=i) for i in range(3)])
    assert [dns_answer(a)[2] for a in answers] == [5, 5, 5]
    e = lab.event()
    assert (e["reason"], e["protocol"], e["dport"]) == ("proxy-dns", "tcp", 53)
    assert e["session"] == "session-4242" and "socks5h://" in e["detail"]
    assert e["daddr"] == "192.0.2.53" and e["family"] == "ipv4"
    assert untouched(silent)


SESSION_INFO = {"id": "s-dns", "container": "c1", "cgroup": "/netleak/exec-s-dns",
                "cgroup_id": CGROUP, "iface": "wg0"}


def test_refused_query_to_a_loopback_resolver_names_the_session_and_the_resolver(lab):
    """A query the programs sent here on its way to 127.0.0.53 (a stub
    resolver on loopback, as the relay is): the event is the session's
    (its id, container, cgroup, interface) and names the resolver, not the
    relay's nor the program's own loopback address."""
    lab.route("socks5", 9, info=SESSION_INFO)
    _, _, rcode, _ = dns_answer(ask_udp(lab, lab.relay.refuse_port, dns_query(NAME),
                                        orig="127.0.0.53"))
    assert rcode == 5
    e = lab.event()
    assert (e["reason"], e["protocol"], e["daddr"], e["dport"], e["family"]) == \
        ("proxy-dns", "udp", "127.0.0.53", 53, "ipv4")
    assert (e["session"], e["container"], e["cgroup"], e["cgroup_id"], e["iface"]) == \
        ("s-dns", "c1", "/netleak/exec-s-dns", CGROUP, "wg0")


def test_refused_tcp_query_to_a_loopback_resolver_names_the_session_and_the_resolver(
        lab, silent):
    lab.route("socks5", silent.getsockname()[1], info=SESSION_INFO)
    s = lab.client("127.0.0.53", 53)
    answers = _dns_tcp_exchange(s, [dns_query(NAME, qid=i) for i in range(3)])
    assert [dns_answer(a)[2] for a in answers] == [5, 5, 5]
    e = lab.event()
    assert (e["reason"], e["protocol"], e["daddr"], e["dport"]) == \
        ("proxy-dns", "tcp", "127.0.0.53", 53)
    assert (e["session"], e["cgroup"], e["cgroup_id"], e["iface"]) == \
        ("s-dns", "/netleak/exec-s-dns", CGROUP, "wg0")
    assert untouched(silent)


# ================================================================ 6. Route(iface="")

def test_a_way_to_the_proxy_without_interface_sets_no_mark_nor_device(proxies, servers):
    """iface "": routing decides; neither SO_MARK nor SO_BINDTODEVICE is set
    (so no privilege is needed), even with a mark in the route."""
    route = relay.Route(scheme="socks5", addr="127.0.0.1", port=proxies.socks5.port,
                        iface="", mark=0x77)
    op = relay.Opening(route, "127.0.0.1", servers.echo.port)
    s = op.sock
    try:
        done = False
        while not done:
            r, w = wait_for(s, op.wants_write())
            assert r or w, "the proxy did not answer"
            done = op.step(r, w)
        leftover = op.leftover
        s.settimeout(T)
        assert s.getpeername() == ("127.0.0.1", proxies.socks5.port)
        assert s.getsockopt(socket.SOL_SOCKET, relay.SO_MARK) == 0
        assert s.getsockopt(socket.SOL_SOCKET, relay.SO_BINDTODEVICE, 16).rstrip(b"\0") == b""
        assert leftover == b""
        s.sendall(b"direct")
        assert read_exactly(s, 6) == b"direct"
    finally:
        s.close()


# ================================================================ 6b. long and late

def one_server(handle) -> tuple[socket.socket, threading.Thread]:
    """A listener on loopback whose one connection HANDLE(conn) serves, in
    a thread."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(T)

    def run():
        c, _ = srv.accept()
        c.settimeout(T)
        with c:
            handle(c)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return srv, t


def test_a_tunnel_outlives_the_set_up_deadline(lab, proxies, servers, monkeypatch):
    monkeypatch.setattr(relay, "CONNECT_TIMEOUT", 0.3)
    lab.via(proxies, "socks5")
    s = lab.client("127.0.0.1", servers.echo.port)
    s.sendall(b"one")
    assert s.recv(3) == b"one"
    time.sleep(0.8)
    s.sendall(b"two")
    assert s.recv(3) == b"two"
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b""
    lab.no_event()


def test_a_client_gone_after_its_half_close_stops_the_servers_stream(lab, proxies):
    """The client half-closes, then closes while the server streams to it:
    the server learns of it (a reset, a broken pipe) at once."""
    result: list = []

    def stream(c):
        c.recv(1)
        block = b"x" * 65536
        try:
            for _ in range(4000):       # 256 MiB at most
                c.sendall(block)
            result.append("all sent")
        except OSError as e:
            result.append(type(e).__name__)

    srv, t = one_server(stream)
    try:
        lab.via(proxies, "socks5")
        s = lab.client("127.0.0.1", srv.getsockname()[1])
        s.sendall(b"x")
        s.shutdown(socket.SHUT_WR)
        time.sleep(0.2)
        s.close()
        t.join(T)
        assert result in (["ConnectionResetError"], ["BrokenPipeError"]), result
    finally:
        srv.close()


def test_every_byte_arrives_after_a_half_close_and_a_pause(lab, proxies):
    """The client sends its request, half-closes and reads nothing for a
    while; the server answers 12 MiB and closes: all of it arrives, in order."""
    data = os.urandom(12 << 20)

    def answer(c):
        got = b""
        while not got.endswith(b"\n"):
            got += c.recv(100)
        c.sendall(data)

    srv, t = one_server(answer)
    try:
        lab.via(proxies, "socks5")
        s = lab.client("127.0.0.1", srv.getsockname()[1], timeout=T_BULK)
        s.sendall(b"GET\n")
        s.shutdown(socket.SHUT_WR)
        time.sleep(2.0)
        got = read_all(s)
        assert (len(got), hashlib.sha256(got).digest()) == (len(data),
                                                             hashlib.sha256(data).digest())
    finally:
        srv.close()


# ================================================================ 7. close

def test_close_stops_the_thread_and_frees_the_ports(monkeypatch):
    lab = Lab(monkeypatch)
    r = lab.relay
    lab.route("socks5h", 9)
    stand_in(lab)
    ports = r.ports
    assert len(set(ports)) == 3 and all(ports)
    thread = r._thread
    assert thread is not None and thread.is_alive()
    t0 = time.monotonic()
    lab.close()
    assert time.monotonic() - t0 < 2.0
    assert not thread.is_alive()
    assert all(s.fileno() == -1 for s in r.tcp + r.dns_names + r.dns_refuse)
    hosts = ["127.0.0.1"] + (["::1"] if len(r.tcp) == 2 else [])
    for host in hosts:
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(fam, socket.SOCK_STREAM) as c:
            c.settimeout(T)
            with pytest.raises(ConnectionRefusedError):
                c.connect((host, r.port))
        # nothing holds them any more: they bind without SO_REUSEADDR
        for kind, port in [(socket.SOCK_STREAM, r.port), (socket.SOCK_DGRAM, r.names_port),
                           (socket.SOCK_DGRAM, r.refuse_port)]:
            with socket.socket(fam, kind) as b:
                try:
                    b.bind((host, port))
                except OSError as e:
                    pytest.fail(f"{host} port {port} still taken: {errno.errorcode[e.errno]}")


# ================================================================ bugs found

def test_client_reset_while_relay_blocked_writing_resets_the_upstream(lab):
    """splice_both promises "an error resets both". The proxy (here a fake
    that answers 200 and then never reads) stops taking bytes, so the relay's
    conn->upstream thread blocks in splice(2) writing to upstream; the
    other thread blocks reading upstream. Then the client resets."""
    held: list = []
    fake, _ = fake_http_proxy(b"", lambda c, head: held.append(c))  # never reads again
    lab.route("http", fake.getsockname()[1])
    s = lab.client("192.0.2.7", 80)
    assert wait_until(lambda: held)
    s.setblocking(False)
    chunk, idle = b"x" * 65536, time.monotonic()
    while time.monotonic() - idle < 0.2:      # until every buffer on the way is full
        try:
            s.send(chunk)
            idle = time.monotonic()
        except BlockingIOError:
            time.sleep(0.005)
    rst_close(s)
    try:
        up = held[0]
        poller = select.poll()
        poller.register(up.fileno(), select.POLLERR | select.POLLHUP | select.POLLRDHUP)
        assert poller.poll(600), "the upstream connection never learnt of the reset"
    finally:
        for c in held:
            c.close()
        fake.close()


_EMFILE = r"""
import logging, os, queue, resource, socket, sys, time
from netleak_hook.proxymode import relay

class Count(logging.Handler):
    n = 0
    def emit(self, record):
        Count.n += 1
lg = logging.getLogger("netleak.relay")
lg.addHandler(Count()); lg.setLevel(logging.WARNING); lg.propagate = False

class NoMap:
    def map_lookup(self, fd, key, size): return None
    def map_delete(self, fd, key): return False
relay.bpfsys = NoMap()
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, 256), hard))
r = relay.Relay(-1, lambda cgroup: None, queue.SimpleQueue())
r.start()
c = socket.socket()
c.settimeout(5)
held = []
try:
    while True:
        held.append(os.open("/dev/null", os.O_RDONLY))
except OSError:
    pass
c.connect(("127.0.0.1", r.port))       # accept(2) now fails with EMFILE
t0 = time.process_time()
time.sleep(0.5)
cpu = time.process_time() - t0
warnings = Count.n
for fd in held:
    os.close(fd)
try:
    recovered = c.recv(10) == b""      # no map entry: closed without a byte
except ConnectionResetError:
    recovered = True
r.close()
print(warnings, round(cpu, 3), recovered)
"""


_emfile_result: list = []


def out_of_descriptors() -> tuple[int, float, bool]:
    """(warnings logged, CPU seconds) during 0.5 s in which the relay's
    accept(2) fails with EMFILE, and whether it serves again afterwards; run
    in a child process of its own (so only that process runs out)."""
    if not _emfile_result:
        root = os.path.join(HERE, "..", "..")
        env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
        p = subprocess.run([sys.executable, "-c", _EMFILE], capture_output=True, text=True,
                           timeout=30, env=env, cwd=root)
        assert p.returncode == 0, p.stderr
        w, cpu, ok = p.stdout.split()
        _emfile_result.append((int(w), float(cpu), ok == "True"))
    return _emfile_result[0]


def test_out_of_descriptors_relay_serves_again_afterwards():
    assert out_of_descriptors()[2]


def test_out_of_descriptors_accept_loop_backs_off():
    warnings, cpu, _ = out_of_descriptors()
    assert warnings < 100, f"{warnings} warnings logged in 0.5 s"
    assert cpu < 0.25, f"{cpu} s of CPU in 0.5 s"


def test_one_session_cannot_take_every_place(lab, silent, proxies, servers, monkeypatch):
    """Its connections over SESSION_CONNECTIONS are reset with an event
    naming it; another session's still go through."""
    monkeypatch.setattr(relay, "SESSION_CONNECTIONS", 2)
    lab.route("socks5", silent.getsockname()[1])          # its proxy never answers
    held = [lab.client("127.0.0.1", 9) for _ in range(2)]
    assert wait_until(lambda: lab.relay.per_session.get(CGROUP) == 2)
    s = lab.client("127.0.0.1", 9)
    assert ended(s) == "reset"
    e = lab.event()
    assert e["reason"] == "proxy-failed" and e["session"] == f"session-{CGROUP}"
    assert "2 connections" in e["detail"]
    other = CGROUP + 1
    lab.route("socks5", proxies.socks5.port, cgroup=other)
    s = lab.client("127.0.0.1", servers.echo.port, cgroup=other)
    s.sendall(b"still")
    s.shutdown(socket.SHUT_WR)
    assert read_all(s) == b"still"
    for h in held:
        rst_close(h)


def test_dns_over_tcp_has_a_deadline(lab, silent, monkeypatch):
    monkeypatch.setattr(relay, "DNS_TCP_SECONDS", 0.5)
    lab.route("socks5h", silent.getsockname()[1])
    s = lab.client("192.0.2.53", 53)
    t0 = time.monotonic()
    s.sendall(b"\x00")              # a trickle: half a length, and no more
    assert ended(s) == "eof"
    assert time.monotonic() - t0 < 5
