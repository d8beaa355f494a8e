"""Checks of user input that need no kernel (pure)."""
from __future__ import annotations

from .errors import NetleakError

IFNAMSIZ = 16


def interface_name(name: str) -> str:
    """Return NAME if the kernel could accept it as an interface name."""
    if not name:
        raise NetleakError("interface name is empty: give one such as wg0 or tun0")
    try:
        size = len(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:      # a lone surrogate, e.g. a JSON \ud800 escape
        raise NetleakError(f"invalid interface name {name!r}: not text") from None
    if size >= IFNAMSIZ:
        raise NetleakError(
            f"invalid interface name {name!r}: at most {IFNAMSIZ - 1} bytes")
    if name in (".", "..") or any(c in name for c in "/:") or any(
            c.isspace() or not c.isprintable() for c in name):
        raise NetleakError(
            f"invalid interface name {name!r}: no '/', ':', spaces or control "
            f"characters (see 'ip -br link' for names)")
    if name == "lo":
        raise NetleakError("'lo' cannot carry traffic off the machine: "
                           "choose the interface that should (e.g. wg0)")
    return name


def gateways(values: tuple[str, ...] | list[str]) -> tuple[str | None, str | None]:
    """Split --via values into (IPv4 gateway, IPv6 gateway)."""
    import ipaddress  # only when --via is given
    v4: str | None = None
    v6: str | None = None
    for raw in values:
        _no_zone(raw, "--via")
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            raise NetleakError(
                f"--via {raw!r} is not an IP address: give the gateway's "
                f"address, e.g. --via 192.0.2.1") from None
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
            raise NetleakError(f"--via {raw}: a gateway must be a unicast address")
        if addr.version == 6 and addr.ipv4_mapped is not None:
            raise NetleakError(f"--via {raw}: give the IPv4 gateway as IPv4 "
                               f"({addr.ipv4_mapped})")
        if addr.version == 4:
            if v4:
                raise NetleakError("--via given twice for IPv4: give one gateway per family")
            v4 = str(addr)
        else:
            if v6:
                raise NetleakError("--via given twice for IPv6: give one gateway per family")
            v6 = str(addr)
    return v4, v6


def _no_zone(raw: str, what: str) -> None:
    """IPv6 zones (fe80::1%wg0) are refused: the interface is the zone."""
    if "%" in raw:
        raise NetleakError(f"{what} {raw[:40]!r}: give the address without a %zone "
                           f"(the session's interface is the zone)")


def __getattr__(name: str):
    """MAX_DNS and MAX_ALLOW, the header's limits (core/abi.py), read when
    first asked for: netleak-exec's start loads no struct layouts."""
    if name in ("MAX_DNS", "MAX_ALLOW"):
        from . import abi
        return getattr(abi, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def dns_servers(values: tuple[str, ...] | list[str], what: str = "--dns") -> tuple[str, ...]:
    """--dns values: unicast, non-loopback addresses, at most MAX_DNS."""
    import ipaddress
    from .abi import MAX_DNS
    out: list[str] = []
    for raw in values:
        _no_zone(raw, what)
        try:
            addr = ipaddress.ip_address(raw.strip())
        except ValueError:
            raise NetleakError(f"{what} {raw[:40]!r} is not an IP address: give the "
                               f"resolver's address, e.g. 10.64.0.1") from None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
            addr = addr.ipv4_mapped
        if addr.is_loopback or addr.is_unspecified or addr.is_multicast:
            raise NetleakError(f"{what} {addr}: a resolver reached through the interface "
                               f"must have a unicast, non-loopback address")
        if str(addr) not in out:
            out.append(str(addr))
    if len(out) > MAX_DNS:
        raise NetleakError(f"{what} gives {len(out)} resolvers: at most {MAX_DNS}")
    return tuple(out)


def allow_rules(values: tuple[str, ...] | list[str],
                what: str = "--allow") -> tuple[str, ...]:
    """--allow values: rules (core/netrules.py: [CIDR][:PORT[-PORT]][/tcp|/udp];
    an address alone is a host) as their canonical texts, at most MAX_ALLOW.
    IPv4-mapped IPv6 prefixes are taken as the IPv4 ones they are."""
    from . import netrules
    from .abi import MAX_ALLOW
    out = netrules.parse_all(values, what, MAX_ALLOW)
    for text in out:
        r = netrules.parse(text, what)
        if r.address_only and r.net.endswith("/0"):
            raise NetleakError(f"{what} {text} allows everything: that is no protection; "
                               f"name a prefix, e.g. 192.168.1.0/24[:631/tcp]")
    return out


def deny_rules(values: tuple[str, ...] | list[str],
               what: str = "--deny") -> tuple[str, ...]:
    """--deny values: rules as for --allow (any prefix, 0 included), at most
    MAX_DENY."""
    from . import netrules
    from .abi import MAX_DENY
    return netrules.parse_all(values, what, MAX_DENY)


def guard_request(dns: list[str], allow: list[str], block: bool, via: list[str],
                  deny: list[str] = ()) -> dict:
    """--dns, --allow, --deny, --block (and --via) of netleak-exec and
    netleak attach, checked: what the daemon's open request carries."""
    if block and via:
        raise NetleakError("--via goes with an interface, not with --block")
    d, a, n = dns_servers(dns), allow_rules(allow), deny_rules(deny)
    guards(d, a, block, n)
    out = {"dns": list(d), "allow": list(a), "block": block}
    if n:
        out["deny"] = list(n)
    return out


def guards(dns: tuple[str, ...], allow: tuple[str, ...], block: bool,
           deny: tuple[str, ...] = ()) -> None:
    """Refuse combinations that cannot work."""
    from . import netrules
    for d in dns:
        held = netrules.first_holding(deny, d, 53, "udp", deny=True)
        if held is not None:
            raise NetleakError(f"--dns {d} is refused by --deny {deny[held]}: drop one "
                               f"of them")
    if block and dns:
        for d in dns:
            if not netrules.covers(allow, d, 53):
                raise NetleakError(f"--dns {d} with --block: nothing leaves in no-network "
                                   f"mode; --allow {d} too, or drop --dns")


def proxy_request(url: str, block: bool, dns: list[str], iface: str,
                  via: list[str]) -> dict:
    """The proxy part of a request to the daemon, checked."""
    from .proxyspec import parse
    spec = parse(url)
    if block:
        raise NetleakError("--proxy and --block exclude each other: --block is no "
                           "network at all")
    if dns:
        raise NetleakError("--dns has no use with --proxy: the session's DNS is answered "
                           "by netleak (socks5h, http) or refused (socks5)")
    if via and not iface:
        raise NetleakError("--via needs IFACE: netleak-exec --proxy URL IFACE COMMAND...")
    # looked up here, not by the daemon (one slow lookup would hold up all)
    from .proxyspec import resolve
    return {"proxy": spec.url(secret=True), "proxy_addr": resolve(spec)}
