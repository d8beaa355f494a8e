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

RESOLVED_LINKS = "/run/systemd/resolve/netif"


def _address(token: str) -> str | None:
    """The address of one SERVERS= entry, without port, zone or name."""
    token = token.split("#", 1)[0]
    if token.startswith("["):               # [v6]:port or [v6%zone]:port
        token = token[1:].split("]", 1)[0]
    elif token.count(":") == 1:             # v4:port
        token = token.split(":", 1)[0]
    token = token.split("%", 1)[0]
    try:
        a = ipaddress.ip_address(token)
    except ValueError:
        return None
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
                      limit: int = 4) -> tuple[str, ...]:
    """The resolvers systemd-resolved knows for IFINDEX; () when none."""
    try:
        with open(os.path.join(root, str(int(ifindex)))) as f:
            return parse_link_state(f.read(65536))[:limit]
    except (OSError, UnicodeDecodeError):
        return ()
