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


# ---------- every socket: the dump `netleak connections` reads ----------

NLM_F_DUMP = 0x300
NLMSG_DONE = 3
NLA_F_NESTED = 0x8000
INET_DIAG_INFO = 2                   # struct tcp_info (TCP)
INET_DIAG_SK_BPF_STORAGES = 20       # the storages asked for (nested)
INET_DIAG_REQ_SK_BPF_STORAGES = 2    # in the request: which maps (nested)
SK_DIAG_BPF_STORAGE_REQ_MAP_FD = 1
SK_DIAG_BPF_STORAGE = 1
SK_DIAG_BPF_STORAGE_MAP_VALUE = 3
TCP_LISTEN = 10
_MSG_TAIL = struct.Struct("<IIIII")  # expires, rqueue, wqueue, uid, inode
# struct tcp_info: bytes_acked, bytes_received (u64), segs_out, segs_in (u32)
_TCP_COUNTS = struct.Struct("<QQII")
TCP_COUNTS_AT = 120


@dataclasses.dataclass(frozen=True)
class Diag:
    """One socket as the dump tells it."""
    family: int
    protocol: int
    state: int              # TCP_* (UDP: 1 connected, 7 not)
    src: str
    sport: int
    dst: str
    dport: int
    cookie: int
    uid: int
    inode: int
    cgroup_id: int = 0
    tcp: tuple[int, int, int, int] | None = None    # bytes acked, received; segs out, in
    storage: bytes | None = None                    # the first map's value (TCP only)


def _attr(kind: int, payload: bytes) -> bytes:
    out = struct.pack("<HH", 4 + len(payload), kind) + payload
    return out + b"\0" * (-len(out) % 4)


def dump_request(family: int, protocol: int, storage_fds=(), seq: int = 1) -> bytes:
    """The query for every socket of FAMILY and PROTOCOL (but TIME_WAIT's),
    with tcp_info and the value of each socket storage map in STORAGE_FDS."""
    body = (_REQ.pack(family, protocol, 1 << (INET_DIAG_INFO - 1), 0,
                      0xFFFFFFFF & ~(1 << 6)) +
            _ID.pack(0, 0, b"\0" * 16, b"\0" * 16) + _ID_TAIL.pack(0, NO_COOKIE, NO_COOKIE))
    if storage_fds:
        fds = b"".join(_attr(SK_DIAG_BPF_STORAGE_REQ_MAP_FD, struct.pack("<I", fd))
                       for fd in storage_fds)
        body += _attr(INET_DIAG_REQ_SK_BPF_STORAGES | NLA_F_NESTED, fds)
    return _NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY,
                       NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def _attrs(buf: bytes, at: int, end: int):
    while at + 4 <= end:
        alen, atype = struct.unpack_from("<HH", buf, at)
        if alen < 4 or at + alen > end:
            return
        yield atype & 0x3FFF, at + 4, at + alen
        at += (alen + 3) & ~3


def _addr(family: int, raw: bytes) -> str:
    if family == socket.AF_INET:
        return str(ipaddress.IPv4Address(raw[:4]))
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a) if a.ipv4_mapped else str(a)


def parse_dump(buf: bytes, protocol: int) -> tuple[list[Diag], bool]:
    """The sockets in one read of a dump, and whether it is over."""
    out: list[Diag] = []
    at = 0
    while at + _NLMSG.size <= len(buf):
        length, kind, _, _, _ = _NLMSG.unpack_from(buf, at)
        if length < _NLMSG.size or at + length > len(buf):
            break
        if kind == NLMSG_DONE:
            return out, True
        if kind == NLMSG_ERROR:
            (err,) = struct.unpack_from("<i", buf, at + _NLMSG.size)
            raise OSError(-err, os_strerror(-err))
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSG.size + MSG_SIZE:
            out.append(_diag(buf, at + _NLMSG.size, at + length, protocol))
        at += (length + 3) & ~3
    return out, False


def os_strerror(code: int) -> str:
    import os
    return os.strerror(code)


def _diag(buf: bytes, at: int, end: int, protocol: int) -> Diag:
    family, state, _, _ = _MSG_HEAD.unpack_from(buf, at)
    sport, dport, src, dst = _ID.unpack_from(buf, at + _MSG_HEAD.size)
    _, lo, hi = _ID_TAIL.unpack_from(buf, at + _MSG_HEAD.size + _ID.size)
    _, _, _, uid, inode = _MSG_TAIL.unpack_from(buf, at + _MSG_HEAD.size + _ID.size +
                                                _ID_TAIL.size)
    cgroup, tcp, storage = 0, None, None
    for kind, a, b in _attrs(buf, at + MSG_SIZE, end):
        if kind == INET_DIAG_CGROUP_ID and b - a >= 8:
            (cgroup,) = struct.unpack_from("<Q", buf, a)
        elif kind == INET_DIAG_INFO and b - a >= TCP_COUNTS_AT + _TCP_COUNTS.size:
            tcp = _TCP_COUNTS.unpack_from(buf, a + TCP_COUNTS_AT)
        elif kind == INET_DIAG_SK_BPF_STORAGES and storage is None:
            for k2, a2, b2 in _attrs(buf, a, b):
                if k2 != SK_DIAG_BPF_STORAGE:
                    continue
                for k3, a3, b3 in _attrs(buf, a2, b2):
                    if k3 == SK_DIAG_BPF_STORAGE_MAP_VALUE and storage is None:
                        storage = bytes(buf[a3:b3])
    return Diag(family=family, protocol=protocol, state=state, src=_addr(family, src),
                sport=sport, dst=_addr(family, dst), dport=dport, cookie=lo | hi << 32,
                uid=uid, inode=inode, cgroup_id=cgroup, tcp=tcp, storage=storage)


def dump(storage_fds=()) -> list[Diag]:
    """Every TCP and UDP socket of this network namespace (both families,
    listening ones left out), with what STORAGE_FDS' maps keep for them
    (the kernel tells those of TCP sockets only)."""
    out: list[Diag] = []
    with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC,
                       NETLINK_SOCK_DIAG) as s:
        s.settimeout(2.0)
        seq = 0
        for protocol in (socket.IPPROTO_TCP, socket.IPPROTO_UDP):
            for family in (socket.AF_INET, socket.AF_INET6):
                seq += 1
                s.send(dump_request(family, protocol, storage_fds, seq))
                done = False
                while not done:
                    got, done = parse_dump(s.recv(1 << 20), protocol)
                    out += [d for d in got
                            if not (protocol == socket.IPPROTO_TCP and d.state == TCP_LISTEN)]
    return out
