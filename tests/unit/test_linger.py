"""An interface's set-up lingering after its last session (core/state.py
unused_fate, daemon/sessions.py settle_unused, links.py release_unused):
kept for the next session within the bound, reused as it is, released when
the bound is over, by gc and by a clean exit; never for a failed or
detached set-up; followed through link changes like any binding."""
from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from netleak_hook import status
from netleak_hook.core import plan
from netleak_hook.core.config import Config
from netleak_hook.core.errors import NetleakError
from netleak_hook.core.policy import Policy
from netleak_hook.core.state import (LINGER_CAUSES, State, from_json, lingers_after, to_json,
                                     unused_fate)
from tests.helpers import make_session
from tests.unit.fakes import World

B = plan.Binding(iface="wg0", slot=0, mark=0x6E6C0001, table=28200)
B2 = plan.Binding(iface="wg1", slot=1, mark=0x6E6C0002, table=28201)
NOW = 1_000_000.0


# ---------- the decision (pure) ----------

def bound(*bindings: plan.Binding) -> State:
    st = State()
    for b in bindings:
        st = st.with_binding(b)
    return st


def test_the_interface_whose_last_session_ended_lingers_for_the_bound():
    keep, release = unused_fate(bound(B), NOW, 5.0, starting="wg0")
    assert (keep, release) == ({"wg0": NOW + 5.0}, [])


def test_linger_zero_releases_at_once():
    assert unused_fate(bound(B), NOW, 0.0, starting="wg0") == ({}, ["wg0"])


def test_an_unused_binding_that_does_not_linger_is_released():
    # a state left by a crashed daemon, or another interface than the one ending
    assert unused_fate(bound(B, B2), NOW, 5.0, starting="wg1") == (
        {"wg1": NOW + 5.0}, ["wg0"])


def test_a_linger_runs_out_and_is_not_renewed():
    st = bound(B).with_lingering({"wg0": NOW + 5.0})
    assert unused_fate(st, NOW + 4.9, 5.0) == ({"wg0": NOW + 5.0}, [])
    # a session of wg1 ending does not extend wg0's
    assert unused_fate(st, NOW + 4.9, 5.0, starting="wg0") == ({"wg0": NOW + 5.0}, [])
    assert unused_fate(st, NOW + 5.0, 5.0) == ({}, ["wg0"])


@pytest.mark.parametrize("until", [NOW + 60.0, math.nan, math.inf])
def test_nothing_lingers_past_the_bound_whatever_the_deadline_says(until):
    """The clock set back, a shorter linger after a restart, a bad state
    file: the deadline is never believed beyond now + the linger."""
    st = bound(B).with_lingering({"wg0": until})
    assert unused_fate(st, NOW, 5.0) == ({}, ["wg0"])


def test_a_binding_in_use_neither_lingers_nor_goes():
    st = bound(B).with_session(make_session(iface="wg0"))
    assert unused_fate(st, NOW, 5.0, starting="wg0") == ({}, [])


def test_a_session_on_a_lingering_interface_ends_its_linger():
    st = bound(B, B2).with_lingering({"wg0": NOW + 5, "wg1": NOW + 3})
    st = st.with_session(make_session(iface="wg0"))
    assert st.lingering == {"wg1": NOW + 3}
    assert st.without_binding("wg1").lingering == {}
    # only unused bindings are kept lingering
    assert st.with_lingering({"wg0": NOW + 5, "wg1": NOW + 3, "wg9": NOW}).lingering == {
        "wg1": NOW + 3}


def test_only_sessions_that_ended_by_themselves_leave_a_linger():
    assert {c for c in ("empty", "cgroup-gone", "unit-gone", "setup-abandoned",
                        "setup-failed", "aborted", "detached") if lingers_after(c)} == \
        set(LINGER_CAUSES) == {"empty", "cgroup-gone", "unit-gone"}


def test_lingering_survives_the_state_file():
    st = bound(B).with_lingering({"wg0": NOW + 2.5})
    assert from_json(to_json(st)) == st
    assert from_json(to_json(bound(B))).lingering == {}
    # an older file without the field
    text = to_json(bound(B)).replace(' "lingering": {},\n', "")
    assert "lingering" not in text and from_json(text) == bound(B)
    assert from_json(to_json(st).replace(str(NOW + 2.5), '"soon"')) == State()


