"""The kill switch: each bound interface's policy entries, routes and rules,
kept matching what the interface is now."""
from __future__ import annotations

import dataclasses

from ..core import plan, precedence
from ..core.errors import NetleakError
from ..core.policy import (LOCAL_KEY_SIZE, POLICY_SIZE, Policy, local_key, local_key_netns,
                           local_value, pack_key)
from ..core.state import Session, policy_for
from .notes import log, note, step


class Links:
    """LIVE holds the policy last written per interface; LAST_INDEX the
    ifindex each interface last had while present."""

    def __init__(self, cfg, holder, net, bpf, pins, relay_ports, resolvers) -> None:
        self.cfg = cfg
        self.holder = holder
        self.net = net
        self.bpf = bpf
        self.pins = pins
        self.relay_ports = relay_ports      # () -> the relay's ports, (0, 0, 0) without
        self.resolvers = resolvers          # ifindex -> the servers the interface announces
        self.live: dict[str, Policy] = {}
        self.last_index: dict[str, int] = {}
        self.priority = cfg.rule_priority   # where netleak's rules are now
        self.shadowed: dict[str, str] = {}  # iface -> the rule that takes its packets

    @property
    def state(self):
        return self.holder.state

    # ---------- bindings ----------

    def binding_for(self, iface: str, via4: str | None, via6: str | None) -> plan.Binding:
        """IFACE's binding: the one in use (with the user's gateways, if
        given), or a new one, also for a link that does not exist yet (its
        sessions wait for it, kill switch on)."""
        binding = self.state.bindings.get(iface)
        if binding is None:
            return self.new_binding(iface, self.net.read_link(iface), via4, via6)
        if via4 or via6:
            return plan.with_user_gateways(binding, via4, via6)
        return binding

    def new_binding(self, iface: str, link: plan.Link | None, via4: str | None,
                    via6: str | None) -> plan.Binding:
        """A binding with the gateways --via gave or the system's routes show;
        with none yet (a link down or absent), its sessions wait (see
        plan.waiting_for) and refresh_gateways learns them later."""
        user4, user6 = bool(via4), bool(via6)
        if plan.learns_gateways(link, user4, user6):
            gw4, gw6 = self.net.default_gateways(link.index)
            via4, via6 = via4 or gw4, via6 or gw6
        b = self._make_binding(iface, via4, via6, user4, user6)
        if b is None and self.state.lingering:
            # a slot held only by a lingering set-up is free for the asking
            self.remove_binding(min(self.state.lingering, key=self.state.lingering.get))
            b = self._make_binding(iface, via4, via6, user4, user6)
        if b is None:
            raise NetleakError(
                f"all {self.cfg.max_interfaces} interface slots are in use: end "
                f"sessions on other interfaces first")
        return b

    def _make_binding(self, iface: str, via4: str | None, via6: str | None, user4: bool,
                      user6: bool) -> plan.Binding | None:
        used = {b.slot for b in self.state.bindings.values()}
        return plan.make_binding(iface, used, self.cfg.mark_base, self.cfg.table_base,
                                 self.cfg.max_interfaces, via4, via6, user4, user6)

    def current_index(self, iface: str) -> int | None:
        """IFACE's ifindex: as the events keep it, else read now."""
        live = self.live.get(iface)
        if live is not None and live.ifindex:
            return live.ifindex
        link = self.net.read_link(iface)
        return link.index if link else None

    def release_unused(self) -> list[str]:
        """Release every binding no session uses, lingering or not (gc, a
        clean exit); returns them."""
        unused = self.state.unused_bindings()
        for iface in unused:
            self.remove_binding(iface)
        return unused

    def remove_binding(self, iface: str) -> None:
        b = self.state.bindings[iface]
        lingered = iface in self.state.lingering
        self.holder.state = self.state.without_binding(iface)
        step(f"rules of {iface}", lambda: self.apply_rules(self.read_links()))
        routes = step(f"routes of {iface}", self.net.current_routes, b.table)
        for r in sorted(routes or (), key=str):
            step(f"route {r}", self.net.del_route, r)
        self.live.pop(iface, None)
        self.last_index.pop(iface, None)
        self.shadowed.pop(iface, None)
        note("release", "released %s (mark %#x, table %d)", iface, b.mark, b.table,
             iface=iface, mark=b.mark, table=b.table, lingered=lingered or None)

    # ---------- policy entries ----------

    def block_policy(self) -> Policy:
        """No-network mode: no interface, no kill switch to follow."""
        return Policy(ifindex=0, mark=0, killed=False, netns=self.holder.netns,
                      event_rate=self.cfg.event_rate, block=True)

    def write_policies(self, iface: str, pol: Policy) -> None:
        """The entries of IFACE's sessions ("": no-network mode's), from POL
        and what each session has of its own."""
        for s in self.state.sessions_on(iface):
            self.write_policy(s, pol)

    def write_policy(self, s: Session, pol: Policy) -> None:
        """S's entry, from its interface's POL and what S has of its own."""
        maps = self.pins.maps_for(s.pinset)
        if maps is None:
            return
        key = pack_key(s.cgroup_id)
        want = policy_for(s, pol, self.relay_ports())
        raw = self.bpf.map_lookup(maps.policy, key, POLICY_SIZE)
        if raw is None or Policy.unpack(raw) != want:
            self.bpf.map_update(maps.policy, key, want.pack())

    def sync_locals(self, keep: bool = True) -> None:
        """The map `locals` holds this namespace's addresses, as they are
        now (a session's packets must come from one of them); without KEEP,
        none of them (a clean exit with no session left)."""
        netns = self.holder.netns
        want = {local_key(netns, addr): local_value(idx)
                for addr, idx in self.net.local_addresses().items()} if keep else {}
        for pinset in {self.pins.path} | {s.pinset for s in self.state.sessions.values()}:
            maps = self.pins.maps_for(pinset)
            if maps is None or maps.locals < 0:
                continue
            have = {k for k in self.bpf.map_keys(maps.locals, LOCAL_KEY_SIZE)
                    if local_key_netns(k) == netns}
            for k in have - set(want):
                self.bpf.map_delete(maps.locals, k)
            for k, v in want.items():
                if k not in have:
                    self.bpf.map_update(maps.locals, k, v)

    # ---------- following the interfaces ----------

    def read_links(self) -> dict[str, plan.Link | None]:
        return {iface: self.net.read_link(iface) for iface in self.state.bindings}

    def reconcile_all(self) -> None:
        """Make rules, routes and map entries of every bound interface match
        what the interface is now.

        Order matters: the kill switch goes on before anything else when an
        interface is unusable, and comes off only after its routes and rules
        are back and the map holds its (possibly new) ifindex.
        """
        step("local addresses", self.sync_locals)
        links = self.read_links()
        for iface, link in links.items():
            try:
                self.kill_if_unusable(iface, link)
                self.apply_routes(self.refresh_gateways(iface, link), link)
            except Exception:
                log.exception("reconciling %s", iface)
        rules = self.apply_rules(links)
        for iface, link in links.items():
            if link is not None and link.up:
                step(f"resolvers of {iface}", self.refresh_dns, iface, link)
            if plan.usable(self.state.bindings[iface], link):
                self.release_kill(iface, link)
        step("paths", self.check_paths, links, rules)
        step("no-network entries", self.write_policies, "", self.block_policy())

    def kill_if_unusable(self, iface: str, link: plan.Link | None) -> None:
        if plan.usable(self.state.bindings[iface], link):
            return
        before = self.live.get(iface)
        if before is None or not before.killed:
            cause = "gone" if link is None else "down" if not link.up else "no-gateway"
            note("kill-switch-on", "%s is %s: kill switch on", iface,
                 "up with no gateway known" if cause == "no-gateway" else cause, iface=iface,
                 cause=cause, ifindex=link.index if link else None,
                 sessions=len(self.state.sessions_on(iface)))
        self.live[iface] = Policy(ifindex=link.index if link else 0,
                                  mark=self.state.bindings[iface].mark, killed=True,
                                  netns=self.holder.netns, event_rate=self.cfg.event_rate)
        self.write_policies(iface, self.live[iface])

    def release_kill(self, iface: str, link: plan.Link) -> None:
        b = self.state.bindings[iface]
        pol = Policy(ifindex=link.index, mark=b.mark, killed=False, netns=self.holder.netns,
                     event_rate=self.cfg.event_rate)
        if self.live.get(iface) != pol:
            old = self.last_index.get(iface)
            note("kill-switch-off", "%s is up (ifindex %d): routes in table %d, kill switch off",
                 iface, link.index, b.table, iface=iface, ifindex=link.index, table=b.table,
                 recreated=old is not None and old != link.index, old_ifindex=old,
                 sessions=len(self.state.sessions_on(iface)))
        self.last_index[iface] = link.index
        self.live[iface] = pol
        self.write_policies(iface, pol)

    def refresh_gateways(self, iface: str, link: plan.Link | None) -> plan.Binding:
        """IFACE's binding with the gateways its default routes show now (a
        binding made while the link was down or absent learns its first
        ones here)."""
        b = self.state.bindings[iface]
        if not plan.learns_gateways(link, b.user_via4, b.user_via6) or not link.up:
            return b
        nb = plan.with_learned_gateways(b, *self.net.default_gateways(link.index))
        if nb != b:
            self.holder.state = self.state.with_binding(nb)
            self.holder.save()
        return nb

    def refresh_dns(self, iface: str, link: plan.Link) -> None:
        """Sessions given no --dns follow the interface's resolvers (a VPN
        that reconnects may announce others, or announce them late)."""
        found = self.resolvers(link.index)
        for s in self.state.sessions_on(iface):
            if s.dns_from != "user" and s.dns != found:
                self.holder.state = self.state.with_session(dataclasses.replace(
                    s, dns=found, dns_from="interface" if found else ""))
                self.holder.save_later()

    # ---------- routes and rules ----------

    def apply_routes(self, b: plan.Binding, link: plan.Link | None) -> None:
        current = self.net.current_routes(b.table)
        add, remove = plan.diff(current, plan.routes_for(b, link))
        for r in sorted(remove, key=str):
            self.net.del_route(r)
        added = 0
        for r in sorted(add, key=str):
            try:
                self.net.add_route(r)
                added += 1
            except Exception as e:  # e.g. the link vanished meanwhile
                log.warning("route %s: %s", r, e)
        if added or remove:
            note("routes", "table %d of %s: %d routes added, %d removed", b.table, b.iface,
                 added, len(remove), iface=b.iface, table=b.table, added=added,
                 removed=len(remove), link="up" if link is not None and link.up else
                 ("down" if link is not None else "gone"))

    def tables(self) -> set[int]:
        """Every table netleak may use (bound or not)."""
        return plan.netleak_tables(self.cfg.table_base, self.cfg.max_interfaces)

    def ours(self, rule: plan.Rule) -> bool:
        return plan.is_ours(rule, self.tables(), self.cfg.mark_base)

    def apply_rules(self, links: dict[str, plan.Link | None]) -> list:
        """netleak's rules, ahead of every rule of others' (one added later
        without a priority lands ahead: they move in front of it again);
        the new ones go in before the old ones go, so no packet falls
        through in between. Returns the rules as they are now (listed
        again only when something changed)."""
        listed = self.net.list_rules(self.ours)
        prio = precedence.rule_priority(self.cfg.rule_priority, [i for _, i in listed])
        if prio != self.priority:
            note("rules-moved", "netleak's rules at priority %d (was %d): ahead of the "
                 "rules of others'", prio, self.priority, priority=prio, was=self.priority)
            self.priority = prio
        desired: set[plan.Rule] = set()
        for b in self.state.bindings.values():
            desired |= plan.rules_for(b, prio, links.get(b.iface))
        for s in self.state.sessions.values():
            b = self.state.bindings.get(s.iface)
            if s.mark and b is not None:
                desired |= plan.allow_rules(s.mark, b.table, s.allow, prio)
        current = {r for r, i in listed if i.ours}
        add, remove = plan.diff(current, desired)
        for r in sorted(add, key=str):
            self.net.add_rule(r)
        # a delete names priority, table and selectors, and the kernel takes
        # the first rule they match: with another tool's rule there too, it
        # could be theirs, so ours stays (and is said)
        crowded = {(i.family, i.priority, i.table) for _, i in listed if not i.ours}
        for r in sorted(remove, key=str):
            if (r.family, r.priority, r.table) in crowded:
                note("rule-kept", "kept %s: another tool's rule has its priority and table",
                     r, level=30, rule=str(r))
                continue
            self.net.del_rule(r)
        return self.net.list_rules(self.ours) if add or remove else listed

    def check_paths(self, links: dict[str, plan.Link | None], rules: list) -> None:
        """Whether each routed interface's marked packets reach its table (a
        route lookup with the mark, per family it has a route for); a rule
        that takes them elsewhere is noted once, as is its end. RULES: as
        apply_rules left them."""
        listed = [i for _, i in rules]
        for iface, b in self.state.bindings.items():
            link = links.get(iface)
            live = self.live.get(iface)
            why = None
            if link is not None and link.up and live is not None and not live.killed:
                why = precedence.shadow_of(self.net.lookup_table, listed, b, link)
            if why != self.shadowed.get(iface):
                if why:
                    note("shadowed", "%s: its sessions' packets are routed by another "
                         "rule, and dropped: %s", iface, why, iface=iface, rule=why)
                else:
                    note("unshadowed", "%s: its sessions' packets reach table %d again",
                         iface, b.table, iface=iface, table=b.table)
            if why:
                self.shadowed[iface] = why
            else:
                self.shadowed.pop(iface, None)

    def gc_routes(self) -> int:
        """Routes in netleak's tables that no binding uses; returns how many
        were removed."""
        bound = {b.table for b in self.state.bindings.values()}
        stale = [r for r in self.net.routes_in_tables(self.tables())
                 if r.table not in bound]
        for r in sorted(stale, key=str):
            step(f"route {r}", self.net.del_route, r)
        return len(stale)

