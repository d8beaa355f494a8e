"""Port rules in the lab, each proved with captures and a positive control:

- --allow with a port: the LAN printer's port takes the main table (the
  default uplink), nothing else of that address does.
- --deny: refused at connect/send with EPERM, even through the interface,
  however a hostile workload (as nobody) asks; counted, reported with its
  rule; a socket opened before an attach is dropped at egress; a peer's
  denied port is dropped at ingress.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import EXEC, Held
from tests.privileged.test_attach import Job

pytestmark = pytest.mark.privileged

S4, S6 = labmod.SERVER4, labmod.SERVER6
CLIENT = [sys.executable, "-c", labmod.CLIENT_CODE]
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
UP4 = labmod.LINKS["up0"][0].split("/")[0]
VPN4 = labmod.LINKS["vpn0"][0].split("/")[0]

# A hostile workload's ways to reach HOST:PORT; prints one line each:
# "ok ..." when an answer came back, else the error.
ATTEMPTS = r"""
import socket, sys
host, port = sys.argv[1], int(sys.argv[2])
v6 = ":" in host
fam = socket.AF_INET6 if v6 else socket.AF_INET
def out(name, f):
    try:
        print(name, "ok", f(), flush=True)
    except OSError as e:
        print(name, e.strerror or e, flush=True)
def tcp():
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1)
    s.connect((host, port)); return s.recv(100).decode().strip()
def udp():
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1)
    s.sendto(b"x", (host, port)); return s.recv(100).decode().strip()
def udp_connected():
    s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1)
    s.connect((host, port)); s.send(b"x"); return s.recv(100).decode().strip()
def mapped():       # IPv4 through a dual-stack socket
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM); s.settimeout(1)
    s.connect(("::ffff:" + host, port)); return s.recv(100).decode().strip()
def fastopen():     # TCP Fast Open: the SYN carries data, no connect()
    s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1)
    s.sendto(b"x", socket.MSG_FASTOPEN, (host, port)); return s.recv(100).decode().strip()
out("tcp", tcp)
out("udp", udp)
out("udp-connected", udp_connected)
if not v6:
    out("mapped", mapped)
