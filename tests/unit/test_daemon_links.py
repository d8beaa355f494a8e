"""The kill switch (daemon/links.py) on fakes: the order of its steps as an
interface goes down, away and comes back; bindings; rules and routes."""
from __future__ import annotations

import dataclasses
import logging

import pytest

from netleak_hook.core import plan
from netleak_hook.core.errors import NetleakError
from tests.unit.fakes import NETNS, World


def opened(**kw) -> World:
    w = World(**kw)
    w.net.link("wg0", 5)
    w.open()
    w.journal.clear()
    return w


def cid(w: World, sid="s1") -> int:
    return w.state.sessions[sid].cgroup_id


def test_open_binds_routes_rules_and_an_open_entry():
    w = opened()
    pol = w.policy(cid(w))
    assert (pol.ifindex, pol.killed, pol.netns) == (5, False, NETNS)
    b = w.state.bindings["wg0"]
    assert {r.table for r in w.net.routes} == {b.table}
    assert any(r.kind == "unicast" and r.oif == 5 for r in w.net.routes)
    assert {r.fwmark for r in w.net.rules} >= {b.mark}


def test_link_down_kill_switch_goes_on_before_routes_change():
    w = opened()
    w.net.link("wg0", 5, up=False)
    w.links.reconcile_all()
    killed = w.journal.index("bpf", "update", lambda e: e[2] == w.maps.policy)
    route_change = w.journal.index("net")
    assert killed >= 0 and route_change > killed
    assert w.policy(cid(w)).killed
    # the unicast route is gone, the unreachable one stays: nothing falls through
    assert {r.kind for r in w.net.routes} == {"unreachable"}


def test_link_gone_kill_switch_on_with_no_index():
    w = opened()
    del w.net.links["wg0"]
    w.links.reconcile_all()
    pol = w.policy(cid(w))
    assert pol.killed and pol.ifindex == 0


def test_link_back_with_new_index_kill_switch_off_only_after_routes_rules_and_index():
    w = opened()
    del w.net.links["wg0"]
    w.links.reconcile_all()
    w.journal.clear()
    w.net.link("wg0", 9)           # re-created: another ifindex
    w.links.reconcile_all()
    released = w.journal.index("bpf", "update", lambda e: e[2] == w.maps.policy)
    last_net = max(i for i, e in enumerate(w.journal) if e[0] == "net")
    assert released > last_net
    pol = w.policy(cid(w))
    assert (pol.killed, pol.ifindex) == (False, 9)
    assert any(r.oif == 9 for r in w.net.routes)
    assert w.links.last_index["wg0"] == 9


def test_unchanged_link_writes_nothing():
    w = opened()
    w.links.reconcile_all()
    assert w.journal.of("net", "bpf") == []


def test_a_route_the_kernel_refuses_is_logged_and_the_rest_goes_on(caplog):
    w = opened()
    w.net.routes.clear()

    def refuse(r):
        raise OSError("link vanished")
    w.net.add_route = refuse
    w.links.reconcile_all()
    assert "link vanished" in caplog.text
    assert not w.policy(cid(w)).killed


def test_one_interface_failing_does_not_stop_the_others(caplog):
    w = opened()
    w.net.link("tun1", 6)
    w.open("s2", "tun1")
    w.net.link("wg0", 5, up=False)
    w.net.link("tun1", 6, up=False)
    real = w.net.current_routes

    def boom(table):
        if table == w.state.bindings["wg0"].table:
            raise RuntimeError("netlink hiccup")
        return real(table)
    w.net.current_routes = boom
    w.links.reconcile_all()
    assert "reconciling wg0" in caplog.text
    assert w.policy(cid(w, "s2")).killed


def test_learned_gateway_followed_and_saved():
    w = World()
    w.net.link("eth1", 4, p2p=False)
    w.net.gateways[4] = ("192.0.2.1", None)
    w.open(iface="eth1")
    assert w.state.bindings["eth1"].via4 == "192.0.2.1"
    w.net.gateways[4] = ("192.0.2.254", None)
    saves = len(w.store.saved)
    w.links.reconcile_all()
    assert w.state.bindings["eth1"].via4 == "192.0.2.254"
    assert len(w.store.saved) == saves + 1
    assert any(r.gateway == "192.0.2.254" for r in w.net.routes)


