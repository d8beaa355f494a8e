"""The reaper, garbage collection and the event ring (daemon/reaper.py,
gc.py, ring.py) on fakes: what ends, what is committed, what is removed,
what is adopted, and what is left to others."""
from __future__ import annotations

import dataclasses
import logging

from netleak_hook.core import lifecycle
from netleak_hook.core.policy import Policy, pack_key
from netleak_hook.core.state import Session, State
from netleak_hook.proxymode.relay import REDIRECT_SIZE
from netleak_hook.core.policy import SLOT_OWNER
from tests.unit.fakes import NETNS, PINS, World


def world(**kw) -> World:
    w = World(**kw)
    w.net.link("wg0", 5)
    return w


def empty(w: World, sid: str) -> None:
    w.cgroups.tree[w.state.sessions[sid].cgroup][1] = False


def committed(w: World, sid: str) -> None:
    w.holder.state = w.state.with_session(
        dataclasses.replace(w.state.sessions[sid], committed=True))


# ---------- reaper ----------

def test_empty_committed_session_is_reaped_with_its_entries():
    w = world()
    w.open(populated=True)
    cid = w.state.sessions["s1"].cgroup_id
    w.bpf.maps.setdefault(w.maps.stats, {})[pack_key(cid)] = b"counters"
    committed(w, "s1")
    empty(w, "s1")
    assert w.reaper.reap() == ["s1"]
    assert pack_key(cid) not in w.bpf.maps[w.maps.policy]
    assert pack_key(cid) not in w.bpf.maps[w.maps.stats]
    assert pack_key(cid) in [e[3] for e in w.journal.of("bpf") if e[1] == "delete"
                             and e[2] == w.maps.redirect_n]
    assert not w.cgroups.exists(w.cgroups.path("netleak/exec-s1-77"))
    assert "s1" not in w.store.saved[-1].sessions


def test_populated_setup_is_committed_not_reaped():
    w = world()
    w.open()
    w.holder.state = w.state.with_session(
        dataclasses.replace(w.state.sessions["s1"], committed=False))
    w.cgroups.tree[w.state.sessions["s1"].cgroup][1] = True
    assert w.reaper.reap() == []
    assert w.state.sessions["s1"].committed and w.store.saved[-1].sessions["s1"].committed


def test_setup_in_progress_kept_while_its_requester_lives():
    w = world()
    msg = w.exec_request()
    msg["join"] = False
    w.sessions.open(msg)
    w.procs.living.add(77)
    assert w.reaper.reap() == []
    w.procs.living.clear()
    assert w.reaper.reap() == ["s1"]


def test_setup_taking_far_too_long_is_rolled_back():
    w = world()
    msg = w.exec_request()
    msg["join"] = False
    w.sessions.open(msg)
    w.procs.living.add(77)
    w.clock.now += lifecycle.SETUP_GRACE + 1
    assert w.reaper.reap() == ["s1"]


def test_same_path_another_cgroup_means_ours_is_gone():
    w = world()
    w.open(populated=True)
    committed(w, "s1")
    s = w.state.sessions["s1"]
    w.cgroups.tree[s.cgroup] = [s.cgroup_id + 500, True]
    assert w.reaper.reap() == ["s1"]


def test_reap_only_the_sessions_named():
    w = world()
    w.open(populated=True)
    w.open("s2", populated=True)
    for sid in ("s1", "s2"):
        committed(w, sid)
        empty(w, sid)
    assert w.reaper.reap({"s2"}) == ["s2"]
    assert list(w.state.sessions) == ["s1"]


def test_watch_follows_sessions_and_reaps_what_it_missed():
    w = world()
    w.open(populated=True)
    committed(w, "s1")
    empty(w, "s1")
    w.watch.missed = {"s1"}
    w.reaper.follow()
    assert w.state.sessions == {}
    w.open("s2", populated=True)
    w.reaper.follow()
    assert list(w.watch.watched) == ["s2"]
    committed(w, "s2")
    empty(w, "s2")
    w.watch.changed = {"s2"}
    w.reaper.on_change()
    assert w.state.sessions == {}


def test_a_watch_that_fails_is_logged(caplog):
    w = world()

    def broken(paths):
        raise OSError("too many open files")
    w.watch.sync = broken
    w.reaper.follow()
    assert "watching cgroup.events" in caplog.text


# ---------- gc: entries ----------

