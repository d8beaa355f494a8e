"""`netleak status`: what each session is doing now.

`rows` and `render` are pure; `gather` reads the state file and the kernel
(policy map, links, cgroups) without the daemon, so status works even when
the daemon is down.
"""
from __future__ import annotations

import dataclasses
import time

from .core.errors import one_line
from .core.policy import Policy, Stats
from .core.state import State

# short state -> what it means (JSON carries both)
STATES = {
    "routed": "traffic leaves through the interface",
    "shadowed": "another tool's rule routes the session's packets elsewhere, where the "
                "kill switch drops them (see shadowed_by); the daemon moves netleak's "
                "rules ahead of it when it can",
    "kill-switch": "interface down: everything but loopback is dropped",
    "waiting": "waiting for the interface: none of that name exists; everything but "
               "loopback is dropped until it appears",
    "starting": "being set up: the workload has not entered the cgroup yet",
    "no-network": "no-network mode: only loopback (and --allow rules) may be used",
    "proxied": "proxy mode: TCP goes through the proxy, DNS is answered by netleak or "
               "refused, the rest is refused",
    "no-policy": "no policy entry: everything is dropped (fail closed); run 'netleak gc'",
    "unknown": "the BPF maps cannot be read (is bpffs mounted?)",
}
# a waiting session's detail, by what it waits for (plan.waiting_for)
WAITING = {
    "gateway": "waiting for a gateway: the interface is not point-to-point and has no "
               "default route to learn one from; everything but loopback is dropped "
               "until it has one (or give --via)",
}


@dataclasses.dataclass(frozen=True)
class Facts:
    """What the kernel says about one session."""

    policy: Policy | None = None
    maps_readable: bool = True
    link_index: int | None = None   # None: no such interface
    link_up: bool = False
    waiting: str = ""               # what the kill switch waits for (plan.waiting_for)
    procs: int = 0
    stats: Stats | None = None
    shadowed_by: str | None = None  # the rule that takes its interface's packets


def session_state(committed: bool, f: Facts) -> str:
    if not f.maps_readable:
        return "unknown"
    if f.policy is None:
        return "no-policy"
    if not committed:
        return "starting"
    if f.policy.block:
        return "no-network"
    if f.policy.proxy and not f.policy.mark:
        return "proxied"        # no interface (no mark): the proxy is reached by routing
    if f.link_index is None or f.waiting:
        return "waiting"
    if f.policy.killed or not f.link_up:
        return "kill-switch"
    if f.shadowed_by:
        return "shadowed"
    return "proxied" if f.policy.proxy else "routed"


def rows(state: State, facts: dict[str, Facts], now: float) -> list[dict]:
    """One complete row per session, oldest first."""
    out = []
    for s in sorted(state.sessions.values(), key=lambda s: (s.created, s.id)):
        f = facts.get(s.id, Facts(maps_readable=False))
        b = state.bindings.get(s.iface)
        st = session_state(s.committed, f)
        out.append({
            "id": s.id, "iface": s.iface, "ifindex": f.link_index, "state": st,
            "state_detail": WAITING.get(f.waiting, STATES[st]) if st == "waiting"
            else STATES[st],
            "cgroup": "/" + s.cgroup, "cgroup_id": s.cgroup_id,
            "procs": f.procs, "age": round(max(0.0, now - s.created), 1),
            "created": s.created,
            "started_by": "netleak-exec" if s.exec_session else ("hook" if s.container else "attach"),
            "container": s.container or None,
            "pid": s.pid or None, "mark": s.mark or (b.mark if b else None),
            "table": b.table if b else None,
            "killed": f.policy.killed if f.policy else None,
            "counters": dataclasses.asdict(f.stats) if f.stats else None,
            "dropped": f.stats.dropped if f.stats else None,
            "refused": f.stats.refusals() if f.stats else None,
            "refused_calls": f.stats.refused if f.stats else None,
            "block": s.block, "allow": list(s.allow), "deny": list(s.deny),
            "dns": list(s.dns),
            "dns_from": s.dns_from or None, "guards": guards_text(s),
            "proxy": _proxy_shown(s.proxy) or None,
            "shadowed_by": f.shadowed_by if st == "shadowed" else None,
        })
    return out


def _proxy_shown(url: str) -> str:
    """The proxy's URL without its password."""
    if not url:
        return ""
    from .core.proxyspec import parse
    return parse(url).url()


def guards_text(s) -> str:
    """What a session has beyond its interface, in one line."""
    if s.proxy:
        parts = [f"proxy {_proxy_shown(s.proxy)}",
                 "dns answered with stand-in addresses" if s.takes_names
                 else "dns refused (socks5)"]
        return "; ".join(parts + _rules_text(s))
    if s.dns:
        dns = f"dns {','.join(s.dns)} ({'--dns' if s.dns_from == 'user' else 'the interface'})"
    else:
        dns = "loopback dns refused (no --dns)"
    return "; ".join([dns] + _rules_text(s))


def _rules_text(s) -> list[str]:
    return ([f"allow {','.join(s.allow)}"] * bool(s.allow) +
            [f"deny {','.join(s.deny)}"] * bool(s.deny))


