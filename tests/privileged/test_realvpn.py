"""netleak with real VPN software (tests/realvpn.py sets it up in the lab):

- wireguard-go configured with `wg`: `netleak-exec WG CLIENT` goes through
  the tunnel (v4 and v6: the server sees the tunnel's address), and
  nothing goes by up0 in clear while wireguard-go is SIGKILLed (its
  interface gone) and started again (a new ifindex); the same with its end
  brought up by `wg-quick`.
- OpenVPN 2.6 with TLS: the same through its tun, across a SIGKILL and a
  restart of the client (a new ifindex) and a SIGUSR1 reconnect.
- microsocks: `netleak-exec --proxy socks5://... vpn0 CLIENT` reaches the
  server through it (by address, and by name with socks5h), nothing
  directly.
- wg-quick full tunnel (AllowedIPs 0.0.0.0/0, ::/0: policy rules of its own,
  with no priority given) brought up before, or while, a session on vpn0
  runs: the session stays on vpn0.

up0 carries the tunnels' own encrypted UDP: what counts is the workload's
clear packets there (to or from the server), and each test proves that
capture sees such packets when they do go by up0.
"""
from __future__ import annotations

import ipaddress
import shutil
import sys
import tempfile

import pytest

from netleak_hook import lab as labmod
from tests import realvpn
from tests.helpers import wait_until
from tests.privileged.test_proxy import PEER

pytestmark = pytest.mark.privileged

S4, S6 = labmod.SERVER4, labmod.SERVER6
VPN4 = labmod.LINKS["vpn0"][0].split("/")[0]
TRIES = 3000        # a sender's datagrams, more than any test waits for


@pytest.fixture
def folder():
    d = tempfile.mkdtemp(prefix="netleak-test-vpn-")
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def wg(world, folder):
    """The WireGuard tunnel, both ends wireguard-go configured with wg."""
    realvpn.need("wireguard-go", "wg")
    t = realvpn.WireGuard(world.lab, folder)
    try:
        yield t.start()
    finally:
        t.close()


@pytest.fixture
def wg_quick(world, folder):
    """NET's end by wireguard-go; HOST's to be brought up by the test with
    wg-quick (the configuration is written)."""
    realvpn.need("wireguard-go", "wg", "wg-quick")
    t = realvpn.WireGuard(world.lab, folder)
    try:
        t.start_net()
        yield t
    finally:
        t.close()


class Sender:
    """A session sending a UDP datagram to the server every 0.2 s (and
    waiting up to 1 s for the answer), its output read as it comes: `ok
    ADDR` (the address the server saw) or `refused WHY`."""

    def __init__(self, world, *session: str, server: str = S4) -> None:
        self.world = world
        self.proc = world.spawn(*session, *world.lab.client(server, "udp", TRIES))
        self.out = realvpn.Lines(self.proc)

    def wait_ok(self, addr: str, start: int = 0) -> None:
        assert self.out.wait_for(lambda ln: ln == f"ok {addr}", start=start), \
            self.out.since(start)[-5:] + [self.proc.stderr.read()
                                          if self.proc.poll() is not None else ""]

    def wait_refused(self, start: int) -> None:
        assert self.out.wait_for(lambda ln: ln.startswith("refused"), start=start), \
            self.out.since(start)[-5:]

    def mark(self) -> int:
        return len(self.out)

    def stop(self) -> None:
        realvpn.kill(self.proc)


# ---------------------------------------------------------------- WireGuard

def test_exec_on_wireguard_goes_through_the_tunnel(world, wg):
    w = world
    with w.lab.capture("up0") as up, \
            w.lab.capture("up0", flt=f"udp port {wg.PORT}") as sealed:
        tcp4 = w.netleak(wg.iface, *w.lab.client(S4, "tcp"))
        udp4 = w.netleak(wg.iface, *w.lab.client(S4, "udp"))
        tcp6 = w.netleak(wg.iface, *w.lab.client(S6, "tcp"))
        udp6 = w.netleak(wg.iface, *w.lab.client(S6, "udp"))
        assert up.stop() == 0, up.lines
        assert sealed.stop() > 0        # it went by up0, sealed by WireGuard
    assert tcp4.stdout.split() == ["ok", wg.HOST4], tcp4.stdout + tcp4.stderr
    assert udp4.stdout.split() == ["ok", wg.HOST4], udp4.stdout + udp4.stderr
    assert tcp6.stdout.split() == ["ok", wg.HOST6], tcp6.stdout + tcp6.stderr
    assert udp6.stdout.split() == ["ok", wg.HOST6], udp6.stdout + udp6.stderr
    w.control()


