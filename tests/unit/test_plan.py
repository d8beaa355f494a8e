"""netleak_hook.core.plan: rules and routes of an interface's table (pure)."""
from __future__ import annotations

import pytest

from netleak_hook.core import plan
from netleak_hook.core.plan import (ROUTE_METRIC, UNREACHABLE_METRIC, Binding, Link, Route,
    Rule)

PRIO = 1700
B = Binding(iface="wg0", slot=3, mark=0x6E6C0004, table=28203)


def link(**kw) -> Link:
    base = dict(name="wg0", index=7, admin_up=True, carrier=True,
                addrs4=("198.51.100.2",), addrs6=("2001:db8:2::2",))
    base.update(kw)
    return Link(**base)


# ---------- Link ----------

@pytest.mark.parametrize("admin_up,carrier,up", [
    (True, True, True), (True, False, False), (False, True, False), (False, False, False)])
def test_link_up_needs_admin_flag_and_carrier(admin_up, carrier, up):
    assert link(admin_up=admin_up, carrier=carrier).up is up


@pytest.mark.parametrize("p2p,noarp,l3", [
    (False, False, False), (True, False, True), (False, True, True), (True, True, True)])
def test_link_layer3(p2p, noarp, l3):
    assert link(pointopoint=p2p, noarp=noarp).layer3 is l3


# ---------- rules_for ----------

def test_rules_none_link_only_fwmark_rules_for_both_families():
    rules = plan.rules_for(B, PRIO, None)
    assert rules == {Rule(4, PRIO, B.table, fwmark=B.mark),
                     Rule(6, PRIO, B.table, fwmark=B.mark)}


def test_rules_link_without_addresses_only_fwmark_rules():
    assert plan.rules_for(B, PRIO, link(addrs4=(), addrs6=())) == plan.rules_for(B, PRIO, None)


def test_rules_from_rule_for_each_routable_address():
    lk = link(addrs4=("10.8.0.2", "192.0.2.10"), addrs6=("fd00::2", "2001:db8::5"))
    rules = plan.rules_for(B, PRIO, lk)
    src = {(r.family, r.src) for r in rules if r.src is not None}
    assert src == {(4, "10.8.0.2"), (4, "192.0.2.10"), (6, "fd00::2"), (6, "2001:db8::5")}
    for r in rules:
        assert r.priority == PRIO and r.table == B.table
        # a rule is either a fwmark rule or a from rule, never both
        assert (r.fwmark is None) != (r.src is None)
    assert len(rules) == 2 + 4


def test_rules_link_local_and_loopback_skipped():
    lk = link(addrs4=("169.254.1.1", "127.0.0.2", "10.0.0.1"),
              addrs6=("fe80::1", "::1", "2001:db8::1"))
    src = {r.src for r in plan.rules_for(B, PRIO, lk) if r.src}
    assert src == {"10.0.0.1", "2001:db8::1"}


def test_rules_fwmark_uses_binding_mark_and_priority():
    b = Binding(iface="tun0", slot=0, mark=0x10001, table=300)
    rules = plan.rules_for(b, 42, None)
    assert {r.fwmark for r in rules} == {0x10001}
    assert {r.table for r in rules} == {300}
    assert {r.priority for r in rules} == {42}
    assert {r.family for r in rules} == {4, 6}


# ---------- routes_for ----------

def _unreachable(table: int) -> set[Route]:
    return {Route(f, table, "unreachable", UNREACHABLE_METRIC) for f in (4, 6)}


def test_routes_none_link_only_unreachable_fallbacks():
    assert plan.routes_for(B, None) == _unreachable(B.table)


@pytest.mark.parametrize("admin_up,carrier", [(False, True), (True, False), (False, False)])
def test_routes_link_down_only_unreachable(admin_up, carrier):
    lk = link(admin_up=admin_up, carrier=carrier, pointopoint=True)
    b = Binding("wg0", 0, 1, 300, via4="192.0.2.1", via6="2001:db8::1")
    assert plan.routes_for(b, lk) == _unreachable(300)


def test_routes_layer3_up_needs_no_gateway():
    routes = plan.routes_for(B, link(pointopoint=True))
    assert _unreachable(B.table) <= routes
    uni = {r for r in routes if r.kind == "unicast"}
    assert uni == {Route(4, B.table, "unicast", ROUTE_METRIC, oif=7),
                   Route(6, B.table, "unicast", ROUTE_METRIC, oif=7)}


