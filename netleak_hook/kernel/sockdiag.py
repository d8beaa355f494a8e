"""Whose socket is at the other end: the kernel's socket diagnostics
(NETLINK_SOCK_DIAG, inet_diag) asked for one socket by its addresses.

The relay on loopback hears from ADDR:PORT; which socket that is (its
cookie, its cgroup) only the kernel can say, and no other process can make
it say otherwise. Building the request and reading the answer are pure;
`lookup` is the one round trip.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import socket
import struct

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 1
NLMSG_ERROR = 2
INET_DIAG_CGROUP_ID = 21
NO_COOKIE = 0xFFFFFFFF

_NLMSG = struct.Struct("<IHHII")
_REQ = struct.Struct("<BBBBI")           # family, protocol, ext, pad, states
_ID = struct.Struct(">HH16s16s")         # sport, dport, src, dst (network order)
_ID_TAIL = struct.Struct("<III")         # interface, cookie (two halves)
_MSG_HEAD = struct.Struct("<BBBB")       # family, state, timer, retrans
MSG_SIZE = 72                            # struct inet_diag_msg


@dataclasses.dataclass(frozen=True)
class Found:
    cookie: int         # the socket's cookie (bpf_get_socket_cookie's)
    cgroup_id: int      # the cgroup it was made in (0: not told)


def _packed(addr: str) -> tuple[int, bytes]:
    a = ipaddress.ip_address(addr.split("%", 1)[0])
    if a.version == 4:
        return socket.AF_INET, a.packed + b"\0" * 12
    return socket.AF_INET6, a.packed


def request(protocol: int, local: tuple[str, int], remote: tuple[str, int],
            seq: int = 1) -> bytes:
    """The query for the socket of PROTOCOL (TCP, UDP) whose own end is
    LOCAL and whose peer is REMOTE (for an unconnected UDP socket, the
    one a datagram from REMOTE to LOCAL would reach). For UDP the kernel
    takes the two the other way round (as it always has)."""
    fam, lpacked = _packed(local[0])
    rfam, rpacked = _packed(remote[0])
    if fam != rfam:
        raise ValueError(f"{local[0]} and {remote[0]} are not of one family")
    if protocol == socket.IPPROTO_UDP:
        src, dst = (rpacked, remote[1]), (lpacked, local[1])
    else:
        src, dst = (lpacked, local[1]), (rpacked, remote[1])
    body = (_REQ.pack(fam, protocol, 0, 0, 0xFFFFFFFF) +
            _ID.pack(src[1], dst[1], src[0], dst[0]) +
            _ID_TAIL.pack(0, NO_COOKIE, NO_COOKIE))
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST, seq, 0) + \
        body


def parse(reply: bytes) -> Found | None:
    """The socket an answer names; None when there is none ("no such
    socket" comes as an error)."""
    if len(reply) < _NLMSG.size:
        return None
    length, kind, _, _, _ = _NLMSG.unpack_from(reply)
    if kind == NLMSG_ERROR or length < _NLMSG.size + MSG_SIZE or len(reply) < length:
        return None
    at = _NLMSG.size
    lo, hi = struct.unpack_from("<II", reply, at + _MSG_HEAD.size + _ID.size + 4)
    cgroup = 0
    off = at + MSG_SIZE
    while off + 4 <= length:
        alen, atype = struct.unpack_from("<HH", reply, off)
        if alen < 4:
            break
        if atype & 0x7FFF == INET_DIAG_CGROUP_ID and alen >= 12:
            (cgroup,) = struct.unpack_from("<Q", reply, off + 4)
        off += (alen + 3) & ~3
    return Found(cookie=lo | hi << 32, cgroup_id=cgroup)


def lookup(protocol: int, local: tuple[str, int], remote: tuple[str, int]) -> Found | None:
    """The socket of PROTOCOL at LOCAL with peer REMOTE (see `request`),
    in this process's network namespace, or None."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as s:
        s.settimeout(2.0)
        s.send(request(protocol, local, remote))
        return parse(s.recv(65536))
