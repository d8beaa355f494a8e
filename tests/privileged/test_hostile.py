"""A hostile workload (as nobody, or as root where that is the threat) and
hostile neighbours, each attempt made for real in the lab and counted on
the path a leak would take, with a positive control that shows the same
attempt leaving without netleak.

- Forged sources: a socket with a source address that is not this
  machine's sends to loopback; whatever answers (the kernel's ICMP errors
  and resets, a local listener, netleak's DNS answerer) would answer that
  address by the main table, out of the default uplink.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.privileged.probes import SPOOF

pytestmark = pytest.mark.privileged

S4, S6 = labmod.SERVER4, labmod.SERVER6
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PY = "/usr/bin/python3"
ECHO_PORT = 7007
RELAY_PORT = 1021     # NETLEAK_RELAY_PORT's default

# a local service outside any session: answers each datagram to its source
ECHO = r"""
import select, socket, sys
port = int(sys.argv[1])
socks = []
for fam, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((host, port)); socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        try:
            s.sendto(data, peer)
        except OSError:
            pass
"""


def events(world) -> list[dict]:
    r = world.cli("events", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def _hostile_lab(world) -> None:
    """Ping sockets for everyone (as many distributions allow), and a local
    echo service outside the session."""
    world.lab.sysctl(world.lab.host, "net.ipv4.ping_group_range", "0 2147483647")
    p = world.lab.spawn([sys.executable, "-c", ECHO, str(ECHO_PORT)], stdout=subprocess.PIPE,
                        text=True)
    assert p.stdout.readline().strip() == "ready"


def _nonlocal_bind(world, on: bool) -> None:
    for fam in ("ipv4", "ipv6"):
        world.lab.sysctl(world.lab.host, f"net.{fam}.ip_nonlocal_bind", "1" if on else "0")


OWN4, OWN6 = labmod.LINKS["up0"][0].split("/")[0], labmod.LINKS["up0"][2].split("/")[0]
# where the forged packets go: loopback, the host's own addresses, a local
# listener; UDP, TCP, ping sockets and DNS; IPv4, IPv6, v4-mapped
CASES = [f"{kind}{tag}={kind},{host},{port}"
         for tag, host in (("4", "127.0.0.1"), ("6", "::1"), ("4-mapped", "::ffff:127.0.0.1"),
                           ("4-own", OWN4), ("6-own", OWN6), ("4-own-mapped", f"::ffff:{OWN4}"))
         for kind, port in (("udp", 9), ("tcp", 9), ("ping", 0), ("dns", 53))] + \
    [f"echo4=udp,127.0.0.1,{ECHO_PORT}", f"echo6=udp,::1,{ECHO_PORT}"]


def _attempt(world, how: str, session: list[str] | None) -> tuple[int, dict[str, str]]:
    """The attack HOW in SESSION (netleak-exec's options; None: outside
    netleak), as nobody (as root for IP_TRANSPARENT); the packets seen on
    up0 to or from the forged sources, and each case's outcome."""
    _nonlocal_bind(world, how == "plain")
    cases = list(CASES)
    if session and "--proxy" in session:     # the relay's own DNS answerer, directly
        cases += [f"relay4=dns,127.0.0.1,{RELAY_PORT}", f"relay6=dns,::1,{RELAY_PORT}"]
    probe = [PY, "-c", SPOOF, S4, S6, how, *cases]
    try:
        with world.lab.capture("up0") as cap:
            if session is None:
                r = world.lab.run((NOBODY if how != "transparent" else []) + probe)
            else:
                user = ["-u", "nobody"] if how != "transparent" else []
                r = world.netleak(*user, *session, *probe)
            leaked = cap.stop()
    finally:
        _nonlocal_bind(world, False)
    assert r.returncode == 0, r.stderr
    out = dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    assert len(out) == len(cases), r.stdout
    return leaked, out


