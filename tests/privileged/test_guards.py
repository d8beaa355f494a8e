"""Leak guards beyond routing, each proved with captures in the lab:

- DNS to a loopback resolver goes to the session's resolver through the
  interface (--dns), replies look as if they came from where the app
  asked, and nothing for port 53 leaves by the default uplink; without
  --dns such DNS is refused at once, with an event.
- An interface without IPv6 makes IPv6 connects fail at once.
- --allow prefixes use the main table; everything else stays on the
  interface, also while the kill switch is on.
- --block: loopback only, refusals at once.
- Inbound: a server inside answers only through the interface and
  loopback; what arrives by another interface is dropped and counted.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import EXEC, Held
from tests.privileged.podman import ANN, BUSYBOX_IMAGE, HOST

pytestmark = pytest.mark.privileged

HERE = os.path.dirname(os.path.abspath(__file__))
DNSD = os.path.join(HERE, "dnsd.py")
STUB = "127.0.0.53"
S4, S6 = labmod.SERVER4, labmod.SERVER6

# DNS from inside the workload, three ways glibc and others do it: a
# connected UDP socket (as glibc), an unconnected one, and TCP. Prints what
# the app sees: the reply's source, the peer name, the answer.
DNS_PROBE = r"""
import json, socket, struct, sys
sys.path.insert(0, sys.argv[1])
import dnsd
host = sys.argv[2]
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
out = {}
try:
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(2)
    u.connect((host, 53)); u.send(dnsd.query("name.test"))
    data, src = u.recvfrom(512)
    out["connected"] = [src[0], src[1], u.getpeername()[0], data[-4:].hex()]
    u = socket.socket(fam, socket.SOCK_DGRAM); u.settimeout(2)
    u.sendto(dnsd.query("name.test"), (host, 53))
    data, src = u.recvfrom(512)
    out["unconnected"] = [src[0], src[1], data[-4:].hex()]
    t = socket.socket(fam, socket.SOCK_STREAM); t.settimeout(2)
    t.connect((host, 53)); q = dnsd.query("name.test")
    t.sendall(struct.pack("!H", len(q)) + q)
    data = t.recv(512)
    out["tcp"] = [t.getpeername()[0], data[-4:].hex()]
except OSError as e:
    out["error"] = e.strerror or str(e)
print(json.dumps(out), flush=True)
"""

# A listener inside the workload: prints "ready", then the peers it hears
# from (TCP), until killed.
LISTEN = r"""
import socket, sys
t = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("::", int(sys.argv[1]))); t.listen(16)
print("ready", flush=True)
while True:
    c, a = t.accept()
    c.sendall(b"hello\n"); c.close()
"""

# a loopback round trip, then a connect to the server
BLOCK_PROBE = r"""
import socket, sys
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname(), timeout=2)
a, _ = l.accept(); a.sendall(b"lo"); print("loopback", c.recv(10).decode(), flush=True)
for host in sys.argv[1:]:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(2)
    try:
        s.connect((host, 8080)); print("ok", s.recv(100).decode().strip(), flush=True)
    except OSError as e:
        print("refused", e.strerror or e, flush=True)