def test_linger_is_configured_by_environment():
    assert Config.from_env({}).linger_seconds == 5.0
    assert Config.from_env({"NETLEAK_LINGER_SECONDS": "0"}).linger_seconds == 0.0
    assert Config.from_env({"NETLEAK_LINGER_SECONDS": "0.5"}).linger_seconds == 0.5
    for bad in ("-1", "nan", "inf", "7200"):
        with pytest.raises(NetleakError, match="NETLEAK_LINGER_SECONDS"):
            Config.from_env({"NETLEAK_LINGER_SECONDS": bad})
    with pytest.raises(NetleakError, match="not a number"):
        Config.from_env({"NETLEAK_LINGER_SECONDS": "soon"})


# ---------- the daemon on fakes ----------

def world(linger: float = 5.0) -> World:
    w = World(linger_seconds=linger)
    w.net.link("wg0", 5, addrs4=("198.51.100.2",))
    return w


def ended(w: World, sid: str = "s1", cause: str = "empty") -> None:
    w.sessions.remove(w.state.sessions[sid], cause)
    w.holder.save()


def made(w: World) -> list:
    return [e for e in w.journal if e[:2] in (("net", "add_rule"), ("net", "add_route"))]


def test_the_set_up_outlives_its_last_session_within_the_bound():
    w = world()
    w.open()
    rules, routes = set(w.net.rules), set(w.net.routes)
    ended(w)
    assert w.state.sessions == {} and "wg0" in w.state.bindings
    assert w.state.lingering == {"wg0": w.clock.now + 5.0}
    assert w.store.saved[-1].lingering == {"wg0": w.clock.now + 5.0}   # status sees it
    assert w.net.rules == rules and w.net.routes == routes
    # nothing is routed by it: no entry names its mark
    assert w.bpf.maps[w.maps.policy] == {}


def test_a_session_within_the_linger_reuses_the_set_up_as_it_is():
    w = world()
    w.open()
    ended(w)
    w.clock.now += 3
    w.journal.clear()
    reply = w.open(sid="s2")
    assert made(w) == [] and not w.journal.of("probe")      # no rule, route, nor lookup
    assert w.state.lingering == {} and w.store.saved[-1].lingering == {}
    s2 = w.state.sessions["s2"]
    pol = w.policy(s2.cgroup_id)
    assert pol == Policy(ifindex=5, mark=B.mark, killed=False, netns=w.holder.netns,
                         event_rate=w.cfg.event_rate, stats_slot=pol.stats_slot)
    assert (reply["mark"], reply["table"], reply["killed"]) == (B.mark, B.table, False)


def test_the_set_up_goes_when_the_bound_is_over(caplog):
    w = world()
    w.open()
    ended(w)
    w.clock.now += 4.9
    w.sessions.expire_lingering()
    assert w.net.rules and w.net.routes
    w.clock.now += 0.2
    saves = len(w.store.saved)
    caplog.set_level(logging.INFO)
    w.sessions.expire_lingering()
    (rec,) = [r.fields for r in caplog.records
              if getattr(r, "fields", {}).get("event") == "release"]
    assert (rec["iface"], rec["lingered"]) == ("wg0", True)
    assert w.net.rules == set() and w.net.routes == set()
    assert w.state.bindings == {} and w.state.lingering == {}
    assert len(w.store.saved) == saves + 1 and w.store.saved[-1].bindings == {}
    w.journal.clear()
    w.sessions.expire_lingering()           # nothing lingers: nothing done
    assert w.journal == []


def test_the_daemon_loop_expires_a_linger_on_its_own():
    w = world(linger=0.5)
    w.open()
    ended(w)
    d = w.daemon()
    w.clock.now += 1
    d.listener = object()
    d.wait = lambda sources: (setattr(d, "stopping", True) or [])
    d.run()
    assert w.state.bindings == {} and w.net.rules == set()


@pytest.mark.parametrize("cause", ["setup-failed", "aborted", "detached", "setup-abandoned"])
def test_a_set_up_that_failed_or_was_let_go_does_not_linger(cause):
    w = world()
    w.open()
    ended(w, cause=cause)
    assert w.state.bindings == {} and w.net.rules == set() and w.net.routes == set()


def test_linger_zero_keeps_the_old_way():
    w = world(linger=0)
    w.open()
    ended(w)
    assert w.state.bindings == {} and w.net.rules == set() and w.net.routes == set()


