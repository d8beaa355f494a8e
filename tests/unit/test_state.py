"""netleak_hook.core.state: session bookkeeping values and their JSON form."""
from __future__ import annotations

import json

import pytest

from netleak_hook.core import state as st
from netleak_hook.core.plan import Binding
from netleak_hook.core.state import Session, State
from tests.helpers import make_session

B_WG = Binding("wg0", 0, 0x6E6C0001, 28200, via4=None, via6=None)
B_ETH = Binding("eth1", 1, 0x6E6C0002, 28201, via4="192.0.2.1", via6="2001:db8::1",
                user_via4=True, user_via6=False)


def sess(sid: str, iface: str = "wg0", **kw) -> Session:
    return make_session(**{"id": sid, "iface": iface, "cgroup_id": 1000 + len(sid),
                           "pinset": "/sys/fs/bpf/netleak/abc", **kw})


def full_state() -> State:
    s = State()
    s = s.with_binding(B_WG).with_binding(B_ETH)
    s = s.with_session(sess("a1", "wg0", pid=4242, created=1700000000.5, committed=True))
    s = s.with_session(sess("b2", "eth1", owned=False, cgroup="machine.slice/x.scope"))
    return s


# ---------- JSON ----------

def test_round_trip_with_bindings_and_sessions():
    s = full_state()
    back = st.from_json(st.to_json(s))
    assert back == s
    assert back.bindings["eth1"].user_via4 is True
    assert back.sessions["a1"].created == 1700000000.5
    assert back.sessions["b2"].owned is False


def test_to_json_has_version_and_is_deterministic():
    text = st.to_json(full_state())
    doc = json.loads(text)
    assert doc["version"] == st.STATE_VERSION
    assert set(doc["bindings"]) == {"wg0", "eth1"}
    assert set(doc["sessions"]) == {"a1", "b2"}
    assert text.endswith("\n")
    # insertion order does not matter
    other = State().with_binding(B_ETH).with_binding(B_WG)
    other = other.with_session(full_state().sessions["b2"]).with_session(
        full_state().sessions["a1"])
    assert st.to_json(other) == text


def test_round_trip_empty():
    assert st.from_json(st.to_json(State())) == State()


@pytest.mark.parametrize("text", [
    "", "   \n", "{not json", "garbage", '{"bindings": {}}',
    '{"version": 2, "bindings": {}, "sessions": {}}',
    '{"version": "1", "bindings": {}, "sessions": {}}',
])
def test_from_json_bad_or_empty_is_empty_state(text):
    assert st.from_json(text) == State()


def test_from_json_wrong_version_drops_content():
    doc = json.loads(st.to_json(full_state()))
    doc["version"] = st.STATE_VERSION + 1
    assert st.from_json(json.dumps(doc)) == State()


def test_from_json_ignores_unknown_fields():
    doc = json.loads(st.to_json(full_state()))
    doc["future_top_level"] = [1, 2]
    doc["bindings"]["wg0"]["future_field"] = "x"
    doc["sessions"]["a1"]["other"] = {"nested": True}
    assert st.from_json(json.dumps(doc)) == full_state()


def test_from_json_missing_optional_fields_take_defaults():
    doc = {"version": st.STATE_VERSION,
           "bindings": {"wg0": {"iface": "wg0", "slot": 0, "mark": 1, "table": 300}},
           "sessions": {"x": {"id": "x", "iface": "wg0", "cgroup": "netleak/exec-x",
                              "cgroup_id": 5, "pinset": "/p"}}}
    s = st.from_json(json.dumps(doc))
    assert s.bindings["wg0"] == Binding("wg0", 0, 1, 300)
    assert s.sessions["x"].owned is True and s.sessions["x"].committed is False
    assert s.sessions["x"].pid == 0


def test_from_json_missing_sections_are_empty():
    s = st.from_json(json.dumps({"version": st.STATE_VERSION}))
    assert s == State()


@pytest.mark.parametrize("text", ["[]", "null", "42", '"text"'])
def test_from_json_non_object_json_is_empty_state(text):
    assert st.from_json(text) == State()


@pytest.mark.parametrize("doc", [
    {"version": 1, "bindings": {"wg0": {"iface": "wg0"}}, "sessions": {}},
    {"version": 1, "bindings": {}, "sessions": {"x": "not an object"}},
    {"version": 1, "bindings": None, "sessions": {}},
])
def test_from_json_malformed_entries_is_empty_state(doc):
    assert st.from_json(json.dumps(doc)) == State()


# ---------- State operations ----------

def test_sessions_on():
    s = full_state().with_session(sess("c3", "wg0"))
    assert sorted(x.id for x in s.sessions_on("wg0")) == ["a1", "c3"]
    assert [x.id for x in s.sessions_on("eth1")] == ["b2"]
    assert s.sessions_on("tun9") == []


def test_with_session_is_persistent_and_replaces_same_id():
    s0 = State()
    s1 = s0.with_session(sess("a1"))
    assert s0.sessions == {} and set(s1.sessions) == {"a1"}
    s2 = s1.with_session(sess("a1", committed=True))
    assert s2.sessions["a1"].committed is True
    assert s1.sessions["a1"].committed is False
    assert len(s2.sessions) == 1


def test_without_session():
    s = full_state()
    t = s.without_session("a1")
    assert set(t.sessions) == {"b2"}
    assert set(s.sessions) == {"a1", "b2"}          # original untouched
    assert t.bindings == s.bindings
    assert s.without_session("nope") == s


def test_with_binding_keyed_by_iface_and_replaces():
    s = State().with_binding(B_WG)
    assert s.bindings == {"wg0": B_WG}
    nb = Binding("wg0", 5, 9, 999)
    t = s.with_binding(nb)
    assert t.bindings == {"wg0": nb} and s.bindings == {"wg0": B_WG}


def test_without_binding():
    s = full_state()
    t = s.without_binding("wg0")
    assert set(t.bindings) == {"eth1"}
    assert set(s.bindings) == {"wg0", "eth1"}
    assert t.sessions == s.sessions
    assert s.without_binding("nope") == s


def test_unused_bindings():
    s = full_state()
    assert s.unused_bindings() == []
    s = s.without_session("b2")
    assert s.unused_bindings() == ["eth1"]
    s = s.without_session("a1")
    assert s.unused_bindings() == ["eth1", "wg0"]   # sorted


def test_unused_bindings_ignores_sessions_without_binding():
    s = State().with_session(sess("a1", "tun0")).with_binding(B_WG)
    assert s.unused_bindings() == ["wg0"]