"""


def start(lab, ns: str, *argv: str):
    p = lab.spawn(list(argv), ns=ns, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


@pytest.fixture
def resolvers(world):
    """The world's resolver on the server's addresses (reached by either
    link), and a stub on 127.0.0.53 in HOST that forwards by the main table:
    the leak a loopback resolver makes."""
    start(world.lab, world.lab.net, sys.executable, DNSD, "serve", S4, S6)
    start(world.lab, world.lab.host, sys.executable, DNSD, "forward", STUB, S4)
    return world


def events(world) -> list[dict]:
    r = world.cli("events", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def resolv_conf(tmp_path) -> str:
    path = tmp_path / "resolv.conf"
    path.write_text(f"nameserver {STUB}\noptions timeout:2 attempts:1\n")
    return str(path)


def getent(resolv: str) -> list[str]:
    """`getent hosts` with resolv.conf naming the stub, in a mount
    namespace of its own (the machine's resolv.conf is not touched)."""
    return ["unshare", "-m", "sh", "-c",
            f"mount --bind {resolv} /etc/resolv.conf && exec getent hosts name.test"]


# ---------- DNS ----------

def test_dns_control_the_stub_leaks_by_the_uplink(resolvers, tmp_path):
    """Positive control: outside netleak the stub forwards by up0, and the
    capture sees it."""
    w = resolvers
    with w.lab.capture("up0") as cap:
        r = w.lab.run(getent(resolv_conf(tmp_path)))
        assert "192.0.2.77" in r.stdout or "2001:db8::77" in r.stdout, r.stdout + r.stderr
        assert cap.stop() > 0


def test_dns_goes_to_the_resolver_through_the_interface(resolvers, tmp_path):
    w = resolvers
    with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
        r = w.netleak("--dns", S4, "vpn0", *getent(resolv_conf(tmp_path)))
        probe = w.netleak("--dns", S4, "vpn0", sys.executable, "-c", DNS_PROBE, HERE, STUB)
        assert up.stop() == 0, up.lines
        assert vpn.stop() > 0
    assert r.returncode == 0, r.stderr
    assert "192.0.2.77" in r.stdout or "2001:db8::77" in r.stdout, r.stdout
    out = json.loads(probe.stdout)
    answer = "c000024d"             # 192.0.2.77
    # the app sees the address it asked, never the resolver's
    assert out == {"connected": [STUB, 53, STUB, answer], "unconnected": [STUB, 53, answer],
                   "tcp": [STUB, answer]}, out
    assert all(".53:" in ln or ".53 " in ln or "domain" in ln for ln in vpn.lines), vpn.lines


def test_dns_over_ipv6_loopback_goes_to_an_ipv6_resolver(resolvers):
    w = resolvers
    # the stub has no ::1 socket: an answer can only come from the world's
    with w.lab.capture("up0") as up:
        probe = w.netleak("--dns", S4, "--dns", S6, "vpn0", sys.executable, "-c", DNS_PROBE,
                          HERE, "::1")
        assert up.stop() == 0, up.lines
    out = json.loads(probe.stdout)
    assert out["connected"][:3] == ["::1", 53, "::1"] and out["tcp"][0] == "::1", out


def test_dns_without_a_resolver_is_refused_at_once_and_reported(resolvers, tmp_path):
    w = resolvers
    with w.lab.capture("up0") as up:
        r = w.netleak("vpn0", *getent(resolv_conf(tmp_path)))
        probe = w.netleak("vpn0", sys.executable, "-c", DNS_PROBE, HERE, STUB)
        assert up.stop() == 0, up.lines
    assert r.returncode == 2 and r.stdout == "", r.stdout    # not found, no answer
    assert json.loads(probe.stdout) == {"error": "Operation not permitted"}
    assert wait_until(lambda: any(e["reason"] == "no-dns" for e in events(w)))
    ev = [e for e in events(w) if e["reason"] == "no-dns"][0]
    assert (ev["daddr"], ev["dport"], ev["hook"]) == (STUB, 53, "connect"), ev


@pytest.mark.container
def test_container_dns_annotation(resolvers, pods):
    """io.netleak.dns: a static busybox's own resolver, asking the stub, is
    answered through vpn0; without the annotation it is refused."""
    w = resolvers
    ask = [BUSYBOX_IMAGE, "nslookup", "name.test", STUB]
    with w.lab.capture("up0") as up:
        r = pods.run("--rm", HOST, ANN, f"--annotation=io.netleak.dns={S4}", *ask)
        no = pods.run("--rm", HOST, ANN, *ask)
        assert up.stop() == 0, up.lines
    assert "192.0.2.77" in r.stdout, r.stdout + r.stderr
    assert "192.0.2.77" not in no.stdout, no.stdout
    assert wait_until(lambda: any(e["reason"] == "no-dns" and e["container"]
                                  for e in events(w)))
    bad = pods.run("--rm", HOST, ANN, "--annotation=io.netleak.dns=127.0.0.1", *ask)
    assert bad.returncode != 0 and "io.netleak.dns" in bad.stderr, bad.stderr


def test_dns_to_the_unspecified_address_counts_as_loopback(resolvers):
    """0.0.0.0 and :: reach local sockets too: the same guard applies."""
    w = resolvers
    with w.lab.capture("up0") as up:
        probe = w.netleak("--dns", S4, "vpn0", sys.executable, "-c", DNS_PROBE, HERE,
                          "0.0.0.0")
        refused = w.netleak("vpn0", sys.executable, "-c", DNS_PROBE, HERE, "0.0.0.0")
        assert up.stop() == 0, up.lines
    assert json.loads(probe.stdout)["unconnected"] == ["0.0.0.0", 53, "c000024d"], probe.stdout
    assert json.loads(refused.stdout) == {"error": "Operation not permitted"}


def test_dns_to_a_resolver_on_a_host_address_is_dropped_on_loopback(resolvers):
    """A stub on one of the host's own addresses is reached by loopback,
    unrewritten: its packets are dropped there, counted and reported."""
    w = resolvers
    up_addr = labmod.LINKS["up0"][0].split("/")[0]
    start(w.lab, w.lab.host, sys.executable, DNSD, "forward", up_addr, S4)
    hold = Held(w, "--dns", S4, "vpn0")
    try:
        with w.lab.capture("up0") as up:
            probe = hold.run(sys.executable, "-c", DNS_PROBE, HERE, up_addr)
            assert up.stop() == 0, up.lines
        assert json.loads(probe.stdout) == {"error": "Operation not permitted"}
        assert hold.counters()["refused_dns"] > 0
        assert wait_until(lambda: any(e["reason"] == "no-dns" and e["hook"] == "egress"
                                      for e in events(w)))
    finally:
        hold.close()


def test_dns_to_a_non_loopback_server_is_routed_like_any_traffic(resolvers):
    w = resolvers
    with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
        probe = w.netleak("vpn0", sys.executable, "-c", DNS_PROBE, HERE, S4)
        assert up.stop() == 0, up.lines
        assert vpn.stop() > 0
    assert json.loads(probe.stdout)["connected"][:3] == [S4, 53, S4]


# ---------- IPv6 parity ----------

def test_ipv6_fails_at_once_on_an_interface_without_ipv6(world):
    """A point-to-point tunnel with IPv4 only (a typical VPN): its IPv6
    default route would take up0's address as source and wait for replies
    that never come back through it."""
    w, lab = world, world.lab
    relay = lab.spawn([sys.executable, os.path.join(HERE, "tunrelay.py"),
                       f"/run/netns/{lab.net}"], stdout=subprocess.PIPE, text=True)
    assert relay.stdout.readline().strip() == "ready"
    lab.ip(lab.host, "addr", "add", "198.51.100.66", "peer", "198.51.100.65", "dev", "tun0")
    lab.ip(lab.host, "link", "set", "tun0", "up")
    lab.ip(lab.net, "addr", "add", "198.51.100.65", "peer", "198.51.100.66", "dev", "tunp")
    lab.ip(lab.net, "addr", "add", "2001:db8:3::1/64", "dev", "tunp", "nodad")
    lab.ip(lab.net, "link", "set", "tunp", "up")
    client = [sys.executable, "-c", labmod.CLIENT_CODE]
    with lab.capture("up0") as up:
        r4 = w.netleak("tun0", *client, S4, "8080", "tcp", "1")
        r6 = w.netleak("tun0", *client, S6, "8080", "tcp", "1")
        r6u = w.netleak("tun0", *client, S6, "8080", "udp", "1")
        assert up.stop() == 0, up.lines
    print("without IPv6:", r6.stdout.strip(), "|", r6u.stdout.strip())
    assert r4.stdout.strip() == "ok 198.51.100.66", r4.stdout + r4.stderr
    # an error from routing at once, not a timeout
    for r in (r6, r6u):
        assert r.stdout.startswith("refused") and "timed out" not in r.stdout, r.stdout
    # IPv6 comes to the tunnel: it is used at once
    hold = w.spawn("tun0", "sleep", "300")
    try:
        assert wait_until(lambda: len(w.status()) == 1)
        lab.ip(lab.host, "addr", "add", "2001:db8:3::2/64", "dev", "tun0", "nodad")
        assert wait_until(lambda: w.netleak("tun0", *client, S6, "8080", "tcp", "1")
                          .stdout.strip() == "ok 2001:db8:3::2", timeout=10)
    finally:
        hold.kill()
        hold.wait()


# ---------- --allow ----------

def test_allow_uses_the_main_table_for_its_prefix_only(world):
    w = world
    client = [sys.executable, "-c", labmod.CLIENT_CODE]
    r4 = w.netleak("--allow", f"{S4}/32", "vpn0", *client, S4, "8080", "tcp", "1")
    u4 = w.netleak("--allow", f"{S4}/32", "vpn0", *client, S4, "8080", "udp", "1")
    r6 = w.netleak("--allow", f"{S4}/32", "vpn0", *client, S6, "8080", "tcp", "1")
    # the server answers with the address it saw: up0's for the allowed one
    assert r4.stdout.strip() == "ok 192.0.2.2", r4.stdout + r4.stderr
    assert u4.stdout.strip() == "ok 192.0.2.2", u4.stdout
    assert r6.stdout.strip() == "ok 2001:db8:2::2", r6.stdout


def test_allow_is_visible_keeps_working_under_the_kill_switch_and_leaves_no_rules(world):
    w = world
    hold = Held(w, "--allow", f"{S4}/32", "vpn0")
    try:
        assert hold.rows()[0]["allow"] == [f"{S4}/32"]
        assert f"allow {S4}/32" in w.cli("status").stdout
        prio = min(int(ln.split(":")[0]) for ln in w.our_rules() if "lookup main" not in ln)
        assert any(ln.startswith(f"{prio - 1}:") and S4 in ln
                   for ln in w.rules().splitlines())
        client = [sys.executable, "-c", labmod.CLIENT_CODE]
        w.lab.ip(w.lab.host, "link", "set", "vpn0", "down")
        assert wait_until(lambda: hold.rows()[0]["state"] == "kill-switch")
        with w.lab.capture("up0") as up:
            ok = hold.run(*client, S4, "8080", "tcp", "1")
            no = hold.run(*client, S6, "8080", "tcp", "1")
            assert up.stop() > 0
            assert all(S6 not in ln for ln in up.lines), up.lines
        assert ok.stdout.strip() == "ok 192.0.2.2", ok.stdout
        assert no.stdout.startswith("refused"), no.stdout
        assert hold.counters()["allowed_packets"] > 0
    finally:
        hold.close()
    assert wait_until(lambda: w.sessions() == 0)
    assert not [ln for ln in w.rules().splitlines() if ln.startswith(f"{prio - 1}:")]


# ---------- --block ----------

def test_block_allows_loopback_only_and_refuses_at_once(world):
    w = world
    w.control()
    with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
        r = w.netleak("--block", sys.executable, "-c", BLOCK_PROBE, S4, S6)
        assert up.stop() == 0 and vpn.stop() == 0, up.lines + vpn.lines
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["loopback lo", "refused Operation not permitted",
                                     "refused Operation not permitted"]
    assert wait_until(lambda: sum(e["reason"] == "no-network" for e in events(w)) == 2)


def test_block_with_allow_reaches_the_allowed_prefix_only(world):
    w = world
    r = w.netleak("--block", "--allow", f"{S4}/32", sys.executable, "-c", BLOCK_PROBE,
                  S4, S6)
    assert r.stdout.splitlines()[1:] == ["ok 192.0.2.2", "refused Operation not permitted"]


def test_block_session_shows_in_status(world):
    w = world
    hold = Held(w, "--block")
    try:
        row = hold.rows()[0]
        assert (row["state"], row["iface"], row["block"]) == ("no-network", "", True)
    finally:
        hold.close()


# ---------- inbound ----------

def test_inbound_only_through_the_interface_and_loopback(world):
    w = world
    port = "8090"
    server = w.lab.spawn(EXEC + ["vpn0", sys.executable, "-c", LISTEN, port], env=w.env,
                         stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    up_addr = labmod.LINKS["up0"][0].split("/")[0]
    vpn_addr = labmod.LINKS["vpn0"][0].split("/")[0]
    hello = ("import socket, sys\ns = socket.socket(); s.settimeout(1.5)\n"
             "try:\n s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(10).decode().strip())\n"
             "except OSError as e:\n print('failed', e)\n")
    # not a single SYN-ACK from the listener may leave by up0
    with w.lab.capture("up0", flt=f"src {up_addr} and tcp port {port}") as cap:
        via_vpn = w.lab.run([sys.executable, "-c", hello, vpn_addr, port], ns=w.lab.net)
        via_lo = w.lab.run([sys.executable, "-c", hello, "127.0.0.1", port])
        via_up = w.lab.run([sys.executable, "-c", hello, up_addr, port], ns=w.lab.net)
        assert cap.stop() == 0, cap.lines
    assert via_vpn.stdout.strip() == "hello", via_vpn.stdout
    assert via_lo.stdout.strip() == "hello", via_lo.stdout
    assert via_up.stdout.startswith("failed"), via_up.stdout
    assert w.status()[0]["counters"]["drop_inbound_packets"] > 0
    server.kill()
    server.wait()


def test_inbound_control_the_same_server_outside_netleak_answers_by_up0(world):
    w = world
    up_addr = labmod.LINKS["up0"][0].split("/")[0]
    server = w.lab.spawn([sys.executable, "-c", LISTEN, "8091"], stdout=subprocess.PIPE,
                         text=True)
    assert server.stdout.readline().strip() == "ready"
    r = w.lab.run([sys.executable, "-c",
                   "import socket; s = socket.create_connection(('%s', 8091), 2); "
                   "print(s.recv(10).decode().strip())" % up_addr], ns=w.lab.net)
    assert r.stdout.strip() == "hello", r.stdout + r.stderr
