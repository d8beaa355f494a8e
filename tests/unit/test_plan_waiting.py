"""netleak_hook.core.plan: what a binding waits for before its sessions may
send (pure)."""
from __future__ import annotations

import pytest

from netleak_hook.core import plan
from netleak_hook.core.plan import Binding, Link

B = Binding(iface="eth1", slot=0, mark=0x6E6C0001, table=28200)


def link(up=True, p2p=False, noarp=False) -> Link:
    return Link(name="eth1", index=4, admin_up=up, carrier=up, pointopoint=p2p,
                noarp=noarp, addrs4=("198.51.100.2",))


@pytest.mark.parametrize("lk,user4,user6,learns", [
    (None, False, False, False),            # absent: what it will be is unknown
    (link(), False, False, True),
    (link(up=False), False, False, True),   # read; a down link shows no routes
    (link(), True, False, True),            # IPv6's may still be learned
    (link(), True, True, False),            # --via gave both
    (link(p2p=True), False, False, False),
    (link(noarp=True), False, False, False),
])
def test_learns_gateways(lk, user4, user6, learns):
    assert plan.learns_gateways(lk, user4, user6) is learns


@pytest.mark.parametrize("b,lk,why", [
    (B, None, "interface"),
    (plan.with_user_gateways(B, "192.0.2.1", None), None, "interface"),
    (B, link(), "gateway"),
    (B, link(up=False), "gateway"),
    (plan.with_learned_gateways(B, "192.0.2.1", None), link(), None),
    (plan.with_learned_gateways(B, None, "2001:db8::1"), link(up=False), None),
    (B, link(p2p=True), None),
    (B, link(p2p=True, up=False), None),
])
def test_waiting_for(b, lk, why):
    assert plan.waiting_for(b, lk) == why


@pytest.mark.parametrize("b,lk,ok", [
    (B, None, False),
    (B, link(), False),                     # up, but no gateway: no route by it
    (B, link(p2p=True), True),
    (B, link(p2p=True, up=False), False),
    (plan.with_learned_gateways(B, "192.0.2.1", None), link(), True),
    (plan.with_learned_gateways(B, "192.0.2.1", None), link(up=False), False),
])
def test_usable(b, lk, ok):
    assert plan.usable(b, lk) is ok


def test_a_waiting_binding_has_only_unreachable_routes():
    """While it waits, nothing in its table leads anywhere."""
    for lk in (None, link(), link(up=False)):
        assert {r.kind for r in plan.routes_for(B, lk)} == {"unreachable"}