def test_kill_switch_holds_through_a_wireguard_go_crash_and_restart(world, wg):
    w = world
    s = Sender(w, wg.iface)
    try:
        with w.lab.capture("up0") as up:
            s.wait_ok(wg.HOST4)
            before = wg.ifindex()
            wg.crash_host()
            n = s.mark()
            s.wait_refused(n)
            assert wait_until(lambda: w.states() == ["waiting"]), w.status()
            wg.start_host()         # its stale socket still there: waits for the new one
            assert wg.ifindex() != before
            s.wait_ok(wg.HOST4, s.mark())
            assert wait_until(lambda: w.states() == ["routed"]), w.status()
            assert up.stop() == 0, up.lines
    finally:
        s.stop()
    w.control()


def test_wg_quick_tunnel_carries_a_session_and_its_kill_switch_holds(world, wg_quick):
    w, t = world, wg_quick
    t.quick("0.0.0.0/0, ::/0")
    t.quick_up()
    s = Sender(w, t.iface)
    try:
        with w.lab.capture("up0") as up:
            s.wait_ok(t.HOST4)
            t.quick_down()
            s.wait_refused(s.mark())
            t.quick_up()
            s.wait_ok(t.HOST4, s.mark())
            assert up.stop() == 0, up.lines
    finally:
        s.stop()
    t.quick_down()      # everything else went through the tunnel too: now by up0
    w.control()


# ---------------------------------------------------------------- OpenVPN

@pytest.fixture
def ovpn(world, folder):
    """The OpenVPN tunnel: server in NET, client in HOST, TLS."""
    realvpn.need("openvpn", "openssl")
    t = realvpn.OpenVPN(world.lab, folder)
    try:
        yield t.start()
    finally:
        t.close()


def test_exec_on_openvpn_goes_through_the_tunnel(world, ovpn):
    w = world
    v4, v6 = ovpn.addresses()
    assert v4 and v6, w.lab.ip(w.lab.host, "addr").stdout
    with w.lab.capture("up0") as up, \
            w.lab.capture("up0", flt=f"udp port {ovpn.PORT}") as sealed:
        four = w.netleak(ovpn.iface, *w.lab.client(S4, "tcp"))
        six = w.netleak(ovpn.iface, *w.lab.client(S6, "udp"))
        assert up.stop() == 0, up.lines
        assert sealed.stop() > 0
    assert four.stdout.split() == ["ok", v4], four.stdout + four.stderr
    assert six.stdout.split() == ["ok", v6], six.stdout + six.stderr
    w.control()


def test_kill_switch_holds_through_an_openvpn_crash_restart_and_reconnect(world, ovpn):
    w = world
    v4, _ = ovpn.addresses()
    s = Sender(w, ovpn.iface)
    try:
        with w.lab.capture("up0") as up:
            s.wait_ok(v4)
            before = ovpn.ifindex()
            ovpn.crash_client()
            s.wait_refused(s.mark())
            assert wait_until(lambda: w.states() == ["waiting"]), w.status()
            ovpn.start_client()
            assert ovpn.ifindex() != before
            v4, _ = ovpn.addresses()
            s.wait_ok(v4, s.mark())
            again = ovpn.ifindex()
            n = s.mark()
            ovpn.reconnect()
            # its tun closed and opened again: refused meanwhile, a new ifindex
            s.wait_refused(n)
            assert ovpn.ifindex() not in (None, again)
            v4, _ = ovpn.addresses()
            s.wait_ok(v4, s.mark())
            assert wait_until(lambda: w.states() == ["routed"]), w.status()
            assert up.stop() == 0, up.lines
    finally:
        s.stop()
    w.control()


# ---------------------------------------------------------------- microsocks

SOCKS4, SOCKS_PORT = "203.0.113.21", 1080     # beside proxyd's 203.0.113.20
NAME = "server.example"                        # microsocks knows it; nothing else does
STAND_INS = ipaddress.ip_network("198.18.0.0/15")


@pytest.fixture
def microsocks(world, folder):
    realvpn.need("microsocks", "unshare")
    lab = world.lab
    lab.ip(lab.net, "addr", "add", f"{SOCKS4}/32", "dev", "lo")
    p = realvpn.Microsocks(lab, folder, SOCKS4, SOCKS_PORT, {NAME: S4})
    try:
        yield p
    finally:
        p.close()


