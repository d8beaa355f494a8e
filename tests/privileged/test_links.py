"""Interfaces of other kinds, and strict reverse-path filtering."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until

pytestmark = pytest.mark.privileged

RELAY = os.path.join(os.path.dirname(__file__), "tunrelay.py")


def test_tun_point_to_point(world):
    """tun0 has no gateway and reports operstate UNKNOWN: still routed."""
    lab = world.lab
    p = lab.spawn([sys.executable, RELAY, f"/run/netns/{lab.net}"], stdout=subprocess.PIPE,
                  text=True)
    assert p.stdout.readline().strip() == "ready"
    lab.ip(lab.host, "addr", "add", "198.51.100.66", "peer", "198.51.100.65", "dev", "tun0")
    lab.ip(lab.host, "addr", "add", "2001:db8:3::2/64", "dev", "tun0", "nodad")
    lab.ip(lab.host, "link", "set", "tun0", "up")
    lab.ip(lab.net, "addr", "add", "198.51.100.65", "peer", "198.51.100.66", "dev", "tunp")
    lab.ip(lab.net, "addr", "add", "2001:db8:3::1/64", "dev", "tunp", "nodad")
    lab.ip(lab.net, "link", "set", "tunp", "up")
    assert "UNKNOWN" in lab.ip(lab.host, "-br", "link", "show", "tun0").stdout
    with lab.capture("up0") as cap:
        r4 = world.netleak("tun0", *lab.client(labmod.SERVER4))
        r6 = world.netleak("tun0", *lab.client(labmod.SERVER6, "udp"))
        leaked = cap.stop()
    assert r4.stdout.strip() == "ok 198.51.100.66", r4.stderr
    assert r6.stdout.strip() == "ok 2001:db8:3::2", r6.stderr
    assert leaked == 0
    world.control()
    p2 = world.spawn("tun0", "sleep", "20")
    try:
        # its own session's routes, not those lingering after the two above
        assert wait_until(lambda: world.sessions() == 1 and "dev tun0" in world.our_routes())
        routes = world.our_routes()
    finally:
        p2.kill()
        p2.wait()
    tun_routes = [ln for ln in routes.splitlines() if "dev tun0" in ln]
    assert tun_routes and not any(" via " in ln for ln in tun_routes), routes


def test_strict_rp_filter(world):
    """Replies arriving on vpn0 pass strict rp_filter (the from-address rule
    points the reverse lookup at vpn0's table); the setting is untouched."""
    lab = world.lab
    for key in ("all", "vpn0", "default"):
        lab.sysctl(lab.host, f"net.ipv4.conf.{key}.rp_filter", "1")
    r = world.netleak("vpn0", *lab.client(tries=2))
    assert r.stdout.splitlines() == ["ok 198.51.100.2"] * 2, r.stdout + r.stderr
    got = lab.run(["sysctl", "-n", "net.ipv4.conf.all.rp_filter", "net.ipv4.conf.vpn0.rp_filter"])
    assert got.stdout.split() == ["1", "1"]


def test_strict_rp_filter_needs_the_from_rule(world):
    """Control for the test above: with the daemon paused (so it does not
    restore it) and vpn0's `from` rule removed, strict rp_filter drops the
    replies; with the rule back, they pass again."""
    lab = world.lab
    for key in ("all", "vpn0"):
        lab.sysctl(lab.host, f"net.ipv4.conf.{key}.rp_filter", "1")
    p = world.spawn("vpn0", *lab.client(tries=40))
    assert p.stdout.readline().startswith("ok 198.51.100.2")
    daemon = world.daemon_pid()
    rule = ["rule", "del", "priority", "1700", "from", "198.51.100.2", "lookup", "28200"]
    os.kill(daemon, signal.SIGSTOP)
    try:
        lab.ip(lab.host, *rule)
        answers = [p.stdout.readline() for _ in range(3)]
        assert all(a.startswith("refused") for a in answers[1:]), answers
    finally:
        os.kill(daemon, signal.SIGCONT)    # it puts the rule back
    assert wait_until(lambda: any("from 198.51.100.2" in r for r in world.our_rules()))
    later = [p.stdout.readline() for _ in range(4)]
    assert later[-1].startswith("ok 198.51.100.2"), later
    p.kill()
    p.wait()
