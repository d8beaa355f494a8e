"""Links, addresses, rules and routes through pyroute2 (rtnetlink).

Only values from `plan` cross this boundary; pyroute2's messages and errors
stay here.
"""
from __future__ import annotations

import errno
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (RTMGRP_IPV4_IFADDR, RTMGRP_IPV4_RULE,
                                   RTMGRP_IPV6_IFADDR, RTMGRP_IPV6_RULE, RTMGRP_LINK)

from ..core.plan import Link, Route, Rule
from ..core.precedence import Listed, rule_text

log = logging.getLogger(__name__)

IFF_UP = 0x1
IFF_POINTOPOINT = 0x10
IFF_NOARP = 0x80
IFF_LOWER_UP = 0x10000
RTN_UNICAST = 1
RTN_UNREACHABLE = 7
FIB_RULE_INVERT = 0x2
RTM_F_LOOKUP_TABLE = 0x1000     # the reply names the table the route came from
RULE_ACTIONS = {1: "lookup", 2: "goto", 3: "nop", 6: "blackhole", 7: "unreachable",
                8: "prohibit"}
FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}
ANY = {4: "0.0.0.0/0", 6: "::/0"}


def _fam(af: int) -> int:
    return 4 if af == socket.AF_INET else 6


def open_ipr() -> IPRoute:
    return IPRoute()


def open_events() -> IPRoute:
    """A netlink socket that receives link, address and rule changes (a
    rule another tool adds ahead of netleak's is answered at once). Not
    routes: a host's route churn would cost a pass each, and a pass goes
    by whatever batch comes (pyroute2 may hand out a batch late, so what a
    message says cannot decide whether to look); a gateway a default route
    brings is learned by the periodic pass."""
    ev = IPRoute()
    ev.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR |
            RTMGRP_IPV4_RULE | RTMGRP_IPV6_RULE)
    return ev


def read_link(ipr: IPRoute, name: str) -> Link | None:
    try:
        msgs = ipr.get_links(ifname=name)
    except NetlinkError as e:
        if e.code in (errno.ENODEV, errno.ENOENT):
            return None
        raise
    if not msgs:
        return None
    m = msgs[0]
    flags = m["flags"]
    index = m["index"]
    a4, a6 = [], []
    for a in ipr.get_addr(index=index):
        addr = a.get_attr("IFA_ADDRESS") if a["family"] == socket.AF_INET6 else (
            a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
        if addr:
            (a4 if a["family"] == socket.AF_INET else a6).append(addr)
    return Link(name=name, index=index, admin_up=bool(flags & IFF_UP),
                carrier=bool(flags & IFF_LOWER_UP),
                pointopoint=bool(flags & IFF_POINTOPOINT),
                noarp=bool(flags & IFF_NOARP),
                addrs4=tuple(sorted(a4)), addrs6=tuple(sorted(a6)))


def local_addresses(ipr: IPRoute) -> dict[str, int]:
    """Every address of this namespace's interfaces (IPv4: the local end of
    a point-to-point link, not its peer) -> its interface's index."""
    out = {}
    for a in ipr.get_addr():
        addr = a.get_attr("IFA_ADDRESS") if a["family"] == socket.AF_INET6 else (
            a.get_attr("IFA_LOCAL") or a.get_attr("IFA_ADDRESS"))
        if addr:
            out[addr.split("%", 1)[0]] = a["index"]
    return out


def link_names(ipr: IPRoute) -> dict[int, str]:
    return {m["index"]: m.get_attr("IFLA_IFNAME") for m in ipr.get_links()}


def default_gateways(ipr: IPRoute, ifindex: int) -> tuple[str | None, str | None]:
    """Gateways of default routes through IFINDEX in the main table (what a
    DHCP client or NetworkManager installed), best metric first."""
    found: dict[int, str | None] = {4: None, 6: None}
    for fam in (4, 6):
        best = None
        for r in ipr.get_routes(family=FAMILY[fam], table=254):
            if r["dst_len"] != 0 or r.get_attr("RTA_OIF") != ifindex:
                continue
            gw = r.get_attr("RTA_GATEWAY")
            metric = r.get_attr("RTA_PRIORITY") or 0
            if gw and (best is None or metric < best[0]):
                best = (metric, gw)
        if best:
            found[fam] = best[1]
    return found[4], found[6]


def list_rules(ipr: IPRoute, ours) -> list[tuple[Rule, Listed]]:
    """Every rule of both families, in the kernel's order; OURS (a
    predicate on a Rule) says which are netleak's."""
    out = []
    for af in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_rules(family=af):
            prio = r.get_attr("FRA_PRIORITY") or 0
            table = r.get_attr("FRA_TABLE") or r["table"]
            src = r.get_attr("FRA_SRC") if r["src_len"] else None
            dst = f"{r.get_attr('FRA_DST')}/{r['dst_len']}" if r["dst_len"] else None
            fwmark = r.get_attr("FRA_FWMARK")
            ipproto, dport = r.get_attr("FRA_IP_PROTO"), _ports(r.get_attr("FRA_DPORT_RANGE"))
            rule = Rule(_fam(af), prio, table, fwmark=fwmark, src=src, dst=dst,
                        ipproto=ipproto or None, dport=dport)
            action = RULE_ACTIONS.get(r["action"], "?")
            invert = bool(r["flags"] & FIB_RULE_INVERT)
            fwmask, suppress = r.get_attr("FRA_FWMASK"), _suppress(
                r.get_attr("FRA_SUPPRESS_PREFIXLEN"))
            iif, oif = r.get_attr("FRA_IIFNAME"), r.get_attr("FRA_OIFNAME")
            l3mdev = bool(r.get_attr("FRA_L3MDEV"))
            # netleak's rules are exactly as it makes them: a rule with any
            # other selector is another tool's, even into one of its tables
            plain = (action == "lookup" and not invert and not iif and not oif and
                     not l3mdev and suppress is None and fwmask in (None, 0xFFFFFFFF) and
                     (not src or r["src_len"] == (32 if af == socket.AF_INET else 128)) and
                     not any(r.get_attr(a) for a in _OTHER_SELECTORS))
            mine = plain and bool(ours(rule))
            text = rule_text(
                prio, invert=invert, src=f"{src}/{r['src_len']}" if src else None, dst=dst,
                fwmark=fwmark, fwmask=fwmask, iif=iif, oif=oif, action=action,
                table=table, suppress=suppress, ipproto=ipproto or None, dport=dport)
            out.append((rule, Listed(_fam(af), prio, table, mine, fwmark, text, action,
                                     l3mdev)))
    return out


# selectors netleak's own rules never have (ipproto and dport only its
# --allow rules into main have: is_ours judges those)
_OTHER_SELECTORS = ("FRA_UID_RANGE", "FRA_SPORT_RANGE", "FRA_TUN_ID", "FRA_GOTO")


def _ports(value) -> tuple[int, int] | None:
    """FRA_DPORT_RANGE as pyroute2 gives it ("first:last")."""
    if not value:
        return None
    first, _, last = str(value).partition(":")
    return int(first), int(last or first)


def _suppress(value) -> int | None:
    """FRA_SUPPRESS_PREFIXLEN, unset when it is -1 (as u32)."""
    return None if value is None or value in (-1, 0xFFFFFFFF) else value


def lookup_table(ipr: IPRoute, family: int, mark: int, dst: str) -> int | None:
    """The table a packet to DST carrying MARK is routed by (`ip route get
    DST mark MARK`); None when it finds no route."""
    try:
        reply = ipr.route("get", dst=dst, mark=mark, flags=RTM_F_LOOKUP_TABLE,
                          family=FAMILY[family])
    except NetlinkError:
        return None
    if not reply or reply[0]["type"] != RTN_UNICAST:
        return None
    return reply[0].get_attr("RTA_TABLE") or reply[0]["table"]


def _rule_kw(rule: Rule) -> dict:
    kw: dict = dict(family=FAMILY[rule.family], priority=rule.priority, table=rule.table)
    if rule.fwmark is not None:
        kw.update(fwmark=rule.fwmark, fwmask=0xFFFFFFFF)
    if rule.src is not None:
        kw.update(src=rule.src, src_len=32 if rule.family == 4 else 128)
    if rule.dst is not None:
        addr, plen = rule.dst.split("/")
        kw.update(dst=addr, dst_len=int(plen))
    if rule.ipproto is not None:
        kw.update(ip_proto=rule.ipproto)
    if rule.dport is not None:
        kw.update(dport_range=f"{rule.dport[0]}:{rule.dport[1]}")
    return kw


def add_rule(ipr: IPRoute, rule: Rule) -> None:
    try:
        ipr.rule("add", action="FR_ACT_TO_TBL", **_rule_kw(rule))
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def del_rule(ipr: IPRoute, rule: Rule) -> None:
    try:
        ipr.rule("del", **_rule_kw(rule))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH):
            raise