def test_user_gateways_are_never_replaced():
    w = World()
    w.net.link("eth1", 4, p2p=False)
    w.open(iface="eth1", via4="192.0.2.9", via6="2001:db8::9")
    w.net.gateways[4] = ("192.0.2.254", "2001:db8::1")
    w.links.reconcile_all()
    b = w.state.bindings["eth1"]
    assert (b.via4, b.via6) == ("192.0.2.9", "2001:db8::9")


def test_all_slots_in_use_refused():
    w = World(max_interfaces=1)
    w.net.link("wg0", 5)
    w.net.link("wg1", 6)
    w.open()
    with pytest.raises(NetleakError, match="all 1 interface slots are in use"):
        w.open("s2", "wg1")


def test_given_gateways_on_a_known_binding():
    w = World()
    w.net.link("eth1", 4, p2p=False)
    w.net.gateways[4] = ("192.0.2.1", None)
    w.open(iface="eth1")
    b = w.links.binding_for("eth1", "192.0.2.7", None)
    assert b.via4 == "192.0.2.7" and b.user_via4


def test_resolvers_follow_the_interface_unless_given():
    w = World()
    w.net.link("wg0", 5)
    w.resolvers[5] = ("198.51.100.53",)
    w.open()
    w.open("s2", dns=["203.0.113.53"])
    assert w.state.sessions["s1"].dns == ("198.51.100.53",)
    w.resolvers[5] = ("198.51.100.54",)
    w.links.reconcile_all()
    assert w.state.sessions["s1"].dns == ("198.51.100.54",)
    assert w.state.sessions["s2"].dns == ("203.0.113.53",)
    assert w.holder.dirty


def test_local_addresses_follow_the_namespace_and_leave_others():
    w = opened()
    other = (0x0BAD).to_bytes(8, "little") + bytes(16)
    w.bpf.maps.setdefault(w.maps.locals, {})[other] = b"\x01\0\0\0"
    w.net.addresses = {"127.0.0.1": 1}
    w.links.sync_locals()
    keys = set(w.bpf.maps[w.maps.locals])
    assert other in keys and len(keys) == 2
    w.links.sync_locals(keep=False)
    assert set(w.bpf.maps[w.maps.locals]) == {other}


def test_rules_others_made_are_left_alone():
    w = opened()
    theirs = plan.Rule(family=4, priority=1698, table=51820, fwmark=0xca6c)
    w.net.rules.add(theirs)
    w.links.apply_rules(w.links.read_links())
    assert theirs in w.net.rules


def test_stale_routes_in_our_tables_removed_bound_kept():
    w = opened()
    stale = plan.Route(family=4, table=w.cfg.table_base + 5, kind="unicast", metric=100, oif=3)
    w.net.routes.add(stale)
    assert w.links.gc_routes() == 1
    assert stale not in w.net.routes and w.net.routes


def test_no_network_entries_written_on_reconcile():
    w = World()
    w.sessions.open(dict(w.exec_request("b1", iface=""), block=True))
    c = w.state.sessions["b1"].cgroup_id
    w.bpf.maps[w.maps.policy].clear()
    w.links.reconcile_all()
    assert w.policy(c).block


def test_pin_sets_gone_or_without_locals_are_skipped():
    w = opened()
    w.maps.locals = -1
    w.links.sync_locals()
    w.pins.sets.clear()
    w.links.write_policy(w.state.sessions["s1"], w.links.live["wg0"])
    assert w.journal.of("bpf") == []


def test_reconcile_follows_the_namespaces_addresses():
    w = opened()
    w.net.addresses["203.0.113.7"] = 3
    w.links.reconcile_all()
    assert len(w.bpf.maps[w.maps.locals]) == 3


def test_new_rules_are_added_before_the_old_ones_go():
    """No moment without a rule for the mark (the packets would be dropped
    by the kill switch: no leak, but a gap)."""
    w = opened()
    b = w.state.bindings["wg0"]
    stale = plan.Rule(family=4, priority=w.cfg.rule_priority, table=b.table, fwmark=b.mark + 1)
    w.net.rules.add(stale)
    w.net.rules = {r for r in w.net.rules if r.family != 6}
    w.journal.clear()
    w.links.apply_rules(w.links.read_links())
    assert 0 <= w.journal.index("net", "add_rule") < w.journal.index("net", "del_rule")


