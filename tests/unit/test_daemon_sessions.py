"""Sessions and requests (daemon/sessions.py, requests.py, relays.py) on
fakes: write-ahead before any kernel change, the commit saved after the
reply, roll-back of a failed set-up, refusals, detach only of what the
user attached."""
from __future__ import annotations

import errno
import json

import pytest

from netleak_hook.core.errors import NetleakError
from netleak_hook.core.policy import pack_key
from netleak_hook.core.policy import SLOT_OWNER
from tests.unit.fakes import Conn, FakeRelay, Listener, World


def world(**kw) -> World:
    w = World(**kw)
    w.net.link("wg0", 5)
    return w


def kernel_changes(w: World) -> list[int]:
    return [i for i, e in enumerate(w.journal) if e[0] in ("bpf", "net", "progs", "cgroups")]


# ---------- write-ahead and commit ----------

def test_session_is_saved_before_any_kernel_change():
    w = world()
    w.open()
    first_save = w.journal.index("store", "save")
    assert first_save >= 0 and first_save < min(kernel_changes(w))
    saved = w.journal[first_save][2]
    assert "s1" in saved.sessions and not saved.sessions["s1"].committed
    assert "wg0" in saved.bindings


def test_requester_moved_in_only_after_programs_are_attached():
    w = world()
    w.open()
    attached = w.journal.index("progs", "attach")
    joined = w.journal.index("cgroups", "join")
    assert 0 <= attached < joined
    assert w.journal[joined][3] == 77      # the peer the kernel named


def test_commit_is_saved_after_the_reply():
    w = world()
    msg = w.exec_request()
    del msg["peer_pid"]
    conn = Conn(w.journal, json.dumps(msg).encode() + b"\n")
    w.requests.accept(Listener([conn]))
    reply = json.loads(conn.reply)
    assert reply["ok"] and reply["id"] == "s1"
    at_reply = w.journal.index("conn", "reply")
    saves = [i for i, e in enumerate(w.journal) if e[:2] == ("store", "save")]
    assert saves[0] < at_reply < saves[-1]
    assert not w.journal[saves[0]][2].sessions["s1"].committed
    assert w.journal[saves[-1]][2].sessions["s1"].committed
    assert not w.holder.dirty


def test_peer_pid_comes_from_the_kernel_not_the_request():
    import os
    w = world()
    msg = dict(w.exec_request(), peer_pid=4242)
    conn = Conn(w.journal, json.dumps(msg).encode() + b"\n")
    w.requests.accept(Listener([conn]))
    assert w.state.sessions["s1"].pid == os.getpid()   # a socket pair's peer: us


def test_attached_cgroup_with_its_workload_is_committed_at_once():
    w = world()
    w.sessions.open(w.attach_request())
    s = w.state.sessions["a1"]
    assert s.committed and not s.owned
    assert w.journal.index("cgroups", "join") == -1


def test_failed_setup_is_rolled_back_and_saved():
    w = world()
    w.pins.progs[w.pins.path].fail.append(OSError(errno.EPERM, "attach refused"))
    with pytest.raises(OSError):
        w.open()
    assert w.state.sessions == {} and w.state.bindings == {}
    assert "s1" not in w.store.saved[-1].sessions
    assert w.bpf.maps[w.maps.policy] == {}
    assert w.net.routes == set() and w.net.rules == set()


def test_cgroup_replaced_during_setup_is_refused_before_anything():
    w = world()
    msg = w.exec_request()
    msg["cgroup_id"] += 1
    with pytest.raises(NetleakError, match="changed or vanished"):
        w.sessions.open(msg)
    assert w.store.saved == [] and kernel_changes(w) == [0] * 0 + [
        i for i, e in enumerate(w.journal) if e[:2] == ("cgroups", "make")]


def test_missing_pins_refused_and_rolled_back():
    w = world()
    w.pins.progs.clear()
    with pytest.raises(NetleakError, match="pinned programs missing"):
        w.open()
    assert w.state.sessions == {}


def test_second_session_on_a_known_interface_writes_only_its_entry():
    w = world()
    w.open()
    w.journal.clear()
    w.open("s2")
    assert w.journal.of("net") == []
    updates = [e for e in w.journal.of("bpf") if e[2] == w.maps.policy]
    assert [e[3] for e in updates] == [pack_key(w.state.sessions["s2"].cgroup_id)]