def current_routes(ipr: IPRoute, table: int) -> set[Route]:
    return routes_in_tables(ipr, {table})


def routes_in_tables(ipr: IPRoute, tables: set[int]) -> set[Route]:
    """Default routes (unicast and unreachable) in any of TABLES: one dump
    per family."""
    routes: set[Route] = set()
    for af in (socket.AF_INET, socket.AF_INET6):
        for r in ipr.get_routes(family=af, table=None):
            table = r.get_attr("RTA_TABLE") or r["table"]
            if table not in tables or r["dst_len"] != 0:
                continue
            kind = {RTN_UNICAST: "unicast", RTN_UNREACHABLE: "unreachable"}.get(r["type"])
            if kind is None:
                continue
            metric = r.get_attr("RTA_PRIORITY") or 0
            routes.add(Route(_fam(af), table, kind, metric,
                             oif=r.get_attr("RTA_OIF") if kind == "unicast" else None,
                             gateway=r.get_attr("RTA_GATEWAY")))
    return routes


def netns_cookie() -> int:
    """The kernel's cookie of this network namespace (0 if unsupported):
    the BPF programs refuse sockets opened in any other namespace."""
    so_netns_cookie = 71
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            return int.from_bytes(s.getsockopt(socket.SOL_SOCKET, so_netns_cookie, 8),
                                  "little")
    except OSError:
        return 0


def _route_kw(route: Route) -> dict:
    kw: dict = dict(family=FAMILY[route.family], dst=ANY[route.family], table=route.table,
                    priority=route.metric, type=route.kind)
    if route.oif is not None:
        kw["oif"] = route.oif
    if route.gateway:
        kw["gateway"] = route.gateway
    return kw


def add_route(ipr: IPRoute, route: Route) -> None:
    try:
        ipr.route("replace", **_route_kw(route))
    except NetlinkError as e:
        if e.code != errno.EEXIST:
            raise


def del_route(ipr: IPRoute, route: Route) -> None:
    try:
        ipr.route("del", **_route_kw(route))
    except NetlinkError as e:
        if e.code not in (errno.ENOENT, errno.ESRCH, errno.ENODEV):
            raise
