"""--allow and --deny rules: [CIDR][:PORT[-PORT]][/tcp|/udp] (pure).

A rule names the far end of a flow: the destination of what a session
sends, the source of what it receives. Its parts are all optional, but one
must be given:

    192.168.1.0/24            a prefix (an address alone is a host)
    192.168.1.0/24:631/tcp    ... its TCP port 631 only
    [2001:db8::/64]:53        an IPv6 prefix with a port: in brackets
    2001:db8::/64/udp         ... without one: no brackets needed
    :8000-8100                ports of any address, IPv4 and IPv6
    /udp                      every UDP flow

A port without a protocol means TCP and UDP. The text a rule is kept and
shown as is canonical (`text`), so equal rules compare equal as text.
"""
from __future__ import annotations

import dataclasses
import ipaddress

from .errors import NetleakError

PROTOCOLS = {"tcp": 6, "udp": 17}
_MAPPED = ipaddress.ip_network("::ffff:0:0/96")
SYNTAX = "[CIDR][:PORT[-PORT]][/tcp|/udp]"


@dataclasses.dataclass(frozen=True)
class NetRule:
    """One rule. NET: a CIDR, or None for any address of both families;
    PORT_LO..PORT_HI: the far end's ports (0, 0: any); PROTO: "tcp", "udp"
    or "" (any; with ports, TCP and UDP)."""

    net: str | None = None
    port_lo: int = 0
    port_hi: int = 0
    proto: str = ""

    @property
    def family(self) -> int:
        """4 or 6; 0 when the rule holds both families."""
        return 0 if self.net is None else ipaddress.ip_network(self.net).version

    @property
    def families(self) -> tuple[int, ...]:
        return (self.family,) if self.family else (4, 6)

    @property
    def has_ports(self) -> bool:
        return self.port_hi != 0

    @property
    def address_only(self) -> bool:
        """The rule names addresses only (no port, no protocol)."""
        return not self.has_ports and not self.proto

    @property
    def protocols(self) -> tuple[str, ...]:
        """The protocols it holds; () for any (an address-only rule)."""
        if self.proto:
            return (self.proto,)
        return ("tcp", "udp") if self.has_ports else ()

    def ports_text(self) -> str:
        if not self.has_ports:
            return ""
        if self.port_lo == self.port_hi:
            return str(self.port_lo)
        return f"{self.port_lo}-{self.port_hi}"

    def text(self) -> str:
        out = self.net or ""
        if self.has_ports:
            host = f"[{out}]" if self.family == 6 else out
            out = f"{host}:{self.ports_text()}"
        if self.proto:
            out += f"/{self.proto}"
        return out

    def __str__(self) -> str:
        return self.text()

    def holds(self, addr: str, port: int | None = None, proto: str | None = None,
              deny: bool = False) -> bool:
        """Whether a flow whose far end is ADDR (PORT; PROTO: "tcp", "udp"
        or another protocol's name; None when not known) is this rule's,
        as the programs judge it: what is not known is held by a DENY rule
        that asks for it (fail closed), and by no allow rule."""
        a = ipaddress.ip_address(addr)
        if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
            a = a.ipv4_mapped
        if self.net is not None and a not in ipaddress.ip_network(self.net):
            return False
        if self.address_only:
            return True
        if proto is None:
            return deny
        if proto not in self.protocols:
            return False
        if self.has_ports:
            return deny if port is None else self.port_lo <= port <= self.port_hi
        return True


def _port(raw: str, what: str, whole: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise NetleakError(f"{what} {whole!r}: port {raw!r} is not a number from 1 to 65535 "
                           f"(give {SYNTAX}, e.g. 192.168.1.0/24:631/tcp)")
    return int(raw)


def _net(raw: str, what: str, whole: str) -> str:
    if "%" in raw:
        raise NetleakError(f"{what} {whole!r}: give the address without a %zone "
                           f"(the session's interface is the zone)")
    try:
        net = ipaddress.ip_network(raw, strict=False)
    except ValueError:
        part = "" if raw == whole else f"{raw!r} "
        raise NetleakError(f"{what} {whole!r}: {part}is not an address or prefix (give "
                           f"{SYNTAX}, e.g. 192.168.1.0/24 or [2001:db8::/64]:443)") from None
    if net.version == 6:
        if net.subnet_of(_MAPPED):      # as the kernel sees it: IPv4
            net = ipaddress.ip_network(
                f"{net.network_address.ipv4_mapped}/{net.prefixlen - 96}")
        elif net.supernet_of(_MAPPED) and net.prefixlen:
            raise NetleakError(f"{what} {whole!r} covers all of IPv4 (as ::ffff:0:0/96): "
                               f"name an IPv4 prefix for IPv4 destinations")
    return str(net)


def parse(raw: str, what: str = "--allow") -> NetRule:
    """One rule from its text; NetleakError (one line) says what is wrong."""
    whole = raw.strip()[:60]
    text = raw.strip()
    if not text:
        raise NetleakError(f"{what} is empty: give {SYNTAX}, e.g. 192.168.1.0/24:631/tcp")
    proto = ""
    head, slash, last = text.rpartition("/")
    if slash and last.isalpha():
        if last.lower() not in PROTOCOLS:
            raise NetleakError(f"{what} {whole!r}: the protocol is tcp or udp")
        proto, text = last.lower(), head
    net, ports = text, ""
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or (close + 1 < len(text) and text[close + 1] != ":"):
            raise NetleakError(f"{what} {whole!r}: write an IPv6 prefix with a port as "
                               f"[2001:db8::/64]:443")
        net, ports = text[1:close], text[close + 2:]
        if close + 1 == len(text):
            ports = ""
        elif not ports:
            raise NetleakError(f"{what} {whole!r}: a port after ':' is missing")
    elif text.count(":") == 1:
        net, ports = text.split(":")
        if not ports:
            raise NetleakError(f"{what} {whole!r}: a port after ':' is missing")
    lo = hi = 0
    if ports:
        first, dash, last = ports.partition("-")
        lo = _port(first, what, whole)
        hi = _port(last, what, whole) if dash else lo
        if hi < lo:
            raise NetleakError(f"{what} {whole!r}: the port range {lo}-{hi} runs backwards")
    rule = NetRule(net=_net(net, what, whole) if net else None, port_lo=lo, port_hi=hi,
                   proto=proto)
    if rule.net is None and rule.address_only:
        raise NetleakError(f"{what} {whole!r} names nothing: give {SYNTAX}")
    return rule


def parse_all(values, what: str, limit: int) -> tuple[str, ...]:
    """VALUES as canonical rule texts, duplicates dropped, at most LIMIT."""
    out: list[str] = []
    for raw in values:
        text = parse(raw, what).text()
        if text not in out:
            out.append(text)
    if len(out) > limit:
        raise NetleakError(f"{what} gives {len(out)} rules: at most {limit} (use wider ones)")
    return tuple(out)


def rules(texts) -> tuple[NetRule, ...]:
    """Canonical texts (as kept in state) back as rules."""
    return tuple(parse(t) for t in texts)


def covers(texts, addr: str, port: int, protos=("udp", "tcp")) -> bool:
    """Whether one of the rules TEXTS holds ADDR:PORT for one of PROTOS."""
    return any(r.holds(addr, port, p) for r in rules(texts) for p in protos)


def first_holding(texts, addr: str, port: int | None, proto: str | None,
                  deny: bool = False) -> int | None:
    """The index of the first of TEXTS that holds the flow, or None."""
    for i, r in enumerate(rules(texts)):
        if r.holds(addr, port, proto, deny):
            return i
    return None