# ---------- what a session has of its own ----------

def test_allow_gets_a_mark_and_rules_of_its_own():
    w = world()
    w.open(allow=["192.0.2.0/24"])
    s = w.state.sessions["s1"]
    assert s.mark and s.mark != w.state.bindings["wg0"].mark
    assert any(r.fwmark == s.mark for r in w.net.rules)
    w.open("s2", allow=["198.51.100.0/24"])
    assert w.state.sessions["s2"].mark not in (0, s.mark)


def test_allow_needs_room_for_its_rules():
    w = world(rule_priority=1)
    with pytest.raises(NetleakError, match="raise it"):
        w.open(allow=["192.0.2.0/24"])


@pytest.mark.parametrize("extra,message", [
    ({"block": True, "proxy": "socks5://203.0.113.20:1080"}, "exclude each other"),
    ({"dns": ["198.51.100.53"], "proxy": "socks5://203.0.113.20:1080"}, "no use in proxy"),
    ({"iface": ""}, "no interface given"),
])
def test_contradictory_requests_refused_before_anything(extra, message):
    w = world()
    msg = dict(w.exec_request(), **extra)
    with pytest.raises(NetleakError, match=message):
        w.sessions.open(msg)
    assert w.store.saved == [] and w.state.sessions == {}


# ---------- proxy mode ----------

def test_first_proxy_session_starts_the_relay_last_stops_it():
    FakeRelay.instances.clear()
    w = world()
    w.open(proxy="socks5://203.0.113.20:1080", iface="")
    w.open("s2", proxy="socks5h://203.0.113.20:1080", iface="")
    assert len(FakeRelay.instances) == 1 and FakeRelay.instances[0].started
    assert ("pins", "attach_ingress", "prog_relay_in", "netleak/relay") in w.journal
    pol = w.policy(w.state.sessions["s1"].cgroup_id)
    assert pol.proxy and pol.relay_port == 1021 and pol.dns_port == 1023
    assert w.policy(w.state.sessions["s2"].cgroup_id).dns_port == 1022
    route = w.relays.route(w.state.sessions["s2"].cgroup_id)
    assert (route.addr, route.port, route.scheme) == ("203.0.113.20", 1080, "socks5h")
    ids = [w.state.sessions[k].cgroup_id for k in ("s1", "s2")]
    w.sessions.remove(w.state.sessions["s1"], "test")
    assert not FakeRelay.instances[0].closed
    w.sessions.remove(w.state.sessions["s2"], "test")
    assert FakeRelay.instances[0].closed and w.relays.relay is None
    assert FakeRelay.instances[0].forgotten == ids


def test_proxy_on_this_machine_refused_with_an_interface():
    w = world()
    with pytest.raises(NetleakError, match="is on this machine"):
        w.open(proxy="socks5://127.0.0.1:1080")


def test_relay_needs_pins_with_proxy_mode():
    w = world()
    w.pins.relay_program = False
    with pytest.raises(NetleakError, match="have no proxy mode"):
        w.open(proxy="socks5://203.0.113.20:1080", iface="")


def test_relay_that_cannot_start_leaves_no_cgroup():
    w = world()
    real = FakeRelay.__init__

    def failing(self, *a, **k):
        real(self, *a, **k)
        self.fail = OSError(errno.EADDRINUSE, "in use")
    FakeRelay.__init__ = failing
    try:
        with pytest.raises(OSError):
            w.open(proxy="socks5://203.0.113.20:1080", iface="")
    finally:
        FakeRelay.__init__ = real
    assert not w.cgroups.exists(w.relays.cgroup)


# ---------- attach refusals ----------

def test_attach_refused_when_already_controlled():
    w = world()
    msg = w.attach_request()
    w.sessions.open(msg)
    msg = dict(msg, id="a2")
    with pytest.raises(NetleakError, match="already under netleak control"):
        w.sessions.open(msg)


def test_attach_refused_when_another_daemon_controls_it():
    w = world()
    msg = w.attach_request()
    other = w.pins.add("/pins/v0", 50, w.bpf, w.journal)
    w.bpf.maps.setdefault(other.policy, {})[pack_key(msg["cgroup_id"])] = b"x"
    with pytest.raises(NetleakError, match="another netleak daemon"):
        w.sessions.open(msg)


