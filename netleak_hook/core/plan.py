"""What rules and routes an interface's table should hold (pure).

The kernel adapter (kernel/netlink.py) reads the current rules and routes,
and applies the difference between them and these plans.
"""
from __future__ import annotations

import dataclasses
import ipaddress

UNREACHABLE_METRIC = 0xFFFFFFFF
ROUTE_METRIC = 100
FWMASK = 0xFFFFFFFF
MAIN_TABLE = 254
# Sessions with --allow rules get a mark of their own (the interface's
# marks are MARK_BASE + 1 + slot): MARK_BASE + SESSION_MARKS + n.
SESSION_MARKS = 0x8000


@dataclasses.dataclass(frozen=True)
class Link:
    """What netleak needs to know of an interface, as observed now."""

    name: str
    index: int
    admin_up: bool
    carrier: bool
    pointopoint: bool = False
    noarp: bool = False
    addrs4: tuple[str, ...] = ()
    addrs6: tuple[str, ...] = ()

    @property
    def up(self) -> bool:
        # Tunnels report operstate UNKNOWN: judge by admin flag and carrier.
        return self.admin_up and self.carrier

    @property
    def layer3(self) -> bool:
        """A point-to-point L3 link (tun, wg, ppp): routes need no gateway."""
        return self.pointopoint or self.noarp


@dataclasses.dataclass(frozen=True)
class Binding:
    """An interface under netleak control: its slot, mark, table, gateways."""

    iface: str
    slot: int
    mark: int
    table: int
    via4: str | None = None
    via6: str | None = None
    user_via4: bool = False     # given with --via: never replaced by discovery
    user_via6: bool = False


@dataclasses.dataclass(frozen=True)
class Rule:
    family: int          # 4 or 6
    priority: int
    table: int
    fwmark: int | None = None
    src: str | None = None   # host address, no prefix
    dst: str | None = None   # a prefix (CIDR; never a /0: that is no selector)
    ipproto: int | None = None       # IPPROTO_* (ipproto): an --allow rule's
    dport: tuple[int, int] | None = None  # destination ports, first and last (dport)


@dataclasses.dataclass(frozen=True)
class Route:
    family: int
    table: int
    kind: str                 # "unicast" or "unreachable"
    metric: int
    oif: int | None = None
    gateway: str | None = None


def _family(addr: str) -> int:
    return ipaddress.ip_address(addr).version


def _routable(addr: str) -> bool:
    a = ipaddress.ip_address(addr)
    return not (a.is_link_local or a.is_loopback or a.is_multicast)


def rules_for(binding: Binding, priority: int, link: Link | None) -> set[Rule]:
    """fwmark rules for both families, plus `from ADDR` rules.

    The `from` rules keep kernel-generated packets (a RST with no socket) on
    the interface, and make strict rp_filter's reverse lookup for replies
    arriving on the interface find the interface's table.
    """
    rules = {Rule(fam, priority, binding.table, fwmark=binding.mark) for fam in (4, 6)}
    if link is not None:
        for addr in link.addrs4 + link.addrs6:
            if _routable(addr):
                rules.add(Rule(_family(addr), priority, binding.table, src=addr))
    return rules


def allow_rules(mark: int, table: int, allow: tuple[str, ...], priority: int) -> set[Rule]:
    """Rules of a session with --allow rules and a mark of its own: what
    they hold looks up the main table (one priority earlier), the rest the
    interface's table. A rule with a port but no protocol takes one routing
    rule for TCP and one for UDP; one of both families, one for each."""
    from . import netrules
    rules = {Rule(fam, priority, table, fwmark=mark) for fam in (4, 6)}
    for r in netrules.rules(allow):
        net = ipaddress.ip_network(r.net) if r.net else None
        dst = str(net) if net is not None and net.prefixlen else None
        dport = (r.port_lo, r.port_hi) if r.has_ports else None
        for fam in r.families:
            for proto in r.protocols or ("",):
                rules.add(Rule(fam, priority - 1, MAIN_TABLE, fwmark=mark, dst=dst,
                               ipproto=netrules.PROTOCOLS.get(proto), dport=dport))
    return rules


def netleak_tables(table_base: int, max_interfaces: int) -> set[int]:
    """Every routing table netleak may use (bound or not)."""
    return {table_base + i for i in range(max_interfaces)}


def is_ours(rule: Rule, tables: set[int], mark_base: int) -> bool:
    """Rules netleak made, at whatever priority they were moved to: into
    one of its tables, or into main for a session mark of its own."""
    if rule.table in tables:
        return rule.ipproto is None and rule.dport is None
    return (rule.table == MAIN_TABLE and rule.fwmark is not None and
            (rule.dst is not None or rule.ipproto is not None)
            and mark_base + SESSION_MARKS <= rule.fwmark <= mark_base + 0xFFFF)


def session_mark(used: set[int], mark_base: int) -> int | None:
    """The lowest free mark of a session's own, or None when all are taken."""
    n = allocate_slot({m - mark_base - SESSION_MARKS for m in used}, 0x10000 - SESSION_MARKS)
    return None if n is None else mark_base + SESSION_MARKS + n


def carries(link: Link, family: int) -> bool:
    """Whether LINK can carry FAMILY: it has a routable address of it.
    Without one, the family gets only the unreachable route, so its
    connects fail at once (no source address borrowed from another
    interface, no timeout waiting for replies that cannot come)."""
    addrs = link.addrs4 if family == 4 else link.addrs6
    return any(_routable(a) for a in addrs)


