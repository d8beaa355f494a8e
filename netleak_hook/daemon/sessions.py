"""Sessions: opening one (write-ahead, then the kernel), detaching, aborting,
and removing one step by step."""
from __future__ import annotations

import dataclasses
import ipaddress
import os

from ..core import plan, proxyspec, validate
from ..core.errors import NetleakError
from ..core.policy import POLICY_SIZE, Stats, pack_key
from ..core.state import Session, lingers_after, policy_for, unused_fate
from .notes import log, note, step
from .units import UnitSessions, unit_name_ok


def requested_session(msg: dict, pinset: str, now: float) -> tuple[Session, object]:
    """The session an open request asks for, checked (no kernel), and its
    proxy spec (or None)."""
    block = bool(msg.get("block"))
    iface = "" if block else str(msg["iface"])
    dns = validate.dns_servers(list(msg.get("dns") or ()))
    allow = validate.allow_rules(list(msg.get("allow") or ()))
    deny = validate.deny_rules(list(msg.get("deny") or ()))
    validate.guards(dns, allow, block, deny)
    spec = proxyspec.parse(str(msg["proxy"])) if msg.get("proxy") else None
    if spec is not None and block:
        raise NetleakError("--proxy and --block exclude each other: choose one")
    if spec is not None and dns:
        raise NetleakError("resolvers (--dns, io.netleak.dns) have no use in proxy "
                           "mode: its DNS is answered by netleak or refused")
    if not (iface or block or spec):
        raise NetleakError("no interface given (nor --block, nor --proxy)")
    owned = bool(msg.get("owned", True))
    unit = str(msg.get("unit") or "")
    if unit and (owned or not unit_name_ok(unit)):
        raise NetleakError(f"not a unit name: {unit!r}")
    pinned = bool(msg.get("pinned")) and bool(unit)
    # the requester as the kernel names it (SO_PEERCRED), not as it says:
    # it is the process netleak-exec moves into the cgroup
    s = Session(id=str(msg["id"]), iface=iface, cgroup=str(msg["cgroup"]).strip("/"),
                cgroup_id=int(msg["cgroup_id"]), pinset=pinset, owned=owned,
                pid=int(msg.get("peer_pid") or 0), created=now,
                container=str(msg.get("container") or ""), block=block, dns=dns,
                dns_from="user" if dns else "", allow=allow, deny=deny, unit=unit,
                pinned=pinned)
    return s, spec