def test_routes_noarp_counts_as_layer3_and_ignores_gateways():
    b = Binding("tun0", 0, 1, 300, via4="192.0.2.1")
    routes = plan.routes_for(b, link(noarp=True, index=9))
    uni = {r for r in routes if r.kind == "unicast"}
    assert {r.gateway for r in uni} == {None}
    assert {r.family for r in uni} == {4, 6}
    assert {r.oif for r in uni} == {9}


def test_routes_unreachable_metric_is_worse_than_unicast():
    routes = plan.routes_for(B, link(pointopoint=True))
    unr = [r for r in routes if r.kind == "unreachable"]
    uni = [r for r in routes if r.kind == "unicast"]
    assert all(r.metric == UNREACHABLE_METRIC == 0xFFFFFFFF for r in unr)
    assert max(r.metric for r in uni) < min(r.metric for r in unr)


def test_routes_ethernet_without_gateway_only_unreachable():
    assert plan.routes_for(B, link(name="eth1")) == _unreachable(B.table)


def test_routes_ethernet_v4_gateway_only():
    b = Binding("eth1", 0, 1, 300, via4="192.0.2.1")
    routes = plan.routes_for(b, link(name="eth1", index=4))
    assert routes == _unreachable(300) | {
        Route(4, 300, "unicast", ROUTE_METRIC, oif=4, gateway="192.0.2.1")}


def test_routes_ethernet_v6_gateway_only():
    b = Binding("eth1", 0, 1, 300, via6="fe80::1")
    routes = plan.routes_for(b, link(name="eth1", index=4))
    assert routes == _unreachable(300) | {
        Route(6, 300, "unicast", ROUTE_METRIC, oif=4, gateway="fe80::1")}


def test_routes_ethernet_both_gateways():
    b = Binding("eth1", 0, 1, 300, via4="192.0.2.1", via6="2001:db8::1")
    uni = {r for r in plan.routes_for(b, link(name="eth1", index=4)) if r.kind == "unicast"}
    assert uni == {Route(4, 300, "unicast", ROUTE_METRIC, oif=4, gateway="192.0.2.1"),
                   Route(6, 300, "unicast", ROUTE_METRIC, oif=4, gateway="2001:db8::1")}


def test_routes_all_in_binding_table():
    b = Binding("eth1", 0, 1, 12345, via4="192.0.2.1", via6="2001:db8::1")
    assert {r.table for r in plan.routes_for(b, link())} == {12345}


# ---------- diff ----------

def test_diff_add_and_remove():
    add, remove = plan.diff({1, 2, 3}, {2, 3, 4, 5})
    assert add == {4, 5}
    assert remove == {1}


def test_diff_equal_is_empty():
    assert plan.diff({1, 2}, {1, 2}) == (set(), set())


def test_diff_on_routes():
    down = plan.routes_for(B, None)
    up = plan.routes_for(B, link(pointopoint=True))
    add, remove = plan.diff(down, up)
    assert remove == set()
    assert add == {r for r in up if r.kind == "unicast"}
    add, remove = plan.diff(up, down)
    assert add == set() and remove == {r for r in up if r.kind == "unicast"}


# ---------- allocate_slot / make_binding ----------

@pytest.mark.parametrize("used,limit,expected", [
    (set(), 4, 0),
    ({0}, 4, 1),
    ({0, 1, 3}, 4, 2),
    ({1, 2}, 4, 0),
    ({0, 1, 2, 3}, 4, None),
    (set(), 0, None),
    ({5, 6}, 4, 0),
])
def test_allocate_slot(used, limit, expected):
    assert plan.allocate_slot(used, limit) == expected


def test_make_binding_mark_and_table():
    b = plan.make_binding("wg0", {0, 1}, 0x6E6C0000, 28200, 64, "192.0.2.1", None,
                          True, False)
    assert b == Binding(iface="wg0", slot=2, mark=0x6E6C0003, table=28202,
                        via4="192.0.2.1", via6=None, user_via4=True, user_via6=False)


def test_make_binding_first_slot_mark_is_not_base():
    b = plan.make_binding("tun0", set(), 0x10000, 1000, 8, None, "2001:db8::1",
                          False, True)
    assert (b.slot, b.mark, b.table) == (0, 0x10001, 1000)
    assert b.via6 == "2001:db8::1" and b.user_via6 and not b.user_via4


def test_make_binding_full_is_none():
    assert plan.make_binding("wg0", {0, 1}, 0x10000, 1000, 2, None, None,
                             False, False) is None