def test_attach_refused_for_a_delegated_subtree():
    w = world()
    w.cgroups.delegation["user.slice/user-1000.slice"] = "user.slice/user-1000.slice"
    msg = w.attach_request(cgroup="user.slice/user-1000.slice/app.scope")
    with pytest.raises(NetleakError):
        w.sessions.open(msg)
    assert w.store.saved == []


def test_attach_refused_for_the_daemons_own_cgroup():
    w = world()
    msg = w.attach_request(cgroup=w.cgroups.mine)
    with pytest.raises(NetleakError):
        w.sessions.open(msg)


def test_attach_refused_when_a_process_lives_in_another_namespace():
    w = world()
    msg = w.attach_request()
    w.cgroups.procs[msg["cgroup"]] = [300, 301]
    w.procs.netns[301] = 1234
    with pytest.raises(NetleakError, match="process 301 .* another network"):
        w.sessions.open(msg)


def test_attach_of_a_process_gone_meanwhile_is_fine():
    w = world()
    msg = w.attach_request()
    w.cgroups.procs[msg["cgroup"]] = [300]
    w.procs.netns[300] = None
    assert w.sessions.open(msg)["ok"]


# ---------- detach, abort, removal ----------

def test_detach_removes_only_our_programs_and_entries():
    w = world()
    w.sessions.open(w.attach_request())
    w.journal.clear()
    reply = w.sessions.detach({"cgroup": "/system.slice/app.service"})
    assert reply == {"ok": True, "id": "a1", "cgroup": "system.slice/app.service",
                     "iface": "wg0"}
    assert w.journal.of("progs") == [("progs", "detach", "system.slice/app.service")]
    assert w.cgroups.exists(w.cgroups.path("system.slice/app.service"))  # theirs stays
    assert w.state.sessions == {} and w.state.bindings == {}
    assert w.net.routes == set() and w.net.rules == set()


def test_owned_session_is_not_detached_and_its_cgroup_goes():
    w = world()
    w.open()
    with pytest.raises(NetleakError, match="ends with its processes"):
        w.sessions.detach({"id": "s1"})
    w.journal.clear()
    w.sessions.remove(w.state.sessions["s1"], "test")
    assert w.journal.of("progs") == []
    assert ("cgroups", "remove_tree", "netleak/exec-s1-77") in w.journal


def test_detach_of_an_unknown_session_says_where_to_look():
    w = world()
    with pytest.raises(NetleakError, match="netleak status"):
        w.sessions.detach({"id": "nope"})


def test_abort_removes_and_saves_and_is_idempotent():
    w = world()
    w.open()
    assert w.sessions.abort({"id": "s1"}) == {"ok": True}
    assert "s1" not in w.store.saved[-1].sessions
    saves = len(w.store.saved)
    assert w.sessions.abort({"id": "s1"}) == {"ok": True}
    assert len(w.store.saved) == saves


def test_busy_cgroup_is_logged_not_fatal(caplog):
    w = world()
    w.open(populated=True)
    w.sessions.remove(w.state.sessions["s1"], "test")
    assert "not removed (busy)" in caplog.text
    assert w.state.sessions == {}


def test_removal_keeps_the_binding_while_another_session_uses_it():
    w = world()
    w.open()
    w.open("s2", allow=["192.0.2.0/24"])
    mark = w.state.sessions["s2"].mark
    w.sessions.remove(w.state.sessions["s2"], "test")
    assert "wg0" in w.state.bindings
    assert not any(r.fwmark == mark for r in w.net.rules)   # its own rules went
    assert w.holder.recent[1002].id == "s2"


# ---------- requests ----------

def ask(w: World, raw: bytes) -> dict:
    conn = Conn(w.journal, raw)
    w.requests.accept(Listener([conn]))
    return json.loads(conn.reply)


def test_ping():
    import os
    assert ask(world(), b'{"op": "ping"}\n') == {"ok": True, "pid": os.getpid()}