def entry(w: World, cid: int, maps=None, **pol) -> None:
    maps = maps or w.maps
    p = Policy(ifindex=pol.pop("ifindex", 5), mark=pol.pop("mark", 0), killed=False,
               netns=pol.pop("netns", NETNS), **pol)
    w.bpf.maps.setdefault(maps.policy, {})[pack_key(cid)] = p.pack()


def test_entries_of_gone_cgroups_removed_live_ones_adopted():
    w = world()
    entry(w, 4001)                                  # its cgroup is gone
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid)                                   # runs, but the state lost it
    adopted, removed = w.gc.entries()
    assert removed == 1 and len(adopted) == 1
    s = w.state.sessions[adopted[0]]
    assert (s.iface, s.cgroup, s.owned, s.committed) == ("wg0", "system.slice/lost.service",
                                                         False, True)
    assert "wg0" in w.state.bindings
    assert pack_key(4001) not in w.bpf.maps[w.maps.policy]


def test_an_adopted_exec_cgroup_is_owned():
    w = world()
    cid = w.cgroups.add("netleak/exec-abc-123")
    entry(w, cid)
    adopted, _ = w.gc.entries()
    assert w.state.sessions[adopted[0]].owned


def test_other_namespaces_entries_are_theirs():
    w = world()
    cid = w.cgroups.add("system.slice/theirs.service")
    entry(w, cid, netns=0xBEEF)
    assert w.gc.entries() == ([], 0)
    assert w.state.sessions == {}


def test_inside_a_cgroup_namespace_only_our_gone_entries_are_judged():
    w = world()
    w.cgroups.whole_tree = False
    entry(w, 4001, netns=0xBEEF)        # maybe hidden from us: left
    entry(w, 4002)                      # ours, gone
    assert w.gc.entries() == ([], 1)
    assert pack_key(4001) in w.bpf.maps[w.maps.policy]


def test_an_entry_whose_interface_is_unknown_stays_blocked():
    w = world()
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid, ifindex=77)
    assert w.gc.entries() == ([], 0)
    assert pack_key(cid) in w.bpf.maps[w.maps.policy]


def test_a_proxy_entry_is_adopted_blocked():
    w = world()
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid, ifindex=0, proxy=True)
    adopted, _ = w.gc.entries()
    s = w.state.sessions[adopted[0]]
    assert s.block and s.iface == ""


def test_an_adopted_allow_mark_is_kept_in_range_only():
    w = world()
    cid = w.cgroups.add("system.slice/a.service")
    from netleak_hook.core.plan import session_mark
    base = session_mark(set(), w.cfg.mark_base)
    entry(w, cid, mark=base + 3, allow=("192.0.2.0/24",))
    cid2 = w.cgroups.add("system.slice/b.service")
    entry(w, cid2, mark=7, allow=("192.0.2.0/24",))
    adopted, _ = w.gc.entries()
    marks = sorted(w.state.sessions[a].mark for a in adopted)
    assert marks == [0, base + 3]


def test_entries_of_older_pin_sets_are_cleaned_not_adopted():
    w = world()
    old = w.pins.add("/pins/v0", 50, w.bpf, w.journal)
    cid = w.cgroups.add("system.slice/x.service")
    entry(w, cid, maps=old)
    entry(w, 4005, maps=old)
    assert w.gc.entries() == ([], 1)
    assert pack_key(cid) in w.bpf.maps[old.policy]


def test_stale_stats_and_redirect_counts_removed():
    w = world()
    w.bpf.maps[w.maps.stats] = {pack_key(4001): b"x"}
    w.bpf.maps[w.maps.redirect_n] = {pack_key(4001): b"x"}
    w.gc.entries()
    assert w.bpf.maps[w.maps.stats] == {} and w.bpf.maps[w.maps.redirect_n] == {}


def redirect(cgroup_id: int) -> bytes:
    raw = bytearray(REDIRECT_SIZE)
    # the cgroup id sits after the two addresses and two u32s
    raw[40:48] = cgroup_id.to_bytes(8, "little")
    return bytes(raw)


def test_redirects_of_gone_cgroups_only():
    w = world()
    live = w.cgroups.add("netleak/exec-a-1")
    w.bpf.maps[w.maps.redirect] = {b"k1" + bytes(6): redirect(live),
                                   b"k2" + bytes(6): redirect(4009)}
    assert w.gc.redirects(w.maps) == 1
    assert list(w.bpf.maps[w.maps.redirect]) == [b"k1" + bytes(6)]


# ---------- gc: cgroups and the whole pass ----------