def test_make_binding_distinct_marks_and_tables():
    used: set[int] = set()
    seen = []
    for i in range(5):
        b = plan.make_binding(f"wg{i}", used, 0x10000, 1000, 5, None, None, False, False)
        used.add(b.slot)
        seen.append(b)
    assert len({b.mark for b in seen}) == 5
    assert len({b.table for b in seen}) == 5
    assert plan.make_binding("x", used, 0x10000, 1000, 5, None, None, False, False) is None


def test_user_gateways_stick_and_learned_ones_fill_in():
    b = plan.Binding(iface="eth1", slot=0, mark=1, table=300, via4="192.0.2.1")
    u = plan.with_user_gateways(b, None, "2001:db8::1")
    assert (u.via4, u.via6, u.user_via4, u.user_via6) == ("192.0.2.1", "2001:db8::1",
                                                          False, True)
    learned = plan.with_learned_gateways(u, "192.0.2.9", "2001:db8::9")
    assert (learned.via4, learned.via6) == ("192.0.2.9", "2001:db8::1")
    # a gateway no longer seen (link down, routes gone) is kept
    assert plan.with_learned_gateways(learned, None, None) == learned


# ---------- families the interface cannot carry ----------

@pytest.mark.parametrize("addrs6", [(), ("fe80::1",), ("::1",)])
def test_routes_no_routable_ipv6_address_gives_only_the_unreachable_route(addrs6):
    """IPv6 connects then fail at once instead of leaving with a source
    address borrowed from another interface and timing out."""
    routes = plan.routes_for(B, link(pointopoint=True, addrs6=addrs6))
    assert {(r.family, r.kind) for r in routes} == {
        (4, "unicast"), (4, "unreachable"), (6, "unreachable")}


def test_routes_no_ipv4_address_gives_only_the_unreachable_route():
    b = Binding("eth1", 0, 1, 300, via4="192.0.2.1", via6="2001:db8::1")
    routes = plan.routes_for(b, link(name="eth1", index=4, addrs4=()))
    assert {(r.family, r.kind) for r in routes} == {
        (4, "unreachable"), (6, "unicast"), (6, "unreachable")}


# ---------- --allow: a mark and rules of the session's own ----------

def test_allow_rules_send_prefixes_to_main_one_priority_earlier():
    rules = plan.allow_rules(0x6E6C8000, 28203, ("192.168.1.0/24", "2001:db8:9::/48"), PRIO)
    assert rules == {
        Rule(4, PRIO, 28203, fwmark=0x6E6C8000), Rule(6, PRIO, 28203, fwmark=0x6E6C8000),
        Rule(4, PRIO - 1, plan.MAIN_TABLE, fwmark=0x6E6C8000, dst="192.168.1.0/24"),
        Rule(6, PRIO - 1, plan.MAIN_TABLE, fwmark=0x6E6C8000, dst="2001:db8:9::/48")}


def test_session_marks_are_apart_from_interface_marks():
    base = 0x6E6C0000
    assert plan.session_mark(set(), base) == base + 0x8000
    assert plan.session_mark({base + 0x8000, base + 0x8002}, base) == base + 0x8001
    full = {base + 0x8000 + n for n in range(0x8000)}
    assert plan.session_mark(full, base) is None
    # apart from the interfaces' (MARK_BASE + 1 + slot, slots below 64)
    assert plan.session_mark(set(), base + 0x10000) == base + 0x18000


@pytest.mark.parametrize("rule,ours", [
    (Rule(4, PRIO, 28203, fwmark=5), True),
    (Rule(4, 1697, 28203, fwmark=5), True),           # moved ahead of others'
    (Rule(4, PRIO, 254, fwmark=5), False),            # not into our tables
    (Rule(4, PRIO - 1, 254, fwmark=0x6E6C8001, dst="192.168.1.0/24"), True),
    (Rule(4, 12, 254, fwmark=0x6E6C8001, dst="192.168.1.0/24"), True),
    (Rule(4, PRIO - 1, 254, fwmark=0x6E6C0001, dst="192.168.1.0/24"), False),  # not a session mark
    (Rule(4, PRIO - 1, 254, fwmark=None, dst="192.168.1.0/24"), False),
    (Rule(4, PRIO - 1, 254, fwmark=0x6E6D8001), False),  # another base
    (Rule(4, PRIO - 1, 254, fwmark=0x6E6C8001), False),  # no prefix: not an --allow rule
    (Rule(6, PRIO - 1, 28201, fwmark=0x6E6C8001), False),
])
def test_is_ours_touches_only_netleaks_rules(rule, ours):
    assert plan.is_ours(rule, {28200, 28203}, 0x6E6C0000) is ours