def routes_for(binding: Binding, link: Link | None) -> set[Route]:
    """The table: a default route by the interface when it is up (for each
    family it has an address of), and an `unreachable` default with the
    worst metric that never leaves, so a missing route never falls through
    to the main table."""
    routes = {Route(fam, binding.table, "unreachable", UNREACHABLE_METRIC) for fam in (4, 6)}
    if link is None or not link.up:
        return routes
    for fam, via in ((4, binding.via4), (6, binding.via6)):
        if not carries(link, fam):
            continue
        if link.layer3:
            routes.add(Route(fam, binding.table, "unicast", ROUTE_METRIC, oif=link.index))
        elif via:
            routes.add(Route(fam, binding.table, "unicast", ROUTE_METRIC,
                             oif=link.index, gateway=via))
    return routes


def diff(current: set, desired: set) -> tuple[set, set]:
    """(to add, to remove) to turn CURRENT into DESIRED."""
    return desired - current, current - desired


def allocate_slot(used: set[int], limit: int) -> int | None:
    """Lowest free slot below LIMIT, or None when all are taken."""
    for slot in range(limit):
        if slot not in used:
            return slot
    return None


def make_binding(iface: str, used_slots: set[int], mark_base: int, table_base: int,
                 limit: int, via4: str | None, via6: str | None,
                 user_via4: bool, user_via6: bool) -> Binding | None:
    slot = allocate_slot(used_slots, limit)
    if slot is None:
        return None
    return Binding(iface=iface, slot=slot, mark=mark_base + slot + 1,
                   table=table_base + slot, via4=via4, via6=via6,
                   user_via4=user_via4, user_via6=user_via6)


def learns_gateways(link: Link | None, user_via4: bool, user_via6: bool) -> bool:
    """Whether a binding on LINK takes its gateways from the system's default
    routes: an ethernet-like link (a point-to-point one needs none) for which
    --via did not give both. An absent link is not read: what it will be is
    not known until it appears."""
    return link is not None and not link.layer3 and not (user_via4 and user_via6)


def waiting_for(b: Binding, link: Link | None) -> str | None:
    """What B's sessions wait for before anything may leave: "interface"
    (none of that name yet), "gateway" (an ethernet-like link with no gateway
    known for either family, so its table can hold no route by it), or None.
    Meanwhile the kill switch stays on."""
    if link is None:
        return "interface"
    if not link.layer3 and not (b.via4 or b.via6):
        return "gateway"
    return None


def usable(b: Binding, link: Link | None) -> bool:
    """Whether B's sessions may send by LINK now: it is up and waits for
    nothing."""
    return link is not None and link.up and waiting_for(b, link) is None


def with_user_gateways(b: Binding, via4: str | None, via6: str | None) -> Binding:
    """B with gateways given by --via; they are never replaced by discovery."""
    return dataclasses.replace(
        b, via4=via4 or b.via4, via6=via6 or b.via6,
        user_via4=b.user_via4 or bool(via4), user_via6=b.user_via6 or bool(via6))


def with_learned_gateways(b: Binding, gw4: str | None, gw6: str | None) -> Binding:
    """B with gateways learned from the system's routes, where --via did not
    set them; a gateway that is no longer seen is kept (the link may be
    down and its routes gone)."""
    return dataclasses.replace(
        b, via4=b.via4 if b.user_via4 else (gw4 or b.via4),
        via6=b.via6 if b.user_via6 else (gw6 or b.via6))


def attach_refusal(target: str, daemon_cgroup: str) -> str | None:
    """Why a cgroup may not be attached, or None. Paths are relative to the
    cgroup2 mount, without leading '/'."""
    target, daemon_cgroup = target.strip("/"), daemon_cgroup.strip("/")
    if not target:
        return ("refusing the root cgroup: it holds every process of the machine, "
                "netleak's daemon included; name a unit's or a job's cgroup")
    if daemon_cgroup == target or daemon_cgroup.startswith(target + "/"):
        return (f"cgroup /{target} contains netleak's own daemon (in /{daemon_cgroup}): "
                f"attach a cgroup below it, or run 'netleak daemon' elsewhere")
    return None


def ancestors(target: str) -> list[str]:
    """The cgroups above TARGET, nearest first, the root cgroup ("") not
    among them."""
    parts = target.strip("/").split("/")
    return ["/".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def delegation_refusal(target: str, writers: dict[str, str]) -> str | None:
    """Why TARGET may not be attached when a user may move processes within
    a subtree above it, or None. WRITERS: the ancestors of TARGET whose
    cgroup.procs someone other than root may write, with who ("uid 1000",
    "group 100", "everyone").

    Whoever may write the cgroup.procs of a cgroup may move their own
    processes between any cgroups below it (cgroup v2 delegation, what
    systemd gives user@UID.service): a process of TARGET could move itself
    into a sibling, or into that ancestor itself, and be out of control.
    The topmost such ancestor is safe to attach: what is above it is
    root's."""
    found = [a for a in ancestors(target) if a in writers]
    if not found:
        return None
    top = found[-1]
    who = writers[top]
    return (f"cgroup /{target.strip('/')} lies in /{top}, whose processes {who} may move "
            f"between its cgroups (a delegated subtree): one could leave /{target.strip('/')} "
            f"and its control; attach /{top} instead, or start the job with netleak-exec")