class Sessions(UnitSessions):
    def __init__(self, cfg, holder, links, relays, cgroups, bpf, pins, procs, clock,
                 resolvers, here_netns, units=None, netleak_cli: str = "") -> None:
        self.cfg = cfg
        self.holder = holder
        self.links = links
        self.relays = relays
        self.cgroups = cgroups
        self.bpf = bpf
        self.pins = pins
        self.procs = procs
        self.clock = clock
        self.resolvers = resolvers          # ifindex -> the servers the interface announces
        self.here_netns = here_netns        # () -> this namespace's inode
        self.units = units                  # systemd (kernel/systemd.py), None without it
        self.netleak_cli = netleak_cli       # the netleak command, for a unit's drop-in

    @property
    def state(self):
        return self.holder.state

    def open(self, msg: dict) -> dict:
        """Put a cgroup under control: bind the interface (if new), write the
        policy, attach the programs; for netleak-exec, move the requester in.

        The session is recorded before any kernel change (write-ahead), so a
        crash at any point leaves a record the next daemon finishes (the
        cgroup holds the workload) or rolls back (it does not).
        """
        made = bool(msg.get("scope"))
        if made:        # checked first: no scope for a request that is refused
            requested_session(dict(msg, cgroup="", cgroup_id=0, owned=False), "", 0.0)
            msg = self._in_new_scope(msg)
        s, spec = requested_session(msg, self.pins.path, self.clock())
        iface, owned = s.iface, s.owned
        if spec is not None:
            s = dataclasses.replace(s, proxy=spec.url(secret=True),
                                    proxy_addr=self.proxy_address(spec, iface,
                                                                  msg.get("proxy_addr")))
            self.relays.ensure()
        path = self.cgroups.path(s.cgroup)
        again = self.pinned(s.unit) if s.pinned else None
        if not owned and not made and not (again and again.cgroup_id == s.cgroup_id):
            self.check_attachable(s, again)
        try:
            if self.cgroups.cgroup_id(path) != s.cgroup_id:
                raise FileNotFoundError
        except FileNotFoundError:
            raise NetleakError(f"cgroup {s.cgroup} changed or vanished while being set "
                               f"up: retry") from None
        if again is not None:           # its ExecStartPre= on each start
            return self._pin_again(again, s, spec)
        changed = False
        binding = None if not iface else self.links.binding_for(iface, msg.get("via4"),
                                                                 msg.get("via6"))
        if binding is not None:
            s = self.own_guards(s, binding)
            # routes and rules of a known, unchanged binding are in place and
            # followed by events: only this session's entry (and rules of
            # its own) are new
            changed = binding != self.state.bindings.get(iface) or iface not in self.links.live
            self.holder.state = self.state.with_binding(binding)
        s = self.with_stats_slot(s)
        self.holder.state = self.state.with_session(s)
        self.holder.save()
        try:
            s = self._enforce(s, path, binding, changed, msg)
        except BaseException:
            self.remove(s, "setup-failed")
            self.holder.save()
            raise
        warning = self.pin_from_start(s)
        # the commit is saved after the reply: a crash before that leaves an
        # uncommitted record whose populated cgroup the next daemon commits
        self.holder.save_later()
        reply = self._opened(s, spec, binding)
        return dict(reply, warning=warning) if warning else reply

    def _enforce(self, s: Session, path: str, binding, changed: bool, msg: dict) -> Session:
        """The kernel side of a recorded session: entries, routes and rules,
        programs, then the requester moved in."""
        links = self.links
        if binding is None:
            links.write_policies("", links.block_policy())
        elif changed:
            links.reconcile_all()
        else:
            if s.mark:
                links.apply_rules(links.read_links())
            # the other sessions' entries are kept by events: only this
            # one is new (a start costs the same with 1 or 1,000 running)
            links.write_policy(s, links.live[s.iface])
        maps = self.pins.maps_for(s.pinset)
        progs = self.pins.progs_for(s.pinset)
        if maps is None or progs is None:
            raise NetleakError(f"pinned programs missing in {s.pinset}: retry")
        progs.attach(path)
        if msg.get("join") and s.pid:
            # move the requester in only now that the cgroup is protected
            self.cgroups.join(path, s.pid)
        if msg.get("join") or self.cgroups.populated(path):
            s = dataclasses.replace(s, committed=True)
            self.holder.state = self.state.with_session(s)
        return s

    def _opened(self, s: Session, spec, binding) -> dict:
        links = self.links
        pol = policy_for(s, links.live[s.iface] if binding else links.block_policy(),
                         self.relays.ports())
        mark, table = pol.mark, binding.table if binding else None
        # "interface" or "gateway" while the kill switch waits for one
        # (the binding as the set-up left it: it may have learned a gateway)
        waiting = plan.waiting_for(self.state.bindings[s.iface],
                                   links.net.read_link(s.iface)) \
            if binding is not None and pol.killed else None
        note("session-open", "session %s: %s %s on %s (mark %#x, table %s)", s.id,
             "made" if s.exec_session else "attached", s.cgroup, s.what, mark, table,
             session=s.id, iface=s.iface or None, cgroup="/" + s.cgroup,
             container=s.container or None,
             kind="exec" if s.exec_session else ("hook" if s.container else "attach"),
             unit=s.unit or None,
             killed=pol.killed, waiting=waiting, block=s.block or None,
             dns=",".join(s.dns) or None,
             dns_from=s.dns_from or None, allow=",".join(s.allow) or None,
             deny=",".join(s.deny) or None, proxy=spec.url() if spec else None)
        return {"ok": True, "id": s.id, "cgroup": s.cgroup, "mark": mark, "table": table,
                "ifindex": pol.ifindex, "killed": pol.killed, "waiting": waiting,
                "block": s.block,
                "dns": list(s.dns), "dns_from": s.dns_from, "allow": list(s.allow),
                "deny": list(s.deny), "proxy": spec.url() if spec else None, "proxy_addr": s.proxy_addr or None}

    def with_stats_slot(self, s: Session) -> Session:
        """S with a slot of its pin set's map `counters` claimed for it
        (none free: it is counted by cgroup id, as exactly, only slower).
        Claimed before the record is saved, so the record names it."""
        maps = self.pins.maps_for(s.pinset)
        if maps is None:
            return s
        used = {o.stats_slot for o in self.state.sessions.values() if o.pinset == s.pinset}
        slot = maps.claim_slot(s.cgroup_id, used, self.holder.netns)
        return dataclasses.replace(s, stats_slot=slot) if slot else s

    def own_guards(self, s: Session, binding: plan.Binding) -> Session:
        """S with the interface's resolvers when it was given none, and a
        mark of its own when it has --allow rules (they need routing rules
        of their own)."""
        if not s.dns:
            # the ifindex the events keep current; read only for a new binding
            index = self.links.current_index(binding.iface)
            found = self.resolvers(index) if index else ()
            if found:
                s = dataclasses.replace(s, dns=found, dns_from="interface")
        if s.allow:
            if self.cfg.rule_priority < 2:
                raise NetleakError("--allow needs the rule priority before "
                                   "NETLEAK_RULE_PRIORITY, which is 1: raise it")
            used = {o.mark for o in self.state.sessions.values() if o.mark}
            mark = plan.session_mark(used, self.cfg.mark_base)
            if mark is None:
                raise NetleakError("every session mark is in use: end sessions with "
                                   "--allow first")
            s = dataclasses.replace(s, mark=mark)
        return s

    def proxy_address(self, spec, iface: str, given=None) -> str:
        """The proxy's address: as the requester looked it up, or looked up
        now (by this machine's resolver, outside the session)."""
        try:
            addr = str(ipaddress.ip_address(str(given)))
        except ValueError:
            addr = proxyspec.resolve(spec)
        if iface and proxyspec.is_local(addr):
            raise NetleakError(
                f"the proxy {spec.url()} is on this machine, so {iface} carries none of "
                f"its traffic: drop {iface}, or run the proxy itself under "
                f"netleak-exec {iface}")
        return addr

    def check_attachable(self, s: Session, pinned: Session | None = None) -> None:
        """Refusals for a cgroup the user names (netleak-exec makes its own);
        PINNED: the session of the unit pinned by name whose new cgroup S is."""
        for other in self.state.sessions.values():
            if other.cgroup_id == s.cgroup_id and other is not pinned:
                raise NetleakError(
                    f"cgroup /{s.cgroup} is already under netleak control (session "
                    f"{other.id} on {other.what}): detach it first")
        key = pack_key(s.cgroup_id)
        for pinset in self.pins.listed():
            maps = self.pins.maps_for(pinset)
            if maps is not None and self.bpf.map_lookup(maps.policy, key, POLICY_SIZE):
                raise NetleakError(
                    f"cgroup /{s.cgroup} is under the control of another netleak daemon "
                    f"(of another network namespace): detach it there first")
        mine = self.cgroups.of_pid(self.procs.own_pid())
        problem = plan.attach_refusal(s.cgroup, mine) or plan.delegation_refusal(
            s.cgroup, self.cgroups.delegated(plan.ancestors(s.cgroup)))
        if problem:
            raise NetleakError(problem)
        here = self.here_netns()
        for pid in self.cgroups.tree_procs(self.cgroups.path(s.cgroup)):
            ns = self.procs.netns_of(pid)
            if ns is not None and ns != here:   # None: gone meanwhile
                raise NetleakError(
                    f"process {pid} in /{s.cgroup} lives in another network "
                    f"namespace: netleak controls processes of its own namespace "
                    f"only; run netleak there")

    def detach(self, msg: dict) -> dict:
        """Release a cgroup attached with `netleak attach`."""
        sid, rel = msg.get("id"), str(msg.get("cgroup") or "").strip("/")
        unit = msg.get("unit")      # a pinned service is found by name, even stopped
        found = [s for s in self.state.sessions.values()
                 if s.id == sid or (rel and s.cgroup == rel) or (unit and s.unit == unit)]
        if not found:
            what = f"session {sid}" if sid else f"cgroup /{rel}" if rel else f"unit {unit}"
            raise NetleakError(f"{what} is not under netleak control: see 'netleak status'")
        s = found[0]
        if s.exec_session:
            raise NetleakError(
                f"session {s.id} was started by netleak-exec and ends with its "
                f"processes: stop them instead (PIDs in "
                f"{self.cgroups.path(s.cgroup)}/cgroup.procs)")
        warning = ""
        if s.pinned and self.units is not None:
            try:        # first, so a failure is told (remove() only logs it)
                self.units.remove_dropin(s.unit)
            except Exception as e:
                warning = (f"the drop-in of {s.unit} may still pin its next start ({e}): "
                           f"remove {s.unit}.d/netleak.conf under /run/systemd/system and "
                           f"run 'systemctl daemon-reload'")
        self.remove(s, "detached")
        self.holder.save()
        reply = {"ok": True, "id": s.id, "cgroup": s.cgroup, "iface": s.iface}
        return dict(reply, warning=warning) if warning else reply

    def abort(self, msg: dict) -> dict:
        """A requester gives up its set-up (netleak-exec failed after open)."""
        s = self.state.sessions.get(msg.get("id", ""))
        if s:
            self.remove(s, "aborted")
            self.holder.save()
        return {"ok": True}

    def remove(self, s: Session, cause: str) -> None:
        """Undo one session, step by step; each step tolerates 'already gone'.
        Programs are detached only from cgroups the user attached (netleak's
        own go with their cgroup)."""
        path = self.cgroups.path(s.cgroup)
        progs = self.pins.progs_for(s.pinset)
        if not s.owned and progs is not None and self.cgroups.exists(path):
            step(f"detach {s.cgroup}", progs.detach, path)
        maps = self.pins.maps_for(s.pinset)
        stats = Stats()
        if maps is not None:
            key = pack_key(s.cgroup_id)
            stats = step("read counters", maps.read_stats, s.cgroup_id, s.stats_slot) or stats
            step("policy entry", self.bpf.map_delete, maps.policy, key)
            step("stats entry", self.bpf.map_delete, maps.stats, key)
            # after the entry that names it: the next claim zeroes it
            step("counters slot", maps.release_slot, s.stats_slot, s.cgroup_id,
                 self.holder.netns)
            if maps.redirect_n >= 0:    # its sockets' entries went with them
                step("redirect count", self.bpf.map_delete, maps.redirect_n, key)
        self.relays.forget(s.cgroup_id)
        if s.pinned and self.units is not None:
            step(f"drop-in of {s.unit}", self.units.remove_dropin, s.unit)
        if s.owned:
            if step(f"remove cgroup {s.cgroup}", self.cgroups.remove_tree, path) is False:
                log.warning("cgroup %s not removed (busy)", s.cgroup)
            self.cgroups.remove_if_empty(os.path.dirname(path))
        self.holder.state = self.state.without_session(s.id)
        self.holder.remember_ended(s)
        note("session-end", "session %s ended (%s): %s", s.id, s.cgroup, cause, session=s.id,
             iface=s.iface, cgroup="/" + s.cgroup, container=s.container or None, cause=cause,
             age=round(max(0.0, self.clock() - s.created), 3), passed=stats.passed_packets,
             dropped=stats.dropped, suppressed=stats.events_suppressed)
        if s.proxy:
            self.relays.close_if_unused()
        released = self.settle_unused(s.iface if lingers_after(cause) else "")
        if s.mark and s.iface not in released:
            step("rules of its own", lambda: self.links.apply_rules(self.links.read_links()))

    def settle_unused(self, starting: str = "") -> list[str]:
        """Bindings no session uses: STARTING (the interface whose last
        session just ended by itself) lingers, for the next session on it to
        find its rules and routes in place; those whose linger is over, and
        any other, are released. Returns the released ones."""
        keep, release = unused_fate(self.state, self.clock(), self.cfg.linger_seconds,
                                    starting)
        fresh = [i for i in keep if i not in self.state.lingering]
        for iface in release:
            self.links.remove_binding(iface)
        self.holder.state = self.state.with_lingering(keep)
        for iface in fresh:
            b = self.state.bindings[iface]
            note("linger", "%s: no session left; its rules and routes stay %gs for the "
                 "next one (table %d)", iface, self.cfg.linger_seconds, b.table,
                 iface=iface, seconds=self.cfg.linger_seconds, table=b.table)
        return release

    def expire_lingering(self) -> None:
        """Release the lingering bindings whose time is over (each turn of
        the daemon's loop: a few comparisons when nothing is due)."""
        if not self.state.lingering:
            return
        if self.settle_unused():
            self.holder.save()
