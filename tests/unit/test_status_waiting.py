"""netleak status: what a waiting session waits for."""
from __future__ import annotations

from netleak_hook import status
from netleak_hook.core import plan
from netleak_hook.core.policy import Policy
from netleak_hook.core.state import State
from tests.helpers import make_session

KILLED = Policy(ifindex=4, mark=0x6E6C0001, killed=True)


def one(facts: status.Facts) -> dict:
    st = State().with_binding(plan.Binding(iface="eth1", slot=0, mark=0x6E6C0001,
                                           table=28200))
    st = st.with_session(make_session(id="s0", iface="eth1", cgroup="netleak/exec-s0-1",
                                      cgroup_id=50, committed=True))
    (row,) = status.rows(st, {"s0": facts}, 0.0)
    return row


def test_waiting_for_a_gateway_says_so():
    for up in (False, True):
        row = one(status.Facts(policy=KILLED, link_index=4, link_up=up, waiting="gateway"))
        assert row["state"] == "waiting"
        assert row["state_detail"].startswith("waiting for a gateway")


def test_waiting_for_the_interface_says_so():
    row = one(status.Facts(policy=Policy(0, 0x6E6C0001, True), link_index=None,
                           waiting="interface"))
    assert row["state"] == "waiting"
    assert row["state_detail"].startswith("waiting for the interface")


def test_down_with_a_gateway_known_is_the_kill_switch():
    row = one(status.Facts(policy=KILLED, link_index=4, link_up=False))
    assert row["state"] == "kill-switch" and "down" in row["state_detail"]
