"""Proxy mode, proved in the lab: the proxy (tests/proxyd.py, an
implementation of its own) runs in NET on 203.0.113.20 / 2001:db8:ff::20 and
connects from there, so the server's answer (the client's address as it
sees it) says whether a connection came through the proxy.

- TCP of any program (Python; a static busybox) reaches the server only
  through the proxy, for socks5, socks5h and http; getpeername() shows
  where the program asked to go.
- socks5h and http: names get stand-in addresses and go to the proxy as
  names; no DNS leaves. socks5: DNS refused, with an event.
- UDP is refused at once and counted; nothing goes directly: captures on
  the uplinks count 0 packets to the server (with positive controls).
- The proxy gone: connections fail, still nothing direct.
- With an interface, the proxy is reached through it only, and not at
  all while it is down.
- Containers: the io.netleak.proxy annotation.
- Bad proxy URLs: one line, exit 125, nothing left.
"""
from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys

import pytest

from netleak_hook.rundir import eventlog
from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import Held
from tests.privileged.podman import BUSYBOX_IMAGE, HOST

pytestmark = pytest.mark.privileged

HERE = os.path.dirname(os.path.abspath(__file__))
PROXYD = os.path.join(HERE, "..", "proxyd.py")
PROXY4, PROXY6 = "203.0.113.20", "2001:db8:ff::20"
PORT = 1080
NAME = "server.example"     # the proxy knows it; nothing else does
HTTP_PORT = 8081            # an HTTP server next to the lab's line server
S4, S6 = labmod.SERVER4, labmod.SERVER6

# answers every GET with the client's address, as the lab's line server does
HTTPD = r"""
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = (self.client_address[0] + "\n").encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
class S(http.server.ThreadingHTTPServer):
    address_family = __import__("socket").AF_INET
s = S((sys.argv[1], int(sys.argv[2])), H)
print("ready", flush=True)
s.serve_forever()
"""

# what a program sees: the server's answer and the peer name, by name or address
PEER = r"""
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
    print("ok", s.recv(200).decode().strip(), s.getpeername()[0], flush=True)
except OSError as e:
    print("refused", e.strerror or e, flush=True)
"""


# one DNS query for NAME by UDP to ARGV[1] port 53; prints the answer's rcode
ASK_DNS = r"""
import socket, struct, sys
q = struct.pack("!6H", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x06server\x07example\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(5)
s.sendto(q, (sys.argv[1], 53))
print("rcode", s.recv(512)[3] & 15, flush=True)
"""