def test_gc_and_a_clean_exit_release_a_lingering_set_up():
    w = world()
    w.open()
    ended(w)
    report = w.gc.gc()
    assert report["released"] == ["wg0"]
    assert w.state.bindings == {} and w.net.rules == set() and w.net.routes == set()
    assert w.store.saved[-1].bindings == {}

    w.open(sid="s2")
    ended(w, "s2")
    assert w.state.lingering
    w.daemon().close()
    assert w.state.bindings == {} and w.net.rules == set() and w.net.routes == set()
    assert w.store.saved[-1].bindings == {} and w.store.saved[-1].lingering == {}


def test_a_crashed_daemons_linger_is_collected_at_the_next_start():
    st = bound(dataclasses.replace(B, iface="wg0")).with_lingering({"wg0": NOW + 4})
    w = World(state=st, linger_seconds=5.0)
    w.net.link("wg0", 5)
    w.links.reconcile_all()     # its rules and routes, as the crash left them
    assert w.net.rules
    w.gc.gc()
    assert w.state.bindings == {} and w.net.rules == set() and w.net.routes == set()


def test_a_lingering_table_follows_its_link_and_a_new_session_gets_it_as_it_is():
    w = world()
    w.open()
    ended(w)
    del w.net.links["wg0"]                  # gone while it lingers
    w.links.reconcile_all()
    assert {r.kind for r in w.net.routes} == {"unreachable"}
    w.net.link("wg0", 9, addrs4=("198.51.100.7",))     # back, a new ifindex and address
    w.links.reconcile_all()
    assert any(r.oif == 9 for r in w.net.routes)
    assert any(r.src == "198.51.100.7" for r in w.net.rules)
    assert not any(r.src == "198.51.100.2" for r in w.net.rules)
    w.open(sid="s2")
    assert w.policy(w.state.sessions["s2"].cgroup_id).ifindex == 9
    assert not w.policy(w.state.sessions["s2"].cgroup_id).killed


def test_a_session_opened_while_the_lingering_link_is_down_is_killed():
    w = world()
    w.open()
    ended(w)
    w.net.link("wg0", 5, up=False)
    w.links.reconcile_all()
    w.open(sid="s2")
    assert w.policy(w.state.sessions["s2"].cgroup_id).killed


def test_rules_of_a_sessions_own_go_with_it_while_its_interface_lingers():
    w = world()
    w.open(allow=["192.0.2.0/24"])
    own = w.state.sessions["s1"].mark
    assert any(r.fwmark == own for r in w.net.rules)
    ended(w)
    assert "wg0" in w.state.lingering
    assert not any(r.fwmark == own for r in w.net.rules)
    assert any(r.fwmark == B.mark for r in w.net.rules)


def test_a_lingering_set_up_gives_its_slot_to_a_new_interface():
    w = World(linger_seconds=5.0, max_interfaces=1)
    w.net.link("wg0", 5)
    w.net.link("wg1", 6)
    w.open()
    ended(w)
    w.open(sid="s2", iface="wg1")
    assert set(w.state.bindings) == {"wg1"} and w.state.lingering == {}
    assert not any(r.oif == 5 for r in w.net.routes)


def test_a_session_on_another_interface_ending_leaves_a_linger_alone():
    w = world()
    w.net.link("wg1", 6)
    w.open()
    w.open(sid="s2", iface="wg1")
    ended(w)
    first = dict(w.state.lingering)
    w.clock.now += 2
    ended(w, "s2")
    assert w.state.lingering == {"wg0": first["wg0"], "wg1": w.clock.now + 5.0}


# ---------- status ----------

def test_status_shows_a_lingering_interface_and_its_time_left():
    st = bound(B, B2).with_session(make_session(iface="wg1")).with_lingering(
        {"wg0": NOW + 3.26})
    link = plan.Link("wg0", 5, True, True)
    rows = status.binding_rows(st, {"wg0": link}, NOW)
    assert rows == [
        {"iface": "wg0", "mark": B.mark, "table": B.table, "ifindex": 5, "sessions": 0,
         "lingering": 3.3},
        {"iface": "wg1", "mark": B2.mark, "table": B2.table, "ifindex": None,
         "sessions": 1, "lingering": None}]
    text = status.render([], bindings=rows)
    assert text.splitlines() == [
        "no sessions",
        "wg0: lingering 3.3s more (no session: its rules and routes, table 28200, "
        "wait for the next one)"]
    assert status.render([]) == "no sessions"