def age_text(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def count_text(n: int | None) -> str:
    """A counter in at most 5 characters: 1234, 12.3k, 456M."""
    if n is None:
        return "-"
    for unit, size in (("G", 10**9), ("M", 10**6), ("k", 10**3)):
        if n >= 10 * size if unit == "k" else n >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 100 else f"{int(v)}{unit}"
    return str(n)


def _fit(text: str, width: int) -> str:
    """Keep the end of a path, which names the unit or job."""
    return text if len(text) <= width else "…" + text[-(width - 1):]


def lingering_lines(bindings: list[dict]) -> list[str]:
    """A line per lingering interface (status's bindings): no session uses
    it, and its rules and routes wait for the next one until the time left."""
    return [f"{b['iface']}: lingering {b['lingering']:.1f}s more (no session: its rules and "
            f"routes, table {b['table']}, wait for the next one)"
            for b in bindings if b.get("lingering") is not None]


def render(table: list[dict], width: int = 79, bindings: list[dict] = ()) -> str:
    """The sessions as a table; BINDINGS (status's): the lingering ones
    below it."""
    text = _render(table, width)
    extra = lingering_lines(list(bindings))
    return "\n".join([text, *extra])


def _render(table: list[dict], width: int) -> str:
    if not table:
        return "no sessions"
    # PASS and DROP count packets, REFUSED socket calls (connect, sendmsg,
    # socket, setsockopt) the programs refused
    head = (f"{'ID':<10} {'IFACE':<8} {'STATE':<11} {'PROCS':>5} {'AGE':>4} "
            f"{'PASS':>5} {'DROP':>5} {'REFUSED':>7}  ")
    room = max(8, width - len(head))
    lines = [head + "CGROUP"]
    for r in table:
        c = r["counters"] or {}
        lines.append(f"{r['id']:<10.10} {_fit(r['iface'] or '-', 8):<8} "
                     f"{r['state']:<11} {r['procs']:>5} {age_text(r['age']):>4} "
                     f"{count_text(c.get('passed_packets')):>5} "
                     f"{count_text(r['dropped']):>5} {count_text(r.get('refused_calls')):>7}  "
                     f"{_fit(one_line(r['cgroup']), room)}")
        if r.get("dns") or r.get("allow") or r.get("deny") or r.get("proxy"):
            lines.append(f"{'':<10} {_fit(r['guards'], width - 11)}")
        if r.get("shadowed_by"):
            lines.append(f"{'':<10} {_fit('shadowed by ' + r['shadowed_by'], width - 11)}")
    return "\n".join(lines)


def gather(cfg) -> dict:
    """The state file and the kernel's view, as JSON-ready data."""
    from .kernel import bpfsys, cgroupfs, netlink, programs
    from .core.plan import waiting_for
    from .core.policy import POLICY_SIZE, pack_key
    from .rundir.store import Store, run_dir

    store = Store(run_dir(cfg))
    state = store.load()
    root = cgroupfs.find_cgroup2()
    ipr = netlink.open_ipr()
    maps: dict[str, programs.Maps | None] = {}
    links = {}
    facts = {}
    shadows: dict[str, str | None] = {}
    try:
        for iface in {s.iface for s in state.sessions.values() if s.iface} | set(state.bindings):
            links[iface] = netlink.read_link(ipr, iface)
        shadows = shadows_of(ipr, cfg, state, links)
        for s in state.sessions.values():
            if s.pinset not in maps:
                try:
                    maps[s.pinset] = programs.Maps(programs.Pinset(s.pinset))
                except OSError:
                    maps[s.pinset] = None
            m = maps[s.pinset]
            link = links.get(s.iface)
            pol = stats = None
            if m is not None:
                raw = bpfsys.map_lookup(m.policy, pack_key(s.cgroup_id), POLICY_SIZE)
                pol = Policy.unpack(raw) if raw else None
                stats = m.read_stats(s.cgroup_id, s.stats_slot)
            path = cgroupfs.abspath(root, s.cgroup)
            nprocs = len(cgroupfs.tree_procs(path))
            b = state.bindings.get(s.iface)
            facts[s.id] = Facts(policy=pol, maps_readable=m is not None,
                                link_index=link.index if link else None,
                                link_up=bool(link and link.up), procs=nprocs, stats=stats,
                                shadowed_by=shadows.get(s.iface),
                                waiting=(waiting_for(b, link) or "") if b else "")
    finally:
        ipr.close()
        for m in maps.values():
            if m is not None:
                m.close()
    now = time.time()
    return {"daemon_pid": store.daemon_pid(), "run_dir": store.path,
            "bindings": binding_rows(state, links, now),
            "sessions": rows(state, facts, now)}


def binding_rows(state: State, links: dict, now: float) -> list[dict]:
    """One row per bound interface; LINGERING: the seconds its set-up is
    kept with no session (None while it has one)."""
    unused = set(state.unused_bindings())
    out = []
    for b in sorted(state.bindings.values(), key=lambda b: b.slot):
        link = links.get(b.iface)
        until = state.lingering.get(b.iface)
        out.append({"iface": b.iface, "mark": b.mark, "table": b.table,
                    "ifindex": link.index if link else None,
                    "sessions": len(state.sessions_on(b.iface)),
                    "lingering": round(max(0.0, until - now), 1)
                    if until is not None and b.iface in unused else None})
    return out


def shadows_of(ipr, cfg, state: State, links: dict) -> dict[str, str | None]:
    """Per bound interface that is up: the rule that takes its marked
    packets away from its table, or None."""
    from .core import plan, precedence
    from .kernel import netlink
    tables = {b.table for b in state.bindings.values()} | plan.netleak_tables(
        cfg.table_base, cfg.max_interfaces)
    listed = [i for _, i in netlink.list_rules(
        ipr, lambda r: plan.is_ours(r, tables, cfg.mark_base))]
    out = {}
    for iface, b in state.bindings.items():
        link = links.get(iface)
        if link is not None and link.up:
            out[iface] = precedence.shadow_of(
                lambda fam, mark, dst: netlink.lookup_table(ipr, fam, mark, dst),
                listed, b, link)
    return out
