"""Interfaces of other kinds, and strict reverse-path filtering."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod

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
    routes = ""
    p2 = world.spawn("tun0", "sleep", "20")
    try:
        from tests.privileged.conftest import wait_until
        assert wait_until(lambda: "dev tun0" in world.our_routes())
        routes = world.our_routes()
    finally:
        p2.kill()
        p2.wait()
    assert "via" not in routes.split("dev tun0")[0].splitlines()[-1]


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
