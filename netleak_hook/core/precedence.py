"""netleak's rules ahead of everyone else's, and the truth when they are not.

`ip rule add` without a priority takes one less than the lowest in use, so a
tool started after netleak (wg-quick's full tunnel, a network manager, a
user's rule) lands ahead of netleak's rules and would route the sessions'
marked packets by its own tables (where the kill switch drops them: not a
leak, but a dead session). netleak moves its own rules ahead again; where it
cannot (another rule at the lowest priorities), a route lookup with the
session's mark tells, and status says `shadowed`, naming the rule.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

from .plan import Binding, Link, routes_for

# netleak's rules sit at P and P-1 (--allow rules); both stay after the
# local table's rule at 0
MIN_PRIORITY = 2

# where a marked packet is looked up "to the internet": documentation
# addresses no rule of anyone's should single out
PROBE = {4: "203.0.113.254", 6: "2001:db8:ffff::fe"}

TABLE_NAMES = {253: "default", 254: "main", 255: "local"}
LOCAL_TABLE = 255


@dataclasses.dataclass(frozen=True)
class Listed:
    """A rule as the kernel lists it (in its order), with `ip rule`'s text."""

    family: int
    priority: int
    table: int
    ours: bool
    fwmark: int | None = None
    text: str = ""
    action: str = "lookup"   # or goto, nop, blackhole, unreachable, prohibit
    l3mdev: bool = False     # a VRF's rule

    @property
    def local(self) -> bool:
        return self.action == "lookup" and self.table == LOCAL_TABLE

    @property
    def overtaken(self) -> bool:
        """Whether netleak's rules may move ahead of this one: another
        tool's lookup, not the local table's rule (loopback), not a rule
        that refuses or drops (an admin's prohibit stays in force), not a
        VRF's."""
        return (not self.ours and self.action == "lookup" and not self.local
                and not self.l3mdev and self.priority > 0)


def rule_priority(configured: int, listed: Iterable[Listed]) -> int:
    """The priority netleak's rules take: CONFIGURED, or one ahead of the
    lowest lookup of others' at or before it that they may overtake
    (Listed.overtaken); never ahead of the local table's rule, never below
    MIN_PRIORITY (nor below CONFIGURED if that is lower already)."""
    listed = list(listed)
    floor = max([MIN_PRIORITY] + [r.priority + 2 for r in listed if r.local and not r.ours])
    if configured <= floor:
        return configured
    # a rule netleak cannot get ahead of is left alone (and told as a shadow)
    ahead = [r.priority for r in listed if r.overtaken and floor < r.priority <= configured]
    if not ahead:
        return configured
    return max(floor, min(ahead) - 1)


def shadowed_by(listed: list[Listed], family: int, mark: int, table: int,
                found: int | None) -> str | None:
    """Why a packet of FAMILY with MARK, meant for TABLE, was looked up in
    FOUND instead (None: no route at all), as the rule that took it; None
    when it did reach TABLE."""
    if found == table:
        return None
    own = next((i for i, r in enumerate(listed) if r.ours and r.family == family and
                r.fwmark == mark and r.table == table), None)
    if own is None:
        return f"netleak's rule for mark {mark:#x} is missing (the daemon puts it back)"
    ahead = [r for r in listed[:own] if not r.ours and r.family == family and not r.local]
    for r in ahead:
        if found is not None and r.table == found and r.action == "lookup":
            return r.text
        if found is None and r.action in ("blackhole", "unreachable", "prohibit"):
            return r.text
    if ahead:
        return ahead[0].text
    if found is None:
        return f"no route in table {table} (the interface's routes are missing)"
    return f"a rule of another kind (table {table_name(found)})"


def table_name(table: int) -> str:
    return TABLE_NAMES.get(table, str(table))


def rule_text(priority: int, *, invert: bool = False, src: str | None = None,
              dst: str | None = None, fwmark: int | None = None, fwmask: int | None = None,
              iif: str | None = None, oif: str | None = None, action: str = "lookup",
              table: int | None = None, suppress: int | None = None,
              ipproto: int | None = None, dport: tuple[int, int] | None = None) -> str:
    """A rule as `ip rule` prints it (the selectors netleak can tell)."""
    parts = [f"{priority}:"] + ["not"] * invert + ["from", src or "all"]
    if dst:
        parts += ["to", dst]
    if fwmark is not None:
        mask = "" if fwmask in (None, 0xFFFFFFFF) else f"/{fwmask:#x}"
        parts += ["fwmark", f"{fwmark:#x}{mask}"]
    if iif:
        parts += ["iif", iif]
    if oif:
        parts += ["oif", oif]
    if ipproto is not None:
        parts += ["ipproto", {6: "tcp", 17: "udp"}.get(ipproto, str(ipproto))]
    if dport is not None:
        parts += ["dport", str(dport[0]) if dport[0] == dport[1] else f"{dport[0]}-{dport[1]}"]
    if action == "lookup":
        parts += ["lookup", table_name(table or 0)]
    else:
        parts.append(action)
    if suppress is not None:
        parts += ["suppress_prefixlength", str(suppress)]
    return " ".join(parts)


def shadow_of(lookup: Callable[[int, int, str], int | None], listed: list[Listed],
              b: Binding, link: Link) -> str | None:
    """The rule that takes B's marked packets away from its table, for any
    family B has a route for (None: they reach it). LOOKUP(family, mark,
    destination): the table a route lookup finds (None: no route)."""
    for family in sorted({r.family for r in routes_for(b, link) if r.kind == "unicast"}):
        why = shadowed_by(listed, family, b.mark, b.table,
                          lookup(family, b.mark, PROBE[family]))
        if why:
            return why
    return None