# ---------- ahead of others' rules ----------

def noted(caplog, event: str) -> bool:
    return any(getattr(r, "fields", {}).get("event") == event for r in caplog.records)


def foreign(prio: int, table: int = 51820, family: int = 4, **kw) -> plan.Rule:
    return plan.Rule(family=family, priority=prio, table=table, **kw)


def ours_at(w) -> set[int]:
    return {r.priority for r in w.net.rules if w.links.ours(r)}


def test_a_rule_added_ahead_moves_netleaks_rules_in_front_of_it(caplog):
    w = opened()
    caplog.set_level(logging.INFO)
    assert ours_at(w) == {1700}
    w.net.rules |= {foreign(1699, fwmark=51820), foreign(1698, table=254)}
    w.links.reconcile_all()
    assert ours_at(w) == {1697} and w.links.priority == 1697
    assert noted(caplog, "rules-moved")
    # the rules of others' are theirs: left as they were
    assert foreign(1699, fwmark=51820) in w.net.rules and foreign(1698, table=254) in w.net.rules
    # they go: netleak's rules go back where they were configured
    w.net.rules -= {foreign(1699, fwmark=51820), foreign(1698, table=254)}
    w.links.reconcile_all()
    assert ours_at(w) == {1700}


def test_rules_behind_netleaks_do_not_move_them(caplog):
    caplog.set_level(logging.INFO)
    w = opened()
    w.net.rules |= {foreign(5210), foreign(32766, table=254)}
    w.links.reconcile_all()
    assert ours_at(w) == {1700} and not noted(caplog, "rules-moved")


def test_allow_rules_move_with_the_rest():
    w = opened()
    w.sessions.open(w.attach_request("a2", cgroup="system.slice/b.service",
                                     allow=["192.0.2.0/24"]))
    assert ours_at(w) == {1699, 1700}
    w.net.rules.add(foreign(1698))
    w.links.reconcile_all()
    assert ours_at(w) == {1696, 1697}


def test_a_binding_whose_packets_another_rule_takes_is_shadowed(caplog):
    caplog.set_level(logging.INFO)
    w = opened()
    # at priority 1: netleak cannot get ahead (its rules stop at 2), so stays
    w.net.rules.add(foreign(1))
    w.net.other_tables.add(51820)
    w.links.reconcile_all()
    assert ours_at(w) == {1700}
    assert w.links.shadowed["wg0"] == "1: from all lookup 51820"
    assert noted(caplog, "shadowed")
    w.net.rules.discard(foreign(1))
    w.links.reconcile_all()
    assert "wg0" not in w.links.shadowed and noted(caplog, "unshadowed")


def test_no_shadow_check_while_the_kill_switch_is_on():
    w = opened()
    w.net.rules.add(foreign(1))
    w.net.other_tables.add(51820)
    w.net.links["wg0"] = dataclasses.replace(w.net.links["wg0"], admin_up=False)
    w.links.reconcile_all()
    assert "wg0" not in w.links.shadowed


def test_new_resolvers_are_in_the_entry_that_lifts_the_kill_switch():
    w = World()
    w.net.link("wg0", 5)
    w.resolvers[5] = ("198.51.100.53",)
    w.open()
    w.net.link("wg0", 5, up=False)
    w.links.reconcile_all()
    w.resolvers[5] = ("198.51.100.99",)
    w.net.link("wg0", 5)
    w.links.reconcile_all()
    pol = w.policy(w.state.sessions["s1"].cgroup_id)
    assert not pol.killed and pol.dns == ("198.51.100.99",)


def test_a_rule_of_others_into_netleaks_table_is_never_deleted():
    w = opened()
    b = w.state.bindings["wg0"]
    # another tool's rule at netleak's priority and table: deleting netleak's
    # stale one could take theirs (the kernel deletes the first match)
    theirs = plan.Rule(family=4, priority=1700, table=b.table, fwmark=b.mark, src="192.0.2.9")
    stale = plan.Rule(family=4, priority=1700, table=b.table, fwmark=b.mark + 7)
    w.net.rules |= {theirs, stale}
    w.net.theirs = {theirs}
    w.links.apply_rules(w.links.read_links())
    assert theirs in w.net.rules and stale in w.net.rules
