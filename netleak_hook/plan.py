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


def routes_for(binding: Binding, link: Link | None) -> set[Route]:
    """The table: a default route by the interface when it is up, and an
    `unreachable` default with the worst metric that never leaves, so a
    missing route never falls through to the main table."""
    routes = {Route(fam, binding.table, "unreachable", UNREACHABLE_METRIC) for fam in (4, 6)}
    if link is None or not link.up:
        return routes
    for fam, via in ((4, binding.via4), (6, binding.via6)):
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
