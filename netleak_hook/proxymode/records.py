"""What the relay knows of a redirected socket: the record the programs
filed under its cookie, whose socket it is (as the kernel says), the
session's route to its proxy, and what to ask the proxy for.

The programs file, in the map `redirect`, where each socket they sent
elsewhere was going and whose it is (struct nl_redirect); the relay asks
socket diagnostics for the cookie of the socket it hears from, which no
process can make lie.
"""
from __future__ import annotations

import dataclasses
import ipaddress
from typing import Callable

from . import fakedns
from ..core import abi

REDIRECT_SIZE = abi.REDIRECT.size     # the map `redirect`'s value, by socket cookie
_STAND_INS = ipaddress.ip_network(fakedns.FAKE_NET4)


@dataclasses.dataclass(frozen=True)
class Route:
    """How one session's connections leave: what the relay needs of it."""

    scheme: str             # socks5, socks5h, http
    addr: str               # the proxy's address (resolved at session start)
    port: int
    user: str = ""
    password: str = ""
    iface: str = ""         # bind the connection to the proxy to it ("": routing decides)
    mark: int = 0           # and give it this fwmark
    info: dict = dataclasses.field(default_factory=dict)  # session id, cgroup... for events

    @property
    def names(self) -> bool:
        """The proxy takes host names (so DNS gets stand-in addresses)."""
        return self.scheme != "socks5"


@dataclasses.dataclass(frozen=True)
class Redirect:
    """Where a session's socket was going, and where the programs sent it."""

    orig_addr: str
    orig_port: int      # host order
    server_addr: str
    server_port: int
    cgroup: int         # the session (its policy key)
    proxy: bool         # a TCP connection to the relay


def unpack_redirect(raw: bytes) -> Redirect:
    r = abi.REDIRECT.unpack(raw)
    return Redirect(abi.addr_text(r["orig"]), abi.net_port(r["orig_port"]),
                    abi.addr_text(r["server"]), abi.net_port(r["server_port"]), r["cgroup"],
                    bool(r["proxy"]))


def cookie_key(cookie: int) -> bytes:
    return cookie.to_bytes(8, "little")


def same_addr(a: str, b: str) -> bool:
    def norm(x: str):
        v = ipaddress.ip_address(x.split("%", 1)[0])
        return v.ipv4_mapped or v if v.version == 6 else v
    return norm(a) == norm(b)


def kernel_identify(protocol: int, peer: tuple, local: tuple) -> int | None:
    """The cookie of the socket at PEER that talks to LOCAL, as the kernel
    says (None: there is none, or it is gone)."""
    from ..kernel import sockdiag
    try:
        found = sockdiag.lookup(protocol, peer[:2], local[:2])
    except OSError:
        return None
    return found.cookie if found else None


def destination(addr: str, port: int, route: Route,
                name_for: Callable[[str], str | None]) -> tuple[str | None, str]:
    """What to ask the proxy for (pure): the host (the name behind a
    stand-in address, when the proxy takes names), or None and why not."""
    if route.names:
        name = name_for(addr)
        if name is not None:
            return name, ""
        if ipaddress.ip_address(addr) in _STAND_INS:
            return None, (f"{addr} is a stand-in address this session was not given "
                          f"(another session's, or from before the daemon restarted): "
                          f"look the name up again")
    return addr, ""