def test_orphan_exec_cgroup_of_a_dead_creator_removed():
    w = world()
    cid = w.cgroups.add("netleak/exec-dead-4242", populated=False)
    w.cgroups.add("netleak/exec-live-4343", populated=False)
    w.cgroups.ages["netleak/exec-live-4343"] = 1.0     # its set-up is under way
    w.procs.living.add(4343)
    w.cgroups.add("netleak/daemon", populated=True)
    entry(w, cid)
    assert w.gc.sweep_orphan_cgroups() == ["exec-dead-4242"]
    assert pack_key(cid) not in w.bpf.maps[w.maps.policy]
    assert w.cgroups.exists(w.cgroups.path("netleak/exec-live-4343"))


def test_claimed_cgroup_is_never_an_orphan():
    w = world()
    w.open()
    w.cgroups.tree["netleak/exec-s1-77"][1] = False
    assert w.gc.sweep_orphan_cgroups() == []


def test_a_setup_that_takes_far_too_long_is_an_orphan_even_with_its_creator():
    w = world()
    w.cgroups.add("netleak/exec-new-4242", populated=False)
    w.procs.living.add(4242)
    w.cgroups.ages["netleak/exec-new-4242"] = lifecycle.SETUP_GRACE - 1
    assert w.gc.sweep_orphan_cgroups() == []
    w.cgroups.ages["netleak/exec-new-4242"] = lifecycle.SETUP_GRACE + 1
    assert w.gc.sweep_orphan_cgroups() == ["exec-new-4242"]


def test_relay_cgroup_left_by_a_crash_removed_when_no_relay_runs():
    w = world()
    w.cgroups.add("netleak/relay", populated=False)
    w.gc.sweep_orphan_cgroups()
    assert not w.cgroups.exists(w.relays.cgroup)


def test_gc_pass_reports_every_phase_and_attaches_missing_programs():
    w = world()
    w.open()
    s = w.state.sessions["s1"]
    entry(w, 4001)
    w.cgroups.add("netleak/exec-dead-4242", populated=False)
    w.journal.clear()
    report = w.gc.gc()
    assert report == {"reaped": [], "adopted": [], "entries_removed": 1,
                      "routes_removed": 0, "cgroups_removed": ["exec-dead-4242"], "released": [],
                      "sessions": 1}
    assert ("progs", "attach", s.cgroup) in w.journal


def test_a_failing_phase_does_not_stop_the_others(caplog):
    w = world()
    w.open()

    def boom():
        raise RuntimeError("broken map")
    w.gc.entries = boom
    report = w.gc.gc()
    assert "map entries" in caplog.text
    assert (report["adopted"], report["entries_removed"]) == ([], 0)
    assert report["sessions"] == 1


def test_adoption_is_saved():
    w = world()
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid)
    w.gc.gc()
    assert any(x.cgroup == "system.slice/lost.service"
               for x in w.store.saved[-1].sessions.values())


# ---------- the ring ----------

class Reader:
    def __init__(self, records):
        self.fd, self.recs, self.closed = -1, records, False

    def records(self):
        out, self.recs = self.recs, []
        return out

    def close(self):
        self.closed = True


def raw_event(cgroup_id: int) -> bytes:
    from netleak_hook.core import events
    raw = bytearray(events.EVENT_SIZE)
    raw[8:16] = cgroup_id.to_bytes(8, "little")
    raw[28] = 1
    return bytes(raw)


def test_ring_names_live_and_recently_ended_sessions():
    w = world()
    w.open()
    w.open("s2")
    live = w.state.sessions["s1"].cgroup_id
    ended = w.state.sessions["s2"].cgroup_id
    w.sessions.remove(w.state.sessions["s2"], "test")
    w.ring.reader = Reader([raw_event(live), raw_event(ended), raw_event(9), b"short"])
    w.ring.clock_offset = lambda: 0.0
    w.ring.drain()
    assert [e.get("session") for e in w.events.lines] == ["s1", "s2", None]


def test_ring_opens_and_closes_with_the_daemon():
    w = world()
    w.ring.open_ring = lambda maps, netns: Reader([])
    w.ring.open()
    assert w.ring.reader is not None
    w.ring.close()
    assert w.ring.reader is None and w.maps.closed_rings == [NETNS]


def test_ring_kept_registered_while_sessions_remain():
    w = world()
    w.open()
    w.ring.open_ring = lambda maps, netns: Reader([])
    w.ring.open()
    w.ring.close()
    assert w.maps.closed_rings == []


