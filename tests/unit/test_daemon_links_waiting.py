"""Sessions on an interface that cannot carry them yet (daemon/links.py on
fakes): an ethernet-like link down with no gateway to learn, a link that
does not exist. They start with the kill switch on and are routed once the
interface (and, ethernet-like, its default route) is there."""
from __future__ import annotations

from tests.unit.fakes import World


def cid(w: World, sid="s1") -> int:
    return w.state.sessions[sid].cgroup_id


def unicast(w: World) -> set:
    return {r for r in w.net.routes if r.kind == "unicast"}


def test_ethernet_down_without_a_gateway_starts_waiting():
    w = World()
    w.net.link("eth1", 4, up=False, p2p=False)
    reply = w.open(iface="eth1")
    assert reply["killed"] and reply["waiting"] == "gateway"
    pol = w.policy(cid(w))
    assert pol.killed and pol.ifindex == 4
    b = w.state.bindings["eth1"]
    assert (b.via4, b.via6, b.user_via4) == (None, None, False)
    assert unicast(w) == set()
    assert {r.kind for r in w.net.routes} == {"unreachable"}
    assert {r.fwmark for r in w.net.rules} >= {b.mark}     # marked sockets find it


def test_up_without_a_default_route_still_waits():
    w = World()
    w.net.link("eth1", 4, up=False, p2p=False)
    w.open(iface="eth1")
    w.net.link("eth1", 4, p2p=False)
    w.links.reconcile_all()
    assert w.policy(cid(w)).killed and unicast(w) == set()


def test_gateway_learned_when_the_default_route_comes_then_routed():
    w = World()
    w.net.link("eth1", 4, up=False, p2p=False)
    w.open(iface="eth1")
    w.net.link("eth1", 4, p2p=False)
    w.links.reconcile_all()
    w.journal.clear()
    w.net.gateways[4] = ("192.0.2.1", None)       # a network manager's route
    saves = len(w.store.saved)
    w.links.reconcile_all()
    assert w.state.bindings["eth1"].via4 == "192.0.2.1"
    assert len(w.store.saved) > saves
    assert [r.gateway for r in unicast(w)] == ["192.0.2.1"]
    released = w.journal.index("bpf", "update", lambda e: e[2] == w.maps.policy)
    last_net = max(i for i, e in enumerate(w.journal) if e[0] == "net")
    assert released > last_net                    # the route first, then the switch
    pol = w.policy(cid(w))
    assert (pol.killed, pol.ifindex) == (False, 4)


def test_ethernet_up_with_a_default_route_is_routed_at_once():
    w = World()
    w.net.link("eth1", 4, p2p=False)
    w.net.gateways[4] = ("192.0.2.1", None)
    reply = w.open(iface="eth1")
    assert not reply["killed"] and reply["waiting"] is None


def test_given_via_needs_no_route_to_learn():
    w = World()
    w.net.link("eth1", 4, up=False, p2p=False)
    reply = w.open(iface="eth1", via4="192.0.2.9")
    assert reply["killed"] and reply["waiting"] is None      # only down
    w.net.link("eth1", 4, p2p=False)
    w.links.reconcile_all()
    assert not w.policy(cid(w)).killed
    assert [r.gateway for r in unicast(w)] == ["192.0.2.9"]


def test_absent_interface_starts_waiting_and_nothing_leads_anywhere():
    w = World()
    reply = w.open(iface="wg0")
    assert reply["killed"] and reply["waiting"] == "interface" and reply["ifindex"] == 0
    pol = w.policy(cid(w))
    assert pol.killed and pol.ifindex == 0
    b = w.state.bindings["wg0"]
    assert (b.via4, b.via6) == (None, None)
    assert {r.kind for r in w.net.routes} == {"unreachable"}
    assert {r.fwmark for r in w.net.rules} >= {b.mark}
    w.links.reconcile_all()                       # still nothing: still waiting
    assert w.policy(cid(w)).killed


def test_absent_interface_that_appears_as_a_tunnel_is_routed():
    w = World()
    w.open(iface="wg0")
    w.net.link("wg0", 9, up=False)                # made, not up yet (wg-quick)
    w.links.reconcile_all()
    assert w.policy(cid(w)).killed and unicast(w) == set()
    w.net.link("wg0", 9)
    w.links.reconcile_all()
    pol = w.policy(cid(w))
    assert (pol.killed, pol.ifindex) == (False, 9)
    assert {(r.oif, r.gateway) for r in unicast(w)} == {(9, None)}


def test_absent_interface_that_appears_ethernet_like_waits_for_its_gateway():
    w = World()
    w.open(iface="eth1")
    assert w.net.gateways == {}                   # nothing read for an absent link
    w.net.link("eth1", 4, p2p=False)
    w.links.reconcile_all()
    assert w.policy(cid(w)).killed and unicast(w) == set()
    w.net.gateways[4] = ("192.0.2.1", None)
    w.links.reconcile_all()
    assert not w.policy(cid(w)).killed
    assert [r.gateway for r in unicast(w)] == ["192.0.2.1"]


def test_attach_to_an_absent_interface_waits_too():
    w = World()
    reply = w.sessions.open(w.attach_request(iface="wg0"))
    assert reply["waiting"] == "interface"
    assert w.policy(w.state.sessions["a1"].cgroup_id).killed


def test_a_second_session_on_a_waiting_binding_waits_as_well():
    w = World()
    w.open(iface="wg0")
    reply = w.open("s2", iface="wg0")
    assert reply["killed"] and reply["waiting"] == "interface"
    assert w.policy(cid(w, "s2")).killed


def test_the_last_session_ending_removes_a_waiting_binding():
    w = World()
    w.open(iface="wg0")
    w.sessions.remove(w.state.sessions["s1"], "test")
    assert w.state.bindings == {} and w.net.routes == set() and w.net.rules == set()