@pytest.mark.parametrize("raw,error", [
    (b'{"op": "launch"}\n', "unknown request 'launch'"),
    (b'{}\n', "unknown request None"),
    (b'{"op": [1]}\n', "unknown request [1]"),
    (b'', "unknown request None"),
    (b'not json\n', "bad request:"),
    (b'[1, 2]\n', "bad request: a request is one JSON object"),
    (b'{"op": "open", "id": "x"}\n', "netleak daemon error: 'iface'; see /run/netleak/daemon.log"),
])
def test_refusals(raw, error):
    w = world()
    reply = ask(w, raw)
    assert reply["ok"] is False and reply["error"].startswith(error)
    assert w.state.sessions == {}


def test_out_of_files_says_how_to_raise_the_limit():
    w = world()
    w.requests.ops["ping"] = lambda msg: (_ for _ in ()).throw(OSError(errno.EMFILE, "x"))
    assert "LimitNOFILE=" in ask(w, b'{"op": "ping"}\n')["error"]


def test_reap_and_gc_requests():
    w = world()
    w.open()
    w.cgroups.tree[w.state.sessions["s1"].cgroup][1] = False
    w.cgroups.tree[w.state.sessions["s1"].cgroup] = [w.state.sessions["s1"].cgroup_id, False]
    w.holder.state = w.state.with_session(
        __import__("dataclasses").replace(w.state.sessions["s1"], committed=True))
    assert ask(w, b'{"op": "reap"}\n') == {"ok": True, "reaped": ["s1"]}
    w.gc.unreported = {"reaped": ["old"], "adopted": [], "entries_removed": 2,
                       "routes_removed": 0, "cgroups_removed": [], "sessions": 0}
    report = ask(w, b'{"op": "gc"}\n')["report"]
    assert report["reaped"] == ["old"] and report["entries_removed"] == 2
    assert ask(w, b'{"op": "gc"}\n')["report"]["reaped"] == []


def test_a_request_that_never_ends_is_cut_at_its_size():
    w = world()
    reply = ask(w, b" " * 70000)
    assert reply["ok"] is False


def test_every_session_mark_in_use_refused():
    from netleak_hook.core import plan
    w = world()
    w.open(allow=["192.0.2.0/24"])
    real = plan.session_mark
    plan.session_mark = lambda used, base: None
    try:
        with pytest.raises(NetleakError, match="every session mark is in use"):
            w.open("s2", allow=["198.51.100.0/24"])
    finally:
        plan.session_mark = real


def test_other_system_call_failures_are_a_bad_request():
    from netleak_hook.daemon.requests import os_refusal
    assert os_refusal(OSError(errno.EINVAL, "Invalid argument"), 3) == \
        "bad request: [Errno 22] Invalid argument"


def test_a_request_that_cannot_be_read_is_refused():
    w = world()
    conn = Conn(w.journal, b"")
    conn.recv = lambda n: (_ for _ in ()).throw(TimeoutError("timed out"))
    w.requests.accept(Listener([conn]))
    assert json.loads(conn.reply)["error"].startswith("bad request: timed out")


def test_nothing_to_accept_is_nothing():
    w = world()
    w.requests.accept(Listener([]))
    assert w.journal == []


def test_relay_routes_only_proxy_sessions_and_follow_the_state():
    w = world()
    w.open()
    w.open("p1", proxy="socks5://user:pw@203.0.113.20:1080")
    plain, proxied = (w.state.sessions[k].cgroup_id for k in ("s1", "p1"))
    assert w.relays.route(plain) is None
    r = w.relays.route(proxied)
    assert (r.user, r.password, r.iface, r.mark) == ("user", "pw", "wg0",
                                                    w.state.bindings["wg0"].mark)
    assert w.relays.route(proxied) is r         # one snapshot, until the state changes
    w.sessions.remove(w.state.sessions["p1"], "test")
    assert w.relays.route(proxied) is None


# ---------- orders the reviewers asked about ----------

def test_entry_written_before_programs_are_attached():
    w = world()
    w.open()
    entry = w.journal.index("bpf", "update", lambda e: e[2] == w.maps.policy)
    assert 0 <= entry < w.journal.index("progs", "attach")


def test_relay_filter_attached_before_the_relay_starts():
    w = world()
    w.open(proxy="socks5://203.0.113.20:1080", iface="")
    assert 0 <= w.journal.index("pins", "attach_ingress") < w.journal.index("relay", "start")