class Proxy:
    """proxyd in NET, by PID."""

    def __init__(self, world, kind: str, *extra: str, env: dict | None = None) -> None:
        self.world = world
        self.log = os.path.join(world.run_dir, f"proxyd-{kind}.log")
        self.proc = world.lab.spawn(
            [sys.executable, PROXYD, "--kind", kind, "--listen", f"{PROXY4}:{PORT}",
             "--listen", f"[{PROXY6}]:{PORT}", "--source", PROXY4, "--source", PROXY6,
             "--hosts", f"{NAME}={S4}", "--log", self.log, *extra],
            ns=world.lab.net, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True)
        assert wait_until(lambda: self.ready() or self.proc.poll() is not None, timeout=10)
        assert self.proc.poll() is None, self.proc.stderr.read()

    def ready(self) -> bool:
        r = self.world.lab.run([sys.executable, "-c", (
            "import socket; socket.create_connection(('%s', %d), timeout=1).close()"
            % (PROXY4, PORT))], ns=self.world.lab.net)
        return r.returncode == 0

    def asked(self) -> list[str]:
        """`DEST PORT RESULT` of each tunnel asked for."""
        try:
            with open(self.log) as f:
                return [" ".join(ln.split()[3:]) for ln in f if ln.startswith("connect ")]
        except FileNotFoundError:
            return []

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def proxy_lab(world):
    """The proxy's addresses and an HTTP server in NET."""
    lab = world.lab
    lab.ip(lab.net, "addr", "add", f"{PROXY4}/32", "dev", "lo")
    lab.ip(lab.net, "addr", "add", f"{PROXY6}/128", "dev", "lo", "nodad")
    p = lab.spawn([sys.executable, "-c", HTTPD, S4, str(HTTP_PORT)], ns=lab.net,
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return world


def peer(world, url: str, host: str, *before: str, port: int = labmod.PORT):
    r = world.netleak(*before, "--proxy", url, sys.executable, "-c", PEER, host, str(port))
    assert r.returncode == 0, r.stderr
    return r.stdout.split()


def recorded(world, reason: str) -> list[dict]:
    return [e for e in eventlog.recorded(world.run_dir) if e["reason"] == reason]


@pytest.mark.parametrize("kind", ["socks5", "socks5h", "http"])
def test_tcp_goes_through_the_proxy_and_nothing_leaves_directly(proxy_lab, kind):
    w = proxy_lab
    proxy = Proxy(w, kind.rstrip("h"))
    url = f"{kind}://{PROXY4}:{PORT}"
    with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
        four = peer(w, url, S4)
        six = peer(w, url, S6)
        udp = w.netleak("--proxy", url, *w.lab.client(S4, "udp"))
        assert up.stop() == 0 and vpn.stop() == 0, up.lines + vpn.lines
    # the server saw the proxy; the program saw where it asked to go
    assert four == ["ok", PROXY4, S4]
    assert six == ["ok", PROXY6, S6]
    assert proxy.asked() == [f"{S4} {labmod.PORT} ok", f"{S6} {labmod.PORT} ok"]
    # UDP: refused at once, with an event
    assert udp.stdout.startswith("refused Operation not permitted"), udp.stdout
    ev = recorded(w, "proxy")
    assert ev and ev[-1]["protocol"] == "udp" and ev[-1]["daddr"] == S4
    w.control()


def test_names_go_to_the_proxy_and_no_dns_leaves(proxy_lab):
    """socks5h: a static busybox resolves by itself (UDP to its resolver)
    and glibc's getaddrinfo too; both get a stand-in address, and the proxy
    is asked for the name."""
    w = proxy_lab
    proxy = Proxy(w, "socks5")
    url = f"socks5h://{PROXY4}:{PORT}"
    dns = "port 53"
    with w.lab.capture("up0", flt=dns) as up, w.lab.capture("vpn0", flt=dns) as vpn:
        wget = w.netleak("--proxy", url, "/bin/busybox", "wget", "-q", "-O", "-",
                         f"http://{NAME}:{HTTP_PORT}/")
        py = peer(w, url, NAME)
        assert up.stop() == 0 and vpn.stop() == 0, up.lines + vpn.lines
    assert wget.returncode == 0 and wget.stdout.strip() == PROXY4, wget.stdout + wget.stderr
    assert py[:2] == ["ok", PROXY4], py
    assert ipaddress.ip_address(py[2]) in ipaddress.ip_network("198.18.0.0/15"), py
    assert proxy.asked() == [f"{NAME} {HTTP_PORT} ok", f"{NAME} {labmod.PORT} ok"]
    # the positive control: the same lookup outside netleak is seen on up0
    with w.lab.capture("up0", flt=dns) as up:
        w.lab.run(["/bin/busybox", "nslookup", NAME, "192.0.2.1"], timeout=20)
        assert up.stop() > 0


def test_socks5_refuses_names_and_carries_addresses(proxy_lab):
    w = proxy_lab
    proxy = Proxy(w, "socks5")
    url = f"socks5://{PROXY4}:{PORT}"
    by_name = w.netleak("--proxy", url, "/bin/busybox", "wget", "-q", "-O", "-",
                        f"http://{NAME}:{HTTP_PORT}/")
    by_addr = w.netleak("--proxy", url, "/bin/busybox", "wget", "-q", "-O", "-",
                        f"http://{S4}:{HTTP_PORT}/")
    assert by_name.returncode != 0
    assert by_addr.returncode == 0 and by_addr.stdout.strip() == PROXY4, by_addr.stderr
    assert proxy.asked() == [f"{S4} {HTTP_PORT} ok"]
    assert wait_until(lambda: recorded(w, "proxy-dns"))
    assert "socks5h://" in recorded(w, "proxy-dns")[0]["detail"]
    # a query to a loopback resolver: refused, and the event is the
    # session's and names the resolver
    before = len(recorded(w, "proxy-dns"))
    stub = w.netleak("--proxy", url, sys.executable, "-c", ASK_DNS, "127.0.0.53")
    assert stub.stdout.split() == ["rcode", "5"], stub.stdout + stub.stderr
    assert wait_until(lambda: len(recorded(w, "proxy-dns")) > before)
    e = recorded(w, "proxy-dns")[-1]
    assert (e["protocol"], e["daddr"], e["dport"]) == ("udp", "127.0.0.53", 53), e
    assert e["session"] and e["cgroup"].startswith(f"/{w.parent}/"), e


def test_proxy_gone_blocks_everything(proxy_lab):
    w = proxy_lab
    proxy = Proxy(w, "http")
    url = f"http://{PROXY4}:{PORT}"
    assert peer(w, url, S4)[:2] == ["ok", PROXY4]
    proxy.stop()
    with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
        four = peer(w, url, S4)
        six = peer(w, url, S6)
        assert up.stop() == 0 and vpn.stop() == 0, up.lines + vpn.lines
    assert four[0] == "refused" and six[0] == "refused", (four, six)
    assert wait_until(lambda: recorded(w, "proxy-failed"))
    assert "refused" in recorded(w, "proxy-failed")[0]["detail"]
    w.control()


def test_with_an_interface_the_proxy_is_reached_through_it_only(proxy_lab):
    w = proxy_lab
    Proxy(w, "socks5")
    held = Held(w, "vpn0", "--proxy", f"socks5://{PROXY4}:{PORT}")
    ask = [sys.executable, "-c", PEER, S4, str(labmod.PORT)]
    to_proxy = f"host {PROXY4}"
    try:
        with w.lab.capture("up0", flt=to_proxy) as up, \
                w.lab.capture("vpn0", flt=to_proxy) as vpn:
            got = held.run(*ask).stdout.split()
            assert up.stop() == 0, up.lines
            assert vpn.stop() > 0       # the positive control: it went by vpn0
        assert got[:2] == ["ok", PROXY4]
        # vpn0 down: no way to the proxy, and not by up0 either
        w.lab.ip(w.lab.host, "link", "set", "vpn0", "down")
        with w.lab.capture("up0", flt=to_proxy) as up:
            down = held.run(*ask).stdout.split()
            assert up.stop() == 0, up.lines
        assert down[0] == "refused", down
        w.lab.ip(w.lab.host, "link", "set", "vpn0", "up")
        assert wait_until(lambda: held.run(*ask).stdout.split()[:2] == ["ok", PROXY4])
    finally:
        held.close()


def test_proxy_with_a_password(proxy_lab):
    w = proxy_lab
    Proxy(w, "socks5", "--user", "alice", "--password", "s3cret:x")
    good = peer(w, f"socks5://alice:s3cret%3Ax@{PROXY4}:{PORT}", S4)
    bad = peer(w, f"socks5://alice:wrong@{PROXY4}:{PORT}", S4)
    assert good[:2] == ["ok", PROXY4]
    assert bad[0] == "refused"
    assert wait_until(lambda: recorded(w, "proxy-failed"))
    detail = recorded(w, "proxy-failed")[0]["detail"]
    assert "wrong" not in detail and "s3cret" not in detail, detail


@pytest.mark.parametrize("url,says", [
    ("ftp://192.0.2.9:21", "the scheme must be one of"),
    ("socks5://192.0.2.9", "give the proxy's port"),
    ("socks5://:1080", "no proxy host"),
    ("http://192.0.2.9:3128/path", "give only scheme, host and port"),
    ("socks5://name.invalid:1080", "cannot look up the proxy"),
])
def test_bad_proxy_urls_are_refused_in_one_line(world, url, says):
    r = world.netleak("--proxy", url, "true")
    assert r.returncode == 125, (r.returncode, r.stderr)
    assert len(r.stderr.splitlines()) == 1 and says in r.stderr, r.stderr
    assert world.cgroups() == [] and world.sessions() == 0


@pytest.mark.parametrize("addr", ["127.0.0.1", "192.0.2.2"])   # loopback; up0's own
def test_a_local_proxy_with_an_interface_is_refused(world, addr):
    r = world.netleak("vpn0", "--proxy", f"socks5://{addr}:1080", "true")
    assert r.returncode == 125 and "is on this machine" in r.stderr, r.stderr
    assert len(r.stderr.splitlines()) == 1
    assert world.cgroups() == [] and world.sessions() == 0


def test_container_annotation(proxy_lab, pods):
    w = proxy_lab
    proxy = Proxy(w, "socks5")
    r = pods.run("--rm", HOST, f"--annotation=io.netleak.proxy=socks5h://{PROXY4}:{PORT}",
                 BUSYBOX_IMAGE, "sh", "-c",
                 f"nc -w 2 {S4} {labmod.PORT}; wget -q -O - http://{NAME}:{HTTP_PORT}/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [PROXY4, PROXY4], r.stdout
    assert proxy.asked() == [f"{S4} {labmod.PORT} ok", f"{NAME} {HTTP_PORT} ok"]
    assert f"through socks5h://{PROXY4}:{PORT}" in pods.hook_log()


def test_status_shows_the_proxy_without_its_password(proxy_lab):
    w = proxy_lab
    Proxy(w, "socks5", "--user", "alice", "--password", "pw")
    p = w.spawn("--proxy", f"socks5h://alice:pw@{PROXY4}:{PORT}", "sleep", "60")
    try:
        assert wait_until(lambda: w.sessions() == 1 and w.status()[0]["procs"] == 1)
        row = w.status()[0]
        assert row["state"] == "proxied" and row["proxy"] == f"socks5h://alice:***@{PROXY4}:{PORT}"
        text = w.cli("status").stdout
        assert "//alice:***@" in text and ":pw@" not in text
        assert json.dumps(row).count(":pw@") == 0
    finally:
        p.kill()
        p.wait()


def proxied_entries() -> int:
    """Records in the `redirect` map of the suite's pin set (sockets sent
    to the relay, or to a resolver)."""
    from netleak_hook.kernel import bpfsys, programs
    pins = programs.Pinset(os.path.join(os.environ["NETLEAK_BPF_DIR"],
                                        programs.pinset_name()))
    if not os.path.exists(pins.pin("map_redirect")):
        return 0        # not pinned yet: no session has run
    fd = bpfsys.obj_get(pins.pin("map_redirect"))
    try:
        return len(bpfsys.map_keys(fd, 8))
    finally:
        os.close(fd)


# connect (the relay, frozen, cannot take it), say so, wait for a line, close
HOLD_CONNECT = r"""
import socket, sys
s = socket.socket(); s.settimeout(5)
s.connect((sys.argv[1], int(sys.argv[2])))
print("connected", flush=True)
sys.stdin.readline()
s.close()
print("closed", flush=True)
"""


def test_a_record_goes_with_its_connection(proxy_lab):
    """While the daemon (and so the relay) is frozen, a connection waits in
    the relay's backlog with its record in the map; when the program
    closes it, the record goes at once, before the relay ever sees it: no
    record outlives its socket for another program to claim."""
    import signal
    w = proxy_lab
    Proxy(w, "socks5")
    held = Held(w, "--proxy", f"socks5://{PROXY4}:{PORT}")
    try:
        before = proxied_entries()
        os.kill(w.daemon_pid(), signal.SIGSTOP)
        try:
            join = f'echo $$ > {held.path}/cgroup.procs && exec "$@"'
            p = w.lab.spawn(["sh", "-c", join, "sh", sys.executable, "-c", HOLD_CONNECT, S4,
                             str(labmod.PORT)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
            assert p.stdout.readline().strip() == "connected"
            assert proxied_entries() == before + 1
            p.stdin.write("\n")
            p.stdin.flush()
            assert p.stdout.readline().strip() == "closed"
            assert wait_until(lambda: proxied_entries() == before)
        finally:
            os.kill(w.daemon_pid(), signal.SIGCONT)
        p.wait(timeout=10)
        # and the relay, thawed, still carries new connections
        assert held.run(sys.executable, "-c", PEER, S4, str(labmod.PORT)).stdout.split()[:2] \
            == ["ok", PROXY4]
    finally:
        held.close()