def test_no_ring_no_events_the_daemon_goes_on(caplog):
    w = world()

    def refuse(maps, netns):
        raise OSError("no rings in this pin set")
    w.ring.open_ring = refuse
    w.ring.open()
    assert w.ring.reader is None and "cannot open the event ring" in caplog.text


def test_a_full_disk_loses_events_not_the_daemon(caplog):
    w = world()
    w.events.fail = True
    w.ring.log([{"reason": "kill-switch"}])
    assert "cannot write" in caplog.text


def test_state_holder_keeps_a_bounded_memory_of_ended_sessions():
    from netleak_hook.daemon.holder import RECENT
    w = World(state=State())
    for i in range(RECENT + 5):
        w.holder.remember_ended(Session(id=f"x{i}", iface="wg0", cgroup="c", cgroup_id=i,
                                        pinset=PINS))
    assert len(w.holder.recent) == RECENT and 0 not in w.holder.recent


def test_a_cgroup_removed_between_two_reads_is_gone():
    w = world()
    w.open(populated=True)
    committed(w, "s1")
    real = w.cgroups.cgroup_id

    def vanished(path):
        raise FileNotFoundError(path)
    w.cgroups.cgroup_id = vanished
    assert w.reaper.reap() == ["s1"]
    w.cgroups.cgroup_id = real


def test_adoption_where_no_gateway_is_known_waits_for_one():
    w = World()
    w.net.link("eth1", 4, p2p=False)          # no gateway to learn
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid, ifindex=4)
    (sid,), _ = w.gc.entries()
    assert w.state.sessions[sid].iface == "eth1"
    assert w.state.bindings["eth1"].via4 is None
    w.links.reconcile_all()
    assert w.policy(cid).killed               # until a default route shows one


def test_adoption_refused_where_a_binding_cannot_be_made(caplog):
    w = World(max_interfaces=1)
    w.net.link("wg0", 5)
    w.net.link("eth1", 4, p2p=False)
    w.open()
    cid = w.cgroups.add("system.slice/lost.service")
    entry(w, cid, ifindex=4)
    assert w.gc.entries() == ([], 0)
    assert "cannot adopt /system.slice/lost.service" in caplog.text


def test_pin_sets_without_maps_or_entries_that_vanish_are_skipped():
    w = world()
    w.pins.sets["/pins/broken"] = None
    cid = w.cgroups.add("system.slice/x.service")
    entry(w, cid)
    real = w.bpf.map_lookup
    w.bpf.map_lookup = lambda fd, key, size: None      # removed meanwhile
    assert w.gc.entries() == ([], 0)
    w.bpf.map_lookup = real


def test_ring_without_maps_stays_closed():
    w = world()
    w.pins.sets.clear()
    w.ring.open()
    w.ring.close()
    assert w.ring.reader is None


def test_orphan_sweep_removes_its_stats_entry_too():
    w = world()
    cid = w.cgroups.add("netleak/exec-dead-4242", populated=False)
    w.bpf.maps[w.maps.stats] = {pack_key(cid): b"x"}
    w.gc.sweep_orphan_cgroups()
    assert w.bpf.maps[w.maps.stats] == {}


def test_inside_a_cgroup_namespace_stale_stats_are_left():
    w = world()
    w.cgroups.whole_tree = False
    w.bpf.maps[w.maps.stats] = {pack_key(4001): b"x"}
    w.bpf.maps[w.maps.redirect] = {bytes(8): redirect(4001)}
    w.gc.entries()
    assert w.bpf.maps[w.maps.stats] and w.bpf.maps[w.maps.redirect]


def test_stale_redirects_count_as_removed_entries():
    w = world()
    w.bpf.maps[w.maps.redirect] = {bytes(8): redirect(4009)}
    assert w.gc.entries() == ([], 1)


def test_the_relay_cgroup_stays_while_the_relay_runs():
    w = world()
    w.open(proxy="socks5://203.0.113.20:1080", iface="")
    w.gc.sweep_orphan_cgroups()
    assert w.cgroups.exists(w.relays.cgroup)


def test_the_ring_is_drained_as_soon_as_it_is_open():
    w = world()
    w.open()
    w.ring.open_ring = lambda maps, netns: Reader([raw_event(w.state.sessions["s1"].cgroup_id)])
    w.ring.clock_offset = lambda: 0.0
    w.ring.open()
    assert [e["session"] for e in w.events.lines] == ["s1"]