out("fastopen", fastopen)
"""


def events(world) -> list[dict]:
    r = world.cli("events", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def serve(lab, port: int) -> None:
    """A second server of the lab's, on PORT (TCP and UDP)."""
    p = lab.spawn([sys.executable, "-c", labmod.SERVER_CODE, str(port), S4, S6], ns=lab.net,
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"


def test_allow_a_port_of_the_lan_takes_the_main_table_for_that_port_only(world):
    """The printer case: its port by the default uplink, its other ports and
    the other protocol by the interface."""
    w, lab = world, world.lab
    serve(lab, 631)
    rules = ("--allow", f"{S4}/32:631/tcp", "--allow", f"[{S6}/128]:631/tcp")
    run = lambda host, port, proto: w.netleak(*rules, "-u", "nobody", "vpn0", *CLIENT,  # noqa: E731
                                             host, str(port), proto, "1").stdout.strip()
    with lab.capture("up0", flt="port 8080 or udp port 631") as other, \
            lab.capture("up0", flt="tcp port 631") as allowed:
        printer, printer6 = run(S4, 631, "tcp"), run(S6, 631, "tcp")
        web, udp = run(S4, 8080, "tcp"), run(S4, 631, "udp")
        assert other.stop() == 0, other.lines
        # the positive control: the capture on up0 sees the allowed flow
        assert allowed.stop() > 0
    assert (printer, printer6) == (f"ok {UP4}", "ok 2001:db8:1::2")
    assert (web, udp) == (f"ok {VPN4}", f"ok {VPN4}")


def test_a_denied_port_is_refused_even_through_the_interface(world):
    w, lab = world, world.lab
    flt = "port 8080"
    # positive control: the same attempts without the rule reach the
    # server through vpn0, and the capture there sees them
    with lab.capture("vpn0", flt=flt) as vpn:
        r = w.netleak("-u", "nobody", "vpn0", sys.executable, "-c", ATTEMPTS, S4, "8080")
        assert vpn.stop() > 0
    assert r.stdout.count(f"ok {VPN4}") >= 4, r.stdout
    w.control()
    hold = Held(w, "--deny", ":8080", "vpn0")
    try:
        assert hold.rows()[0]["deny"] == [":8080"]
        assert "deny :8080" in w.cli("status").stdout
        with lab.capture("vpn0", flt=flt) as vpn, lab.capture("up0", flt=flt) as up:
            r4 = hold.run(*NOBODY, sys.executable, "-c", ATTEMPTS, S4, "8080")
            r6 = hold.run(*NOBODY, sys.executable, "-c", ATTEMPTS, S6, "8080")
            assert vpn.stop() == 0, vpn.lines
            assert up.stop() == 0, up.lines
        lines = r4.stdout.splitlines() + r6.stdout.splitlines()
        print("denied:", lines)
        assert len(lines) == 9, r4.stdout + r4.stderr + r6.stdout + r6.stderr
        # refused at once where a call carries the address; nothing came back
        assert all("ok" not in ln.split()[1:2] for ln in lines), lines
        for name in ("tcp", "udp", "udp-connected", "mapped"):
            assert f"{name} Operation not permitted" in lines, lines
        c = hold.counters()
        assert c["refused_deny"] >= 7 and c["refused_kill_connect"] == 0, c
        assert wait_until(lambda: any(e["reason"] == "deny" and e["rule"] == ":8080" and
                                      e["dport"] == 8080 for e in events(w)))
    finally:
        hold.close()


def test_an_old_socket_of_an_attached_cgroup_is_dropped_at_egress(world, tmp_path):
    """A UDP socket connected before the attach never meets connect() again:
    its datagrams to the denied port are dropped as they leave, by the
    interface or not; the job's new TCP connections go on through vpn0."""
    w, lab = world, world.lab
    job = Job(w, tmp_path)
    try:
        job.start()
        with lab.capture("up0", flt="udp port 8080") as cap:
            job.next_answers(2)
            assert cap.stop() > 0, "the capture on up0 sees nothing: it proves nothing"
        r = w.cli("attach", "vpn0", "--deny", f"{S4}/32:8080/udp", "--pid", str(job.proc.pid))
        assert r.returncode == 0, r.stderr
        job.next_answers(1)
        with lab.capture("up0", flt="udp port 8080") as up, \
                lab.capture("vpn0", flt="udp port 8080") as vpn:
            assert job.next_answers(4) == [f"new {VPN4}"] * 4
            assert up.stop() == 0 and vpn.stop() == 0, up.lines + vpn.lines
        (row,) = w.status()
        assert row["deny"] == [f"{S4}/32:8080/udp"]
        assert row["counters"]["drop_deny_packets"] >= 4, row["counters"]
        assert row["counters"]["drop_device_packets"] == 0
        assert any(e["reason"] == "deny" and e["hook"] == "egress" for e in events(w))
    finally:
        job.close()


LISTEN = r"""
import socket, sys
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind(("0.0.0.0", int(sys.argv[1]))); t.listen(16)
print("ready", flush=True)
while True:
    c, a = t.accept(); c.sendall(b"hello\n"); c.close()
"""

FROM_PORT = r"""
import socket, sys
s = socket.socket(); s.settimeout(1.5)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[3])))
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print(s.recv(10).decode().strip())
except OSError as e:
    print("failed", e)
"""


def test_a_denied_peer_port_is_dropped_at_ingress(world):
    """A rule names the far end: a server inside does not hear a client
    whose port a rule denies, even through the interface."""
    w, lab = world, world.lab
    server = lab.spawn(EXEC + ["--deny", ":4444/tcp", "vpn0", sys.executable, "-c", LISTEN,
                               "8090"], env=w.env, stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline().strip() == "ready"
    connect = lambda port: lab.run([sys.executable, "-c", FROM_PORT, VPN4, "8090",  # noqa: E731
                                    str(port)], ns=lab.net).stdout.strip()
    with lab.capture("vpn0", flt=f"src {VPN4} and tcp port 8090") as answers:
        assert connect(4444).startswith("failed")
        assert answers.stop() == 0, answers.lines    # not even a SYN-ACK
    with lab.capture("vpn0", flt=f"src {VPN4} and tcp port 8090") as answers:
        assert connect(4445) == "hello"
        assert answers.stop() > 0                    # the positive control
    assert w.status()[0]["counters"]["drop_deny_packets"] > 0
    server.kill()
    server.wait()
