"""Other tools' policy rules: one added later without a priority lands ahead
of netleak's (`ip rule add` takes one less than the lowest); netleak moves
its own in front again, and where it cannot, status says `shadowed`. Each
test counts the session's packets on up0 and proves the capture sees a
plain request."""
from __future__ import annotations

import json
import re

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import Held

pytestmark = pytest.mark.privileged

VPN4, VPN6 = labmod.LINKS["vpn0"][0].split("/")[0], labmod.LINKS["vpn0"][2].split("/")[0]


def priorities(world, family: str) -> tuple[set[int], set[int]]:
    """(netleak's, others') rule priorities of FAMILY ("-4", "-6"), the
    local, main and default rules left out."""
    ours = set(world.our_rules())
    own, others = set(), set()
    for ln in world.lab.ip(world.lab.host, family, "rule").stdout.splitlines():
        prio = int(ln.split(":")[0])
        if ln in ours:
            own.add(prio)
        elif prio not in (0, 32766, 32767):
            others.add(prio)
    return own, others


def answers(held: Held, host: str = labmod.SERVER4, tries: int = 1) -> str:
    return held.run(*held.world.lab.client(host, "tcp", tries)).stdout


def test_a_rule_added_ahead_of_netleaks_does_not_take_its_sessions(world):
    held = Held(world)          # events only: the rule change itself is followed
    try:
        assert answers(held).strip() == f"ok {VPN4}"
        before, _ = priorities(world, "-4")
        with world.lab.capture("up0") as up:
            # as wg-quick does: no priority, so one less than the lowest
            world.lab.ip(world.lab.host, "-4", "rule", "add", "lookup", "main")
            world.lab.ip(world.lab.host, "-6", "rule", "add", "lookup", "main")
            theirs = [int(ln.split(":")[0]) for ln in
                      world.lab.ip(world.lab.host, "rule").stdout.splitlines()
                      if ln.endswith("lookup main") and not ln.startswith("32766:")]
            assert theirs and max(theirs) < max(before)    # they did land ahead

            def ahead() -> bool:
                for fam in ("-4", "-6"):
                    own, others = priorities(world, fam)
                    if not own or max(own) >= min(others):
                        return False
                return True
            import time
            t0 = time.monotonic()
            assert wait_until(ahead, timeout=10), world.rules() + open(world.run_dir + "/daemon.log").read()[-3000:]
            print(f"netleak's rules ahead again {time.monotonic() - t0:.3f} s after "
                  f"the others' were seen")
            four, six = answers(held).strip(), answers(held, labmod.SERVER6).strip()
            leaked = up.stop()
        assert (four, six) == (f"ok {VPN4}", f"ok {VPN6}")
        assert leaked == 0, up.lines
        assert [r["state"] for r in world.status()] == ["routed"]
        with world.lab.capture("up0") as cap:           # the positive control
            world.lab.run(world.lab.client())
            assert cap.stop() > 0
    finally:
        held.close()


def test_a_rule_netleak_cannot_get_ahead_of_shows_as_shadowed(world):
    held = Held(world)
    try:
        world.lab.ip(world.lab.host, "-4", "rule", "add", "priority", "1", "lookup", "main")
        try:
            assert wait_until(lambda: world.status()[0]["state"] == "shadowed", timeout=10), \
                world.status()
            row, = world.status()
            assert row["shadowed_by"] == "1: from all lookup main", row
            checks = {c["name"]: c for c in json.loads(
                world.cli("doctor", "--json").stdout)}
            assert not checks["rules"]["ok"]
            assert "vpn0: shadowed by 1: from all lookup main" in checks["rules"]["detail"]
            with world.lab.capture("up0") as up:
                out = answers(held, tries=2)
                leaked = up.stop()
            # routed by main, where the kill switch drops them: dead, not leaked
            assert leaked == 0 and "ok" not in out, (up.lines, out)
        finally:
            world.lab.ip(world.lab.host, "-4", "rule", "del", "priority", "1")
        assert wait_until(lambda: world.status()[0]["state"] == "routed", timeout=10)
        assert world.status()[0]["shadowed_by"] is None
        assert answers(held).strip() == f"ok {VPN4}"
        with world.lab.capture("up0") as cap:           # the positive control
            world.lab.run(world.lab.client())
            assert cap.stop() > 0
    finally:
        held.close()