def test_forged_sources_leave_without_netleak(world):
    """Positive control: each way of forging a source makes answers leave by
    up0 when netleak is not there (IPv6 as nobody; IPv4 and v4-mapped too
    as root with IP_TRANSPARENT)."""
    _hostile_lab(world)
    for how in ("freebind", "plain", "transparent"):
        leaked, out = _attempt(world, how, None)
        assert leaked >= 10, (how, out)
        assert out["udp6"].startswith("sent"), out
    with world.lab.capture("up0", flt=f"icmp and host {S4}") as cap:
        _, out = _attempt(world, "transparent", None)
        assert cap.stop() >= 10, out        # the IPv4 kernel errors, to the forged source
    assert out["udp4-own"].startswith("sent"), out


@pytest.mark.parametrize("mode", ["vpn0", "--block", "--proxy"])
def test_forged_sources_leave_nothing(world, mode):
    """In every mode: the options that forge a source are refused, and what
    carries one all the same (ip_nonlocal_bind) is dropped on loopback."""
    _hostile_lab(world)
    session = {"vpn0": ["vpn0"], "--block": ["--block"],
               "--proxy": ["--proxy", "socks5h://203.0.113.20:1080"]}[mode]
    for how in ("freebind", "transparent"):
        leaked, out = _attempt(world, how, session)
        assert leaked == 0, (how, out)
        assert all(v == "refused setsockopt: Operation not permitted" for v in out.values()), out
    leaked, out = _attempt(world, "plain", session)
    assert leaked == 0, out
    # nothing refused these: the kernel took the source, the egress program dropped
    assert out["tcp6"].startswith("sent") and out["ping6"].startswith("sent"), out
    seen = {(e["reason"], e["hook"]) for e in events(world)}
    assert {("source", "setsockopt"), ("source", "egress")} <= seen, seen
    world.control()


def _packet(src: str, dst: str, proto: int = 17) -> bytes:
    """Ethernet, IP (v4 or v6) and a UDP header, as BPF_PROG_TEST_RUN takes it."""
    import ipaddress
    import struct
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", 40000, 9, 16, 0) + b"x" * 8
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, proto, 0,
                         s.packed, d.packed)
        return b"\0" * 12 + b"\x08\x00" + ip + udp
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), proto, 64, s.packed, d.packed)
    return b"\0" * 12 + b"\x86\xdd" + ip + udp


def test_egress_program_verdicts_on_loopback(test_pins):
    """The egress program itself, run by the kernel on crafted packets that
    leave by loopback (BPF_PROG_TEST_RUN): a loopback source or the very
    address it goes to passes; any other source is dropped, IPv4 too (which
    only root could forge, and netleak refuses root the option)."""
    import os
    import struct
    from netleak_hook.kernel import bpfsys, cgroupfs, programs
    from netleak_hook.policy import Policy, pack_key
    programs.ensure_bpffs(test_pins)
    pins = programs.ensure_pinned(test_pins)
    path = cgroupfs.abspath(cgroupfs.find_cgroup2(), f"netleak-test-verdicts-{os.getpid()}")
    cgroupfs.make(path)
    maps = programs.Maps(pins)
    key = pack_key(cgroupfs.cgroup_id(path))
    prog = bpfsys.obj_get(pins.pin("prog_egress"))
    cases = {(OWN4, OWN4): 1, ("127.0.0.1", "127.0.0.1"): 1, ("127.0.0.1", OWN4): 1,
             (S4, "127.0.0.1"): 0, (S4, OWN4): 0, ("::1", "::1"): 1, (OWN6, OWN6): 1,
             (S6, "::1"): 0, (S6, OWN6): 0, ("198.51.100.2", OWN4): 0}
    try:
        bpfsys.map_update(maps.policy, key, Policy(ifindex=2, mark=0, killed=False).pack())
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:        # the packet's socket is the caller's: inside the cgroup
            try:
                cgroupfs.join(path)
                ctx = struct.pack("<11I", *([0] * 10 + [1]))     # __sk_buff: ifindex lo
                got = [bpfsys.prog_test_run(prog, _packet(s, d), ctx, 1)[0] for s, d in cases]
                os.write(w, bytes(got))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            got = f.read()
        os.waitpid(pid, 0)
        assert dict(zip(cases, got)) == cases
    finally:
        bpfsys.map_delete(maps.policy, key)
        bpfsys.map_delete(maps.stats, key)
        maps.close()
        os.close(prog)
        cgroupfs.remove_tree(path)