def test_no_relay_for_a_refused_proxy():
    w = world()
    with pytest.raises(NetleakError):
        w.open(proxy="socks5://127.0.0.1:1080")
    assert w.journal.index("relay", "start") == -1 and FakeRelay.instances == []


def test_detach_takes_programs_off_before_the_entries_and_saves_before_replying():
    w = world()
    msg = w.attach_request()
    w.sessions.open(msg)
    w.journal.clear()
    reply = ask(w, b'{"op": "detach", "id": "a1"}\n')
    assert reply["ok"]
    detach = w.journal.index("progs", "detach")
    delete = w.journal.index("bpf", "delete", lambda e: e[2] == w.maps.policy)
    assert 0 <= detach < delete
    save = w.journal.index("store", "save")
    assert 0 <= save < w.journal.index("conn", "reply")
    assert "a1" not in w.journal[save][2].sessions
    assert w.policy(msg["cgroup_id"]) is None


def test_an_interrupted_setup_is_rolled_back_too():
    w = world()
    w.pins.progs[w.pins.path].fail.append(KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        w.open()
    assert w.state.sessions == {} and "s1" not in w.store.saved[-1].sessions


def test_a_binding_from_the_state_file_is_reconciled_before_its_first_session():
    from netleak_hook.core.state import State
    w = world()
    w.open()
    state = State(bindings=dict(w.state.bindings))      # a restart: nothing live yet
    w2 = World(state=state)
    w2.net.link("wg0", 5)
    w2.open("s2")
    assert w2.policy(w2.state.sessions["s2"].cgroup_id).ifindex == 5
    assert w2.net.routes


# ---------- sessions as systemd units ----------

def scope_request(w: World, sid="s9", **extra) -> dict:
    return dict({"op": "open", "id": sid, "iface": "wg0", "scope": True, "peer_pid": 77},
                **extra)


def test_a_scope_is_made_for_the_requester_then_protected():
    w = world()
    reply = w.sessions.open(scope_request(w))
    s = w.state.sessions["s9"]
    assert (s.cgroup, s.unit, s.owned) == ("netleak.slice/netleak-s9.scope",
                                           "netleak-s9.scope", False)
    assert reply["cgroup"] == s.cgroup and s.committed
    made = w.journal.index("units", "start_scope")
    assert w.journal[made][3] == 77
    assert 0 <= made < w.journal.index("store", "save") < w.journal.index("progs", "attach")
    assert w.policy(s.cgroup_id).ifindex == 5


def test_a_refused_scope_request_makes_no_scope():
    w = world()
    with pytest.raises(NetleakError, match="exclude each other"):
        w.sessions.open(scope_request(w, block=True, proxy="socks5://203.0.113.20:1080"))
    assert w.journal.index("units", "start_scope") == -1


@pytest.mark.parametrize("sid", ["../x", "a b", "x" * 65, ""])
def test_a_scope_needs_a_plain_session_id(sid):
    w = world()
    with pytest.raises(NetleakError, match="bad session id"):
        w.sessions.open(scope_request(w, sid))


def test_no_scope_without_systemd_or_a_requester():
    w = world()
    w.sessions.units = None
    with pytest.raises(NetleakError, match="cannot reach systemd to make a scope"):
        w.sessions.open(scope_request(w))
    w.sessions.units = w.units
    with pytest.raises(NetleakError, match="cannot reach systemd to make a scope"):
        w.sessions.open(scope_request(w, peer_pid=0))


def test_a_unit_session_ends_with_its_processes_not_by_detach():
    w = world()
    w.sessions.open(scope_request(w))
    with pytest.raises(NetleakError, match="ends with its processes"):
        w.sessions.detach({"id": "s9"})


def test_exec_in_its_own_unit_is_checked_like_an_attach():
    w = world()
    msg = w.attach_request("u1", cgroup="system.slice/job.service", unit="job.service")
    w.cgroups.procs[msg["cgroup"]] = [300]
    w.procs.netns[300] = 1234
    with pytest.raises(NetleakError, match="another network"):
        w.sessions.open(msg)


@pytest.mark.parametrize("unit", ["job", "job.timer", "a/b.service", "x y.scope"])
def test_a_unit_that_is_none_is_refused(unit):
    w = world()
    with pytest.raises(NetleakError, match="not a unit name"):
        w.sessions.open(w.attach_request(unit=unit))


def test_a_gone_units_programs_are_not_detached():
    w = world()
    w.sessions.open(scope_request(w))
    s = w.state.sessions["s9"]
    del w.cgroups.tree[s.cgroup]            # systemd collected the scope
    w.journal.clear()
    assert w.reaper.reap() == ["s9"]
    assert w.journal.of("progs") == [] and ("cgroups", "remove_tree", s.cgroup) not in w.journal


# ---------- services pinned by name ----------

def pin_request(w: World, sid="p1", cgroup="system.slice/web.service", unit="web.service",
                **extra) -> dict:
    return w.attach_request(sid, cgroup=cgroup, unit=unit, pinned=True, **extra)


def test_a_pinned_service_gets_a_drop_in_that_pins_each_start():
    w = world()
    w.sessions.open(pin_request(w, dns=["198.51.100.53"], allow=["192.0.2.0/24"]))
    (_, _, unit, text), = [e for e in w.journal if e[:2] == ("units", "write_dropin")]
    assert unit == "web.service"
    assert ("ExecStartPre=+/usr/bin/netleak attach wg0 --dns 198.51.100.53 "
            "--allow 192.0.2.0/24 --unit %n") in text
    w.sessions.detach({"id": "p1"})
    assert ("units", "remove_dropin", "web.service") in w.journal


def test_pinning_again_takes_the_new_cgroup_and_refuses_other_terms():
    w = world()
    w.sessions.open(pin_request(w))
    old = w.state.sessions["p1"].cgroup_id
    w.cgroups.tree.pop("system.slice/web.service")
    again = pin_request(w, "p2")                  # a restart: the same path, a new cgroup
    reply = w.sessions.open(again)
    assert reply["id"] == "p1" and list(w.state.sessions) == ["p1"]
    s = w.state.sessions["p1"]
    assert s.cgroup_id == again["cgroup_id"] != old
    assert w.policy(s.cgroup_id) is not None and w.policy(old) is None
    with pytest.raises(NetleakError, match="pinned already"):
        w.sessions.open(pin_request(w, "p3", allow=["192.0.2.0/24"]))


def test_a_pinned_service_keeps_its_counters_slot_in_its_new_cgroup():
    w = world()
    w.sessions.open(pin_request(w))
    slot = w.state.sessions["p1"].stats_slot
    w.cgroups.tree.pop("system.slice/web.service")
    again = pin_request(w, "p2")
    w.sessions.open(again)
    assert w.state.sessions["p1"].stats_slot == slot != 0
    assert w.policy(again["cgroup_id"]).stats_slot == slot
    # its new cgroup holds the claim, so gc does not take it for a crash's
    assert w.bpf.maps[w.maps.slots] == {
        slot.to_bytes(4, "little"): SLOT_OWNER.pack(again["cgroup_id"], w.holder.netns)}
    w.gc.entries()
    assert slot.to_bytes(4, "little") in w.bpf.maps[w.maps.slots]


def test_a_pinned_service_whose_slot_was_given_back_is_counted_by_cgroup_id():
    w = world()
    w.sessions.open(pin_request(w))
    slot = w.state.sessions["p1"].stats_slot
    key = slot.to_bytes(4, "little")
    w.bpf.maps[w.maps.slots][key] = SLOT_OWNER.pack(4242, w.holder.netns + 1)  # another's
    w.cgroups.tree.pop("system.slice/web.service")
    again = pin_request(w, "p2")
    w.sessions.open(again)
    assert w.state.sessions["p1"].stats_slot == 0
    assert w.policy(again["cgroup_id"]).stats_slot == 0
    assert w.bpf.maps[w.maps.slots][key] == SLOT_OWNER.pack(4242, w.holder.netns + 1)


def test_a_pinned_service_outlives_its_cgroup_and_follows_the_next():
    w = world()
    w.sessions.open(pin_request(w))
    w.cgroups.tree.pop("system.slice/web.service")
    assert w.reaper.reap() == []                  # restarting: kept
    new = w.cgroups.add("system.slice/web.service")
    w.reaper.follow_pinned()
    assert w.state.sessions["p1"].cgroup_id == new and w.policy(new) is not None
    w.cgroups.tree.pop("system.slice/web.service")
    w.units.gone.add("web.service")               # the unit itself is gone
    assert w.reaper.reap() == ["p1"]


def test_a_pinned_service_may_be_detached():
    w = world()
    w.sessions.open(pin_request(w))
    assert w.sessions.detach({"id": "p1"})["ok"]


def test_a_stopped_pinned_service_is_detached_by_its_name():
    w = world()
    w.sessions.open(pin_request(w))
    w.cgroups.tree.pop("system.slice/web.service")  # stopped: systemd gives no cgroup
    reply = w.sessions.detach({"unit": "web.service"})
    assert reply["ok"] and reply["id"] == "p1" and w.state.sessions == {}
    assert ("units", "remove_dropin", "web.service") in w.journal
    with pytest.raises(NetleakError, match="unit web.service is not under netleak"):
        w.sessions.detach({"unit": "web.service"})


def test_a_stopped_pinned_service_costs_systemd_nothing_on_each_turn():
    w = world()
    w.sessions.open(pin_request(w))
    w.cgroups.tree.pop("system.slice/web.service")      # stopped: no cgroup
    for _ in range(5):
        w.reaper.follow()
    assert w.journal.index("units", "loaded") == -1
    assert w.reaper.reap() == [] and w.journal.index("units", "loaded") >= 0


def test_systemd_not_answering_keeps_a_pinned_unit_and_the_pass_goes_on():
    w = world()
    w.sessions.open(pin_request(w))
    w.sessions.open(w.attach_request("a2", cgroup="system.slice/other.service"))
    w.cgroups.tree.pop("system.slice/web.service")
    w.cgroups.tree.pop("system.slice/other.service")
    w.units.broken = True
    assert w.reaper.reap() == ["a2"]
    assert "p1" in w.state.sessions


def test_a_drop_in_that_cannot_be_written_is_told_in_the_reply():
    w = world()
    w.units.broken = True
    reply = w.sessions.open(pin_request(w))
    assert reply["ok"] and "without its drop-in" in reply["warning"]
    assert "not before ExecStart=" in reply["warning"]
    w.units.broken = False
    w.sessions.netleak_cli = ""
    reply = w.sessions.open(pin_request(w, "p2", cgroup="system.slice/b.service",
                                        unit="b.service"))
    assert "no netleak command" in reply["warning"]


def test_a_drop_in_that_cannot_be_removed_is_told_at_detach():
    w = world()
    w.sessions.open(pin_request(w))
    w.units.broken = True
    reply = w.sessions.detach({"unit": "web.service"})
    assert reply["ok"] and "may still pin its next start" in reply["warning"]
    assert w.state.sessions == {}


def test_pinning_again_follows_a_cgroup_that_moved():
    w = world()
    w.sessions.open(pin_request(w))
    w.cgroups.tree.pop("system.slice/web.service")
    moved = pin_request(w, "p2", cgroup="other.slice/web.service")   # Slice= changed
    reply = w.sessions.open(moved)
    assert reply["id"] == "p1" and reply["cgroup"] == "other.slice/web.service"
    s = w.state.sessions["p1"]
    assert (s.cgroup, s.cgroup_id) == ("other.slice/web.service", moved["cgroup_id"])


def test_pinning_again_still_refuses_a_process_of_another_namespace():
    w = world()
    w.sessions.open(pin_request(w))
    w.cgroups.tree.pop("system.slice/web.service")
    again = pin_request(w, "p2")
    w.cgroups.procs["system.slice/web.service"] = [300]
    w.procs.netns[300] = 1234
    with pytest.raises(NetleakError, match="another network"):
        w.sessions.open(again)


def test_the_drop_in_quotes_what_systemd_would_expand():
    w = world()
    w.sessions.open(pin_request(w, dns=["198.51.100.53"]))
    (_, _, _, text), = [e for e in w.journal if e[:2] == ("units", "write_dropin")]
    assert text.rstrip().endswith("--unit %n")
    from netleak_hook.daemon.units import systemd_quoted
    assert systemd_quoted("we%ird $x") == '"we%%ird $$x"'