def test_gc_goes_on_when_reconciling_fails(caplog):
    w = world()
    w.open()
    w.cgroups.add("netleak/exec-dead-4242", populated=False)

    def boom():
        raise RuntimeError("netlink gone")
    w.gc.links.reconcile_all = boom
    assert w.gc.gc()["cgroups_removed"] == ["exec-dead-4242"]
    assert "'reconcile' failed" in caplog.text


def test_removal_goes_on_when_the_counters_cannot_be_read(caplog):
    w = world()
    w.open()

    def boom(cid):
        raise OSError("map gone")
    w.maps.read_stats = boom
    w.sessions.remove(w.state.sessions["s1"], "test")
    assert w.state.sessions == {} and "'read counters' failed" in caplog.text


# ---------- counter slots ----------

def test_each_session_claims_its_own_slot_named_in_its_entry_and_freed_at_reap():
    w = world()
    w.open("s1", populated=True)
    w.open("s2", populated=True)
    s1, s2 = w.state.sessions["s1"], w.state.sessions["s2"]
    assert {s1.stats_slot, s2.stats_slot} == {1, 2}
    assert w.policy(s1.cgroup_id).stats_slot == s1.stats_slot
    assert w.policy(s2.cgroup_id).stats_slot == s2.stats_slot
    committed(w, "s1")
    empty(w, "s1")
    assert w.reaper.reap() == ["s1"]
    assert set(w.bpf.maps[w.maps.slots]) == {(2).to_bytes(4, "little")}
    w.open("s3", populated=True)
    assert w.state.sessions["s3"].stats_slot == 1      # the lowest free one again


def test_a_slot_another_daemon_holds_is_skipped():
    w = world()
    w.bpf.maps[w.maps.slots] = {(1).to_bytes(4, "little"): SLOT_OWNER.pack(999, NETNS + 1)}
    w.open("s1", populated=True)
    assert w.state.sessions["s1"].stats_slot == 2


def test_no_slot_free_the_session_is_counted_by_cgroup_id():
    w = world()
    w.maps.claim_slot = lambda cgroup_id, used, netns=0: 0
    w.open("s1", populated=True)
    s = w.state.sessions["s1"]
    assert s.stats_slot == 0 and w.policy(s.cgroup_id).stats_slot == 0


def test_slots_of_gone_cgroups_nobody_claims_are_given_back():
    w = world()
    w.open("s1", populated=True)
    live = w.state.sessions["s1"]
    held = w.bpf.maps[w.maps.slots]
    held[(7).to_bytes(4, "little")] = SLOT_OWNER.pack(4001, NETNS)   # a crash's: cgroup gone
    w.gc.entries()
    assert set(held) == {live.stats_slot.to_bytes(4, "little")}


def test_another_namespaces_slots_are_its_daemons_to_give_back():
    """A pinned service of another namespace between two cgroups holds a
    slot with no cgroup: this daemon's gc leaves it."""
    w = world()
    held = w.bpf.maps.setdefault(w.maps.slots, {})
    held[(7).to_bytes(4, "little")] = SLOT_OWNER.pack(4001, NETNS + 1)
    w.gc.entries()
    assert (7).to_bytes(4, "little") in held


def test_a_slot_is_given_back_only_by_its_holder():
    w = world()
    w.open("s1", populated=True)
    s = w.state.sessions["s1"]
    key = s.stats_slot.to_bytes(4, "little")
    w.bpf.maps[w.maps.slots][key] = SLOT_OWNER.pack(4242, NETNS + 1)   # another's now
    committed(w, "s1")
    empty(w, "s1")
    assert w.reaper.reap() == ["s1"]
    assert w.bpf.maps[w.maps.slots][key] == SLOT_OWNER.pack(4242, NETNS + 1)


def test_the_counters_read_at_reap_are_the_slots_and_the_cgroup_ids(caplog):
    caplog.set_level(logging.INFO)
    w = world()
    w.open(populated=True)
    s = w.state.sessions["s1"]
    w.bpf.maps.setdefault(w.maps.counters, {})[s.stats_slot.to_bytes(4, "little")] = b"c"
    w.bpf.maps.setdefault(w.maps.stats, {})[pack_key(s.cgroup_id)] = b"c"
    committed(w, "s1")
    empty(w, "s1")
    w.reaper.reap()
    ended = [r.fields for r in caplog.records
             if getattr(r, "fields", {}).get("event") == "session-end"]
    assert [e["passed"] for e in ended] == [6]       # 3 in the slot, 3 by cgroup id
