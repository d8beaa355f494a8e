"""The reaper: follows each session's cgroup (cgroup.events), ends the
sessions whose cgroup is empty or gone, commits set-ups whose cgroup holds
their workload."""
from __future__ import annotations

import dataclasses

from ..core import lifecycle
from .notes import log


class Reaper:
    def __init__(self, holder, sessions, cgroups, watch, procs, clock) -> None:
        self.holder = holder
        self.sessions = sessions
        self.cgroups = cgroups
        self.watch = watch          # cgroup.events of every session (kernel/cgroupwatch.py)
        self.procs = procs
        self.clock = clock

    def follow(self) -> None:
        """Watch exactly the sessions there are; reap the newly watched ones
        whose change came before the watch."""
        try:
            missed = self.watch.sync({sid: self.cgroups.path(s.cgroup)
                                      for sid, s in self.holder.state.sessions.items()})
            if missed:
                self.reap(missed)
        except Exception:
            log.exception("watching cgroup.events")   # the full pass still reaps

    def on_change(self) -> None:
        self.reap(self.watch.drain())

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
            elif lifecycle.should_reap(s, populated, self.procs.alive(s.pid), now):
                self.sessions.remove(s, lifecycle.reap_cause(s, populated))
                ended.append(s.id)
        if ended or changed:
            self.holder.save()
        return ended
