"""netleak status: states, rows and the compact table."""
from __future__ import annotations

import pytest

from netleak_hook.core import plan
from netleak_hook import status
from netleak_hook.core.policy import Policy, Stats
from netleak_hook.core.state import State
from tests.helpers import make_session

T0 = 1_700_000_000.0
POL = Policy(ifindex=7, mark=0x6E6C0001, killed=False)


@pytest.mark.parametrize("committed,facts,state", [
    (True, status.Facts(policy=POL, link_index=7, link_up=True), "routed"),
    (True, status.Facts(policy=Policy(7, 1, True), link_index=7, link_up=True),
     "kill-switch"),
    (True, status.Facts(policy=POL, link_index=7, link_up=False), "kill-switch"),
    (True, status.Facts(policy=Policy(0, 1, True), link_index=None), "waiting"),
    (False, status.Facts(policy=POL, link_index=7, link_up=True), "starting"),
    (True, status.Facts(policy=None, link_index=7, link_up=True), "no-policy"),
    (True, status.Facts(maps_readable=False), "unknown"),
    (True, status.Facts(policy=POL, link_index=7, link_up=True, shadowed_by="1: x"),
     "shadowed"),
    # the kill switch is the truth while it is on, shadowed or not
    (True, status.Facts(policy=Policy(7, 1, True), link_index=7, link_up=True,
                        shadowed_by="1: x"), "kill-switch"),
])
def test_session_state(committed, facts, state):
    assert status.session_state(committed, facts) == state
    assert state in status.STATES


def world(n: int = 2) -> State:
    st = State().with_binding(plan.Binding(iface="wg0", slot=0, mark=0x6E6C0001,
                                           table=28200))
    for i in range(n):
        st = st.with_session(make_session(
            id=f"s{i}", cgroup=f"netleak/exec-s{i}-{100 + i}", cgroup_id=50 + i,
            owned=i == 0, pid=100 + i, created=T0 + i, committed=True))
    return st


def test_rows_are_complete_and_oldest_first():
    facts = {"s0": status.Facts(policy=POL, link_index=7, link_up=True, procs=3,
                                stats=Stats(passed_packets=5, drop_kill_packets=2)),
             "s1": status.Facts(policy=Policy(7, 1, True), link_index=7, link_up=False)}
    rows = status.rows(world(), facts, T0 + 100)
    assert [r["id"] for r in rows] == ["s0", "s1"]
    r0 = rows[0]
    assert r0 == {**r0, "iface": "wg0", "ifindex": 7, "state": "routed", "procs": 3,
                  "cgroup": "/netleak/exec-s0-100", "cgroup_id": 50, "age": 100.0,
                  "started_by": "netleak-exec", "mark": 0x6E6C0001, "table": 28200,
                  "killed": False}
    assert r0["counters"]["passed_packets"] == 5
    assert r0["counters"]["drop_kill_bytes"] == 0
    assert r0["dropped"] == 2
    assert r0["refused_calls"] == 0 and r0["refused"]["kill"] == 0
    assert rows[1]["state"] == "kill-switch" and rows[1]["started_by"] == "attach"
    assert rows[1]["counters"] is None
    assert rows[1]["refused"] is None and rows[1]["refused_calls"] is None


def test_rows_count_refused_calls_by_reason():
    facts = {"s0": status.Facts(policy=Policy(7, 1, True), link_index=7, link_up=False,
                                stats=Stats(refused_kill_connect=3, refused_kill_sendmsg=4,
                                            refused_dns=1, drop_kill_packets=9))}
    (row,) = status.rows(world(1), facts, T0)
    assert row["refused"] == {"kill": 7, "netns": 0, "dns": 1, "block": 0, "proxy": 0,
                              "source": 0, "mptcp": 0, "limit": 0, "deny": 0}
    assert row["refused_calls"] == 8 and row["dropped"] == 9
    assert row["counters"]["refused_kill_connect"] == 3
    assert row["counters"]["refused_kill_sendmsg"] == 4
    (line,) = status.render([row]).splitlines()[1:]
    assert line.split()[5:8] == ["0", "9", "8"]        # PASS, DROP, REFUSED


def test_session_without_facts_is_unknown():
    (row,) = status.rows(world(1), {}, T0)
    assert row["state"] == "unknown"


@pytest.mark.parametrize("secs,text", [(0, "0s"), (59.9, "59s"), (60, "1m"), (3599, "59m"),
                                       (3600, "1h"), (86400 * 3 + 5, "3d")])
def test_age_text(secs, text):
    assert status.age_text(secs) == text


def test_render_fits_80_columns_and_keeps_the_end_of_long_paths():
    st = world(1)
    (s,) = st.sessions.values()
    long = "user.slice/user-1000.slice/user@1000.service/app.slice/" + "x" * 60 + ".scope"
    import dataclasses
    st = st.with_session(dataclasses.replace(s, cgroup=long, iface="wg0"))
    rows = status.rows(st, {"s0": status.Facts(
        policy=POL, link_index=7, link_up=True, procs=12345,
        stats=Stats(passed_packets=123456, drop_device_packets=7, drop_kill_packets=5))},
        T0 + 7200)
    out = status.render(rows)
    lines = out.splitlines()
    assert lines[0].split() == ["ID", "IFACE", "STATE", "PROCS", "AGE", "PASS", "DROP",
                                "REFUSED", "CGROUP"]
    assert " 123k    12       0  " in lines[1]
    assert all(len(ln) < 80 for ln in lines), [len(ln) for ln in lines]
    assert lines[1].endswith("x.scope") and "…" in lines[1]
    assert " routed " in lines[1] and " 2h " in lines[1]


@pytest.mark.parametrize("n,text", [(None, "-"), (0, "0"), (9999, "9999"), (10000, "10.0k"),
                                    (123456, "123k"), (999999, "999k"), (10**6, "1.0M"),
                                    (45 * 10**6, "45.0M"), (456 * 10**6, "456M"),
                                    (3 * 10**9, "3.0G"), (999 * 10**9, "999G")])
def test_count_text(n, text):
    assert status.count_text(n) == text
    assert len(text) <= 5


def test_render_empty():
    assert status.render([]) == "no sessions"


def test_a_shadowed_session_names_the_rule_in_both_outputs():
    rule = "1698: not from all fwmark 0xca6c lookup 51820"
    rows = status.rows(world(1), {"s0": status.Facts(policy=POL, link_index=7, link_up=True,
                                                     shadowed_by=rule)}, T0)
    assert rows[0]["state"] == "shadowed" and rows[0]["shadowed_by"] == rule
    lines = status.render(rows).splitlines()
    assert " shadowed " in lines[1] and lines[2].strip() == f"shadowed by {rule}"
    routed = status.rows(world(1), {"s0": status.Facts(policy=POL, link_index=7,
                                                       link_up=True)}, T0)
    assert routed[0]["shadowed_by"] is None
