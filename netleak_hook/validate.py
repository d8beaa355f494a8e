"""Checks of user input that need no kernel (pure)."""
from __future__ import annotations

from .errors import NetleakError

IFNAMSIZ = 16


def interface_name(name: str) -> str:
    """Return NAME if the kernel could accept it as an interface name."""
    if not name:
        raise NetleakError("interface name is empty: give one such as wg0 or tun0")
    if len(name.encode("utf-8", "surrogateescape")) >= IFNAMSIZ:
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
        try:
            addr = ipaddress.ip_address(raw)
        except ValueError:
            raise NetleakError(
                f"--via {raw!r} is not an IP address: give the gateway's "
                f"address, e.g. --via 192.0.2.1") from None
        if addr.is_unspecified or addr.is_multicast or addr.is_loopback:
            raise NetleakError(f"--via {raw}: a gateway must be a unicast address")
        if addr.version == 4:
            if v4:
                raise NetleakError("--via given twice for IPv4: give one gateway per family")
            v4 = str(addr)
        else:
            if v6:
                raise NetleakError("--via given twice for IPv6: give one gateway per family")
            v6 = str(addr)
    return v4, v6
