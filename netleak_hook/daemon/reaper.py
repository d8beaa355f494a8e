"""The reaper: follows each session's cgroup (cgroup.events), ends the
sessions whose cgroup is empty or gone, commits set-ups whose cgroup holds
their workload."""
from __future__ import annotations

import dataclasses

from ..core import lifecycle
from .notes import log


class Reaper:
    def __init__(self, holder, sessions, cgroups, watch, procs, clock, units=None) -> None:
        self.holder = holder
        self.sessions = sessions
        self.cgroups = cgroups
        self.watch = watch          # cgroup.events of every session (kernel/cgroupwatch.py)
        self.procs = procs
        self.clock = clock
        self.units = units          # systemd, for pinned units (None without it)

    def unit_gone(self, unit: str) -> bool:
        """A pinned unit systemd no longer knows (its cgroup gone meanwhile);
        when systemd cannot say, it is kept (asked again at the next pass)."""
        if self.units is None:
            return False
        try:
            return not self.units.loaded(unit)
        except Exception as e:
            log.warning("cannot tell whether %s is still there: %s", unit, e)
            return False

    def follow(self) -> None:
        """Watch exactly the sessions there are; reap the newly watched ones
        whose change came before the watch."""
        try:
            sessions = self.holder.state.sessions
            missed = self.watch.sync({sid: self.cgroups.path(s.cgroup)
                                      for sid, s in sessions.items()})
            # a stopped pinned unit has no cgroup to watch: whether systemd
            # still knows it is asked in the periodic pass, not each turn
            missed = {sid for sid in missed if sid in sessions and not sessions[sid].pinned}
            if missed:
                self.reap(missed)
        except Exception:
            log.exception("watching cgroup.events")   # the full pass still reaps

    def on_change(self) -> None:
        self.reap(self.watch.drain())

    def follow_pinned(self) -> None:
        """Units pinned by name: a new cgroup of theirs (a restart) is
        pinned again at once; each turn of the loop looks (a stat each)."""
        for s in list(self.holder.state.sessions.values()):
            if not s.pinned:
                continue
            found = self.cgroups.stat(self.cgroups.path(s.cgroup))
            if found is not None and found[0] != s.cgroup_id:
                try:
                    self.sessions.repin(s, found[0])
                except Exception:
                    log.exception("pinning %s again", s.unit)

    def populated(self, s) -> bool | None:
        """Whether S's cgroup holds processes; None when it is gone (or its
        path now names another cgroup)."""
        path = self.cgroups.path(s.cgroup)
        populated = self.cgroups.populated(path)
        if populated is not None:
            try:
                if self.cgroups.cgroup_id(path) != s.cgroup_id:
                    populated = None   # same path, another cgroup: ours is gone
            except FileNotFoundError:
                populated = None
        return populated

    def reap(self, only: set[str] | None = None) -> list[str]:
        """End sessions (all, or ONLY these) whose cgroup is empty or gone,
        and commit set-ups whose cgroup holds their workload; returns the
        ids of the ended ones."""
        now = self.clock()
        ended, changed = [], False
        for s in list(self.holder.state.sessions.values()):
            if only is not None and s.id not in only:
                continue
            populated = self.populated(s)
            if populated and not s.committed:
                # the workload is in: a set-up a crash interrupted is complete
                self.holder.state = self.holder.state.with_session(
                    dataclasses.replace(s, committed=True))
                changed = True
            elif s.pinned and populated is None and self.unit_gone(s.unit):
                self.sessions.remove(s, "unit-gone")
                ended.append(s.id)
            elif lifecycle.should_reap(s, populated, self.procs.alive(s.pid), now):
                self.sessions.remove(s, lifecycle.reap_cause(s, populated))
                ended.append(s.id)
        if ended or changed:
            self.holder.save()
        return ended
