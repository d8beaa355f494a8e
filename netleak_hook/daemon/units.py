"""Sessions as systemd units: transient scopes made for netleak-exec, and
services pinned by name across their restarts (the unit half of sessions.py)."""
from __future__ import annotations

import dataclasses

from ..core.errors import NO_SCOPE, NetleakError
from ..core.policy import pack_key
from ..core.state import Session
from .notes import note, step


def unit_name_ok(name: str) -> bool:
    """A scope's or service's name, as systemd spells them."""
    stem, dot, kind = name.rpartition(".")
    return bool(dot) and kind in ("scope", "service") and 0 < len(name) <= 255 and all(
        c.isascii() and (c.isalnum() or c in ":-_.\\@") for c in stem)


DROPIN_HEAD = "# netleak: this service is pinned by name"


def dropin(command: list[str]) -> str:
    """The drop-in that pins a service again before each start; COMMAND's
    last word is a specifier (%n), the others are quoted for systemd."""
    words = [systemd_quoted(w) for w in command[:-1]] + command[-1:]
    return (f"{DROPIN_HEAD} (netleak attach --unit): each start\n"
            "# puts its cgroup under control before ExecStart= runs; netleak detach\n"
            "# removes this file\n[Service]\nExecStartPre=+" + " ".join(words) + "\n")


def systemd_quoted(word: str) -> str:
    """WORD as one argument of a unit file's command line: no specifier or
    variable expanded, no split at a space."""
    inner = word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace(
        "$", "$$")
    return inner if inner == word and word and all(
        c.isalnum() or c in "/-_.:,+=@" for c in word) else f'"{inner}"'


def scope_name(sid: str) -> str:
    """The transient scope of session SID."""
    if not (sid.isascii() and sid.isalnum() and len(sid) <= 64):
        raise NetleakError(f"bad session id {sid!r}")
    return f"netleak-{sid}.scope"


class UnitSessions:
    """What Sessions does for units (it holds the state, links, pins, units)."""

    def attach_command(self, s: Session) -> list[str]:
        """The `netleak attach` that pins S's unit again, as given."""
        cli = self.netleak_cli
        if not cli:
            return []
        argv = [cli, "attach"]
        if s.block:
            argv.append("--block")
        else:
            argv.append(s.iface)
            b = self.state.bindings.get(s.iface)
            for via, given in ((b.via4, b.user_via4), (b.via6, b.user_via6)) if b else ():
                if via and given:
                    argv += ["--via", via]
        for d in s.dns if s.dns_from == "user" else ():
            argv += ["--dns", d]
        for a in s.allow:
            argv += ["--allow", a]
        for a in s.deny:
            argv += ["--deny", a]
        return argv + ["--unit", "%n"]

    def pinned(self, unit: str) -> Session | None:
        for o in self.state.sessions.values():
            if o.pinned and o.unit == unit:
                return o
        return None

    def pin_from_start(self, s: Session) -> str:
        """For a service pinned by name: the drop-in whose ExecStartPre=
        pins each start before ExecStart=; what kept it from being written,
        or ""."""
        if not (s.pinned and self.units is not None and s.unit.endswith(".service")):
            return ""
        command = self.attach_command(s)
        why = "" if command else "no netleak command found for its ExecStartPre="
        if command:
            try:
                self.units.write_dropin(s.unit, dropin(command))
            except Exception as e:
                why = str(e)
        if why:
            note("dropin-failed", "%s: no drop-in (%s)", s.unit, why, level=30,
                 unit=s.unit, error=why)
            return (f"{s.unit} is pinned, but without its drop-in ({why}): each new start "
                    f"is pinned again within a quarter second, not before ExecStart=")
        return ""

    def _pin_again(self, o: Session, s: Session, spec) -> dict:
        """An attach of a unit pinned already: the same terms, its cgroup now."""
        same = (o.iface, o.block, o.allow, o.deny, o.proxy) == \
            (s.iface, s.block, s.allow, s.deny, s.proxy) \
            and (not s.dns or s.dns == o.dns)
        if not same:
            raise NetleakError(f"{o.unit} is pinned already (session {o.id} on {o.what}): "
                               f"netleak detach --unit {o.unit} first")
        if (s.cgroup_id, s.cgroup) != (o.cgroup_id, o.cgroup):
            o = self.repin(o, s.cgroup_id, s.cgroup)
        return self._opened(o, spec, self.state.bindings.get(o.iface) if o.iface else None)

    def repin(self, s: Session, cgroup_id: int, cgroup: str | None = None) -> Session:
        """A pinned unit's new cgroup (it restarted; CGROUP: its path, if it
        moved): its entry written for the new cgroup first, its programs
        attached, the old entries gone."""
        new = dataclasses.replace(s, cgroup_id=cgroup_id, cgroup=cgroup or s.cgroup,
                                  committed=True)
        maps = self.pins.maps_for(s.pinset)
        if maps is not None and s.stats_slot:
            # its counters go on in its slot, which its new cgroup holds now
            # (unless it was given back meanwhile: counted by cgroup id then)
            moved = step("counters slot", maps.move_slot, s.stats_slot, s.cgroup_id,
                         cgroup_id, self.holder.netns)
            if not moved:
                new = dataclasses.replace(new, stats_slot=0)
        self.holder.state = self.state.with_session(new)
        self.holder.save()
        links = self.links
        if new.iface and new.iface not in links.live:
            links.reconcile_all()
        links.write_policy(new, links.live[new.iface] if new.iface else links.block_policy())
        progs = self.pins.progs_for(new.pinset)
        if progs is not None:
            progs.attach(self.cgroups.path(new.cgroup))
        if maps is not None:
            for fd in (maps.policy, maps.stats):
                step("old entry", self.bpf.map_delete, fd, pack_key(s.cgroup_id))
        note("unit-repinned", "session %s: %s has a new cgroup (id %d): pinned again",
             s.id, s.unit, cgroup_id, session=s.id, unit=s.unit, cgroup_id=cgroup_id,
             old_cgroup_id=s.cgroup_id)
        return new

    def _in_new_scope(self, msg: dict) -> dict:
        """MSG for the transient scope systemd makes for its requester (a
        netleak-exec in a cgroup it shares); the requester is moved in now,
        and runs nothing before the reply."""
        pid = int(msg.get("peer_pid") or 0)
        if self.units is None or pid <= 0:
            raise NetleakError(f"{NO_SCOPE} (it runs where /run/systemd/system is not)")
        name = scope_name(str(msg["id"]))
        rel = self.units.start_scope(name, pid, f"netleak-exec session {msg['id']}")
        return dict(msg, cgroup=rel, cgroup_id=self.cgroups.cgroup_id(self.cgroups.path(rel)),
                    owned=False, unit=name, join=False)