def test_microsocks_carries_a_session_on_vpn0_and_nothing_leaves_directly(world, microsocks):
    w = world
    to_proxy = f"host {SOCKS4}"
    with w.lab.capture("up0", flt=f"host {SOCKS4} or host {S4} or host {S6}") as up, \
            w.lab.capture("vpn0", flt=to_proxy) as vpn:
        by_addr = w.netleak("--proxy", f"socks5://{SOCKS4}:{SOCKS_PORT}", "vpn0",
                            *w.lab.client(S4, "tcp"))
        by_name = w.netleak("--proxy", f"socks5h://{SOCKS4}:{SOCKS_PORT}", "vpn0",
                            sys.executable, "-c", PEER, NAME, str(labmod.PORT))
        udp = w.netleak("--proxy", f"socks5://{SOCKS4}:{SOCKS_PORT}", "vpn0",
                        *w.lab.client(S4, "udp"))
        assert up.stop() == 0, up.lines
        assert vpn.stop() > 0           # the proxy was reached, by vpn0
    # the server saw the proxy's address: the connection came through it
    assert by_addr.stdout.split() == ["ok", SOCKS4], by_addr.stdout + by_addr.stderr
    # by name: a stand-in address for the program, the name for microsocks
    assert by_name.stdout.split()[:2] == ["ok", SOCKS4], by_name.stdout + by_name.stderr
    assert ipaddress.ip_address(by_name.stdout.split()[2]) in STAND_INS, by_name.stdout
    assert udp.stdout.startswith("refused"), udp.stdout
    w.control()


# ---------------------------------------------------------------- wg-quick full tunnel

GRACE = 10      # datagrams (0.2 s apart at least: 2 s) a step may take to be dealt with
HELD = 5        # ... after which this many in a row must reach the server by vpn0


def stays_on_vpn0(w, s: Sender, start: int) -> None:
    """After GRACE datagrams from START, HELD in a row are answered by way
    of vpn0 (the server saw vpn0's address), and status never said
    `routed` of the session while one was not."""
    assert wait_until(lambda: s.mark() >= start + GRACE, timeout=60), s.out.since(start)
    grace = s.out.lines[start:start + GRACE]
    print(f"of the {GRACE} datagrams after the step, {sum(ln != f'ok {VPN4}' for ln in grace)} "
          f"were not answered by way of vpn0")
    seen: list[tuple[str, str]] = []
    while len(seen) < HELD:
        n = s.mark()
        assert wait_until(lambda: s.mark() > n, timeout=10), s.out.since(start)
        seen.append((s.out.lines[n], ",".join(w.states())))
    wrong = [(line, state) for line, state in seen if line != f"ok {VPN4}"]
    assert not [x for x in wrong if x[1] == "routed"], f"status says routed: {wrong}"
    assert wrong == [], seen


def test_a_session_keeps_its_route_when_wg_quick_full_tunnel_comes_up(world, wg_quick):
    """wg-quick's rules (added with no priority, so ahead of any rule there
    is) come after the session's: the session stays on vpn0, and says so
    truly, through `wg-quick up` and `wg-quick down; wg-quick up`."""
    w, t = world, wg_quick
    t.quick("0.0.0.0/0, ::/0")
    s = Sender(w, "vpn0")
    quick = False
    try:
        with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
            s.wait_ok(VPN4)
            t.quick_up()
            quick = True
            stays_on_vpn0(w, s, s.mark())
            t.quick_down()
            quick = False
            t.quick_up()
            quick = True
            stays_on_vpn0(w, s, s.mark())
            assert up.stop() == 0, up.lines
            assert vpn.stop() > 0
    finally:
        s.stop()
        if quick:
            t.quick_down()
    w.control()


def test_a_session_started_under_a_wg_quick_full_tunnel_is_routed_by_vpn0(world, wg_quick):
    w, t = world, wg_quick
    t.quick("0.0.0.0/0, ::/0")
    t.quick_up()
    s = None
    try:
        with w.lab.capture("up0") as up, w.lab.capture("vpn0") as vpn:
            s = Sender(w, "vpn0")
            s.wait_ok(VPN4)
            stays_on_vpn0(w, s, s.mark())
            assert up.stop() == 0, up.lines
            assert vpn.stop() > 0
        # the rest of HOST goes by the tunnel
        other = w.lab.run(w.lab.client(S4, "tcp"))
        assert other.stdout.split() == ["ok", t.HOST4], other.stdout
    finally:
        if s is not None:
            s.stop()
        t.quick_down()
    w.control()
