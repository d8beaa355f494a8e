"""Garbage collection: what a crash or a reboot left (orphan cgroups, stale
map entries and routes, programs missing from a set-up), and adoption of
controlled cgroups the state file lost."""
from __future__ import annotations

import json
import os

from ..core import lifecycle, plan
from ..core.errors import NetleakError
from ..core.lifecycle import new_session_id
from ..core.policy import (KEY_SIZE, POLICY_SIZE, SLOT_KEY_SIZE, SLOT_OWNER, Policy,
                           pack_key, unpack_key)
from ..core.state import Session
from ..proxymode.relay import REDIRECT_SIZE, unpack_redirect
from .notes import log, note, step


class Collector:
    def __init__(self, cfg, holder, reaper, links, relays, cgroups, bpf, pins, procs,
                 clock, parent: str) -> None:
        self.cfg = cfg
        self.holder = holder
        self.reaper = reaper
        self.links = links
        self.relays = relays
        self.cgroups = cgroups
        self.bpf = bpf
        self.pins = pins
        self.procs = procs
        self.clock = clock
        self.parent = parent            # the cgroup parent's path
        self.unreported: dict = {}      # the start-up pass's report, until someone asks

    @property
    def state(self):
        return self.holder.state

    def report(self) -> dict:
        """A gc request's answer: a pass now, with what the start-up pass
        collected (a gc request is often what started this daemon)."""
        report = lifecycle.merge_reports(self.unreported, self.gc())
        self.unreported = {}
        return report

    def gc(self) -> dict:
        """One pass over everything a crash or a reboot can leave: sessions
        whose cgroup is empty or gone, half-done set-ups, orphan cgroups, map
        entries of cgroups that no longer exist (or adopted, when the state
        file lost them but their cgroup still runs), rules and routes of
        interfaces no session uses. Each phase runs even if another fails."""
        report: dict = {"reaped": step("reap", self.reaper.reap) or []}
        # set-ups no session uses, lingering or left by a crash, go now
        report["released"] = step("unused set-ups", self.links.release_unused) or []
        if report["released"]:
            self.holder.save()
        step("attach programs", self.ensure_attached)
        report["adopted"], report["entries_removed"] = \
            step("map entries", self.entries) or ([], 0)
        if report["adopted"]:
            self.holder.save()
        step("reconcile", self.links.reconcile_all)  # rules: only bound interfaces' stay
        report["routes_removed"] = step("routes", self.links.gc_routes) or 0
        report["cgroups_removed"] = step("orphan cgroups", self.sweep_orphan_cgroups) or []
        report["sessions"] = len(self.state.sessions)
        note("gc", "gc: %s", json.dumps(report, sort_keys=True),
             reaped=len(report["reaped"]), adopted=len(report["adopted"] or []),
             entries_removed=report["entries_removed"], routes_removed=report["routes_removed"],
             cgroups_removed=len(report["cgroups_removed"]), sessions=report["sessions"])
        return report

    def ensure_attached(self) -> None:
        """A set-up a crash interrupted may lack its programs: attach them
        (attaching what is attached already is a no-op)."""
        for s in self.state.sessions.values():
            progs = self.pins.progs_for(s.pinset)
            if progs is not None:
                step(f"attach to {s.cgroup}", progs.attach, self.cgroups.path(s.cgroup))

    def sweep_orphan_cgroups(self) -> list[str]:
        """Remove exec cgroups no session claims and nobody will: their
        netleak-exec died before handing them over (and the relay's, when
        no relay runs: a crash left it)."""
        if self.relays.relay is None:
            step("relay cgroup", self.relays.remove_cgroup)
        parent = self.cfg.cgroup_parent.strip("/")
        claimed = {os.path.basename(s.cgroup) for s in self.state.sessions.values()
                   if os.path.dirname(s.cgroup) == parent}
        removed = []
        names = self.cgroups.names(self.parent)
        now = self.clock()
        for name in names:
            creator = lifecycle.exec_cgroup_creator(name)
            path = os.path.join(self.parent, name)
            found = self.cgroups.stat(path) if creator is not None else None
            if found is None:
                continue
            cid, mtime = found
            if lifecycle.orphan_cgroup_removable(name, name in claimed,
                                                 self.cgroups.populated(path),
                                                 self.procs.alive(creator), now - mtime):
                if step(f"remove orphan cgroup {name}", self.cgroups.remove_tree, path):
                    removed.append(name)
                    # a daemon that crashed mid-set-up may have written its entry
                    key = pack_key(cid)
                    for pinset in self.pins.listed():
                        maps = self.pins.maps_for(pinset)
                        if maps is not None:
                            self.bpf.map_delete(maps.policy, key)
                            self.bpf.map_delete(maps.stats, key)
        if removed:
            note("orphans-removed", "removed orphan cgroups: %s", " ".join(sorted(removed)),
                 cgroups=" ".join(sorted(removed)))
            self.cgroups.remove_if_empty(self.parent)
        return removed

    def _unclaimed(self, map_fd: int, claimed: set[int]):
        """(key, cgroup id, its path or None when gone) of entries no session
        claims. Keys are read before the tree is walked, so a cgroup made
        meanwhile is found, never taken for gone."""
        keys = [k for k in self.bpf.map_keys(map_fd, KEY_SIZE) if unpack_key(k) not in claimed]
        ids = self.cgroups.index_ids() if keys else {}
        for key in keys:
            cid = unpack_key(key)
            yield key, cid, ids.get(cid)

    def entries(self) -> tuple[list[str], int]:
        """Map entries no session claims: removed when their cgroup is gone,
        adopted when it still runs; returns (adopted ids, entries removed)."""
        claimed = {s.cgroup_id for s in self.state.sessions.values()}
        whole_tree = self.cgroups.sees_whole_tree()
        adopted, removed = [], 0
        for pinset in self.pins.listed():
            maps = self.pins.maps_for(pinset)
            if maps is None:
                continue
            for key, cid, rel in self._unclaimed(maps.policy, claimed):
                raw = self.bpf.map_lookup(maps.policy, key, POLICY_SIZE)
                if raw is None:
                    continue
                pol = Policy.unpack(raw)
                if rel is None:         # the cgroup is gone: so is the need
                    # (from inside a cgroup namespace part of the tree is
                    # hidden: only this namespace's own entries are judged)
                    if whole_tree or pol.netns == self.holder.netns:
                        step("stale policy entry", self.bpf.map_delete, maps.policy, key)
                        removed += 1
                    continue
                if pinset != self.pins.path:
                    continue
                sid = self.adopt(cid, rel, pol)
                if sid:
                    adopted.append(sid)
                    claimed.add(cid)
            for key, _, rel in self._unclaimed(maps.stats, claimed):
                if rel is None and whole_tree:
                    step("stale stats entry", self.bpf.map_delete, maps.stats, key)
            if maps.slots >= 0 and whole_tree:
                step("stale counter slots", self.slots, maps, claimed)
            if maps.redirect_n >= 0:
                for key, _, rel in self._unclaimed(maps.redirect_n, claimed):
                    if rel is None and whole_tree:
                        step("stale redirect count", self.bpf.map_delete, maps.redirect_n, key)
            if maps.redirect >= 0 and whole_tree:
                removed += step("stale redirects", self.redirects, maps) or 0
        return adopted, removed

    def redirects(self, maps) -> int:
        """Entries of sockets that outlived their session's cgroup (the
        release program removes the others as their sockets close). Only
        those: the map is every namespace's, and another daemon's sessions
        are not this one's to judge."""
        keys = self.bpf.map_keys(maps.redirect, 8)
        if not keys:
            return 0
        alive = self.cgroups.index_ids()
        stale = 0
        for key in keys:
            raw = self.bpf.map_lookup(maps.redirect, key, REDIRECT_SIZE)
            if raw is not None and unpack_redirect(raw).cgroup not in alive:
                self.bpf.map_delete(maps.redirect, key)
                stale += 1
        return stale

    def slots(self, maps, claimed: set[int]) -> int:
        """Give back this namespace's counter slots held by cgroups that are
        gone and no session of this daemon claims (a daemon that crashed
        between the claim and its record). Other namespaces' are their
        daemons' to give back (a pinned service between two cgroups holds
        one with no cgroup)."""
        here = self.holder.netns
        owners = {}
        for key in self.bpf.map_keys(maps.slots, SLOT_KEY_SIZE):
            raw = self.bpf.map_lookup(maps.slots, key, SLOT_OWNER.size)
            if raw is not None:
                owners[key] = SLOT_OWNER.unpack(raw)
        mine = {k: cid for k, (cid, netns) in owners.items()
                if netns == here and cid not in claimed}
        if not mine:
            return 0
        alive = self.cgroups.index_ids()    # after the owners were read: a claim
        stale = 0                           # made since names a cgroup in it
        for key, cid in mine.items():
            if cid not in alive:
                self.bpf.map_delete(maps.slots, key)
                stale += 1
        return stale

    def adopt(self, cid: int, rel: str, pol: Policy) -> str | None:
        """Take back a controlled cgroup the state file does not know (it was
        lost while the cgroup ran): its entry names the interface by index.
        Entries of other network namespaces belong to their own daemon."""
        if not pol.netns or pol.netns != self.holder.netns or not (
                pol.ifindex or pol.block or pol.proxy):
            return None
        iface, binding = "", None
        # a proxy-mode entry does not hold its proxy: no network, fail closed
        block = pol.block or pol.proxy
        if not block:
            iface = self.links.net.link_names().get(pol.ifindex) or ""
            if not iface:
                return None     # the entry keeps the cgroup blocked: fail closed
            try:
                binding = self.links.binding_for(iface, None, None)
            except NetleakError as e:
                log.warning("cannot adopt /%s: %s", rel, e)
                return None
        parent = self.cfg.cgroup_parent.strip("/")
        owned = os.path.dirname(rel) == parent and \
            lifecycle.exec_cgroup_creator(os.path.basename(rel)) is not None
        # what the session had of its own is in its entry
        s = Session(id=new_session_id(), iface=iface, cgroup=rel, cgroup_id=cid,
                    pinset=self.pins.path, owned=owned, created=self.clock(),
                    committed=bool(self.cgroups.populated(self.cgroups.path(rel))),
                    block=block, dns=pol.dns, dns_from="user" if pol.dns else "",
                    allow=pol.allow, deny=pol.deny, stats_slot=pol.stats_slot,
                    mark=pol.mark if binding and pol.allow and
                    plan.session_mark(set(), self.cfg.mark_base) <= pol.mark <=
                    self.cfg.mark_base + 0xFFFF else 0)
        if binding is not None:
            self.holder.state = self.state.with_binding(binding)
        self.holder.state = self.state.with_session(s)
        log.info("adopted /%s on %s as session %s", rel, iface, s.id)
        return s.id
