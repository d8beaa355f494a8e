"""Which resolvers an interface announces (pure, but for one file read).

systemd-resolved keeps each link's DNS servers (set by wg-quick through
resolvconf, by NetworkManager, by networkd) in /run/systemd/resolve/netif/
IFINDEX as `SERVERS=addr[:port][%ifname][#name] ...`. When a session is
given no --dns, its loopback DNS goes to these; when none are known, it is
refused rather than sent to a stub that would forward it by the default
route.
"""
from __future__ import annotations

import ipaddress
import os

from .abi import MAX_DNS

RESOLVED_LINKS = "/run/systemd/resolve/netif"


def _address(token: str) -> str | None:
    """The address of one SERVERS= entry, without zone or name; None when
    it is not usable (a port other than 53: queries are sent to 53)."""
    token = token.split("#", 1)[0]
    port = "53"
    if token.startswith("["):               # [v6]:port or [v6%zone]:port
        token, _, rest = token[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else port
    elif token.count(":") == 1:             # v4:port
        token, port = token.split(":", 1)
    if port != "53":
        return None
    token = token.split("%", 1)[0]
    try:
        a = ipaddress.ip_address(token)
    except ValueError:
        return None
    if a.version == 6 and a.ipv4_mapped is not None:   # as --dns takes it: IPv4
        a = a.ipv4_mapped
    if a.is_loopback or a.is_unspecified or a.is_multicast or a.is_link_local:
        return None
    return str(a)


def parse_link_state(text: str) -> tuple[str, ...]:
    """The usable servers of a resolved link state file, in order."""
    out: list[str] = []
    for line in text.splitlines():
        key, _, value = line.partition("=")
        if key.strip() != "SERVERS":
            continue
        for token in value.split():
            addr = _address(token)
            if addr and addr not in out:
                out.append(addr)
    return tuple(out)


def interface_servers(ifindex: int, root: str = RESOLVED_LINKS,
                      limit: int = MAX_DNS) -> tuple[str, ...]:
    """The resolvers systemd-resolved knows for IFINDEX; () when none."""
    try:
        with open(os.path.join(root, str(int(ifindex)))) as f:
            return parse_link_state(f.read(65536))[:limit]
    except (OSError, UnicodeDecodeError):
        return ()
