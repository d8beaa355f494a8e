"""Answers for a workload's DNS queries in proxy mode (pure).

The workload may not resolve names itself: with a proxy that takes names
(socks5h), each name asked for gets a fake address from FAKE_NET4, which the
proxy side maps back to the name; otherwise every query is refused. Message
format: RFC 1035 section 4; over TCP: RFC 1035 section 4.2.2."""
from __future__ import annotations

import collections
import dataclasses
import ipaddress
import struct
import time
from typing import Sequence

FAKE_NET4 = "198.18.0.0/15"      # RFC 2544 benchmarking range
RCODE_NOERROR, RCODE_SERVFAIL, RCODE_NXDOMAIN, RCODE_NOTIMP, RCODE_REFUSED = 0, 2, 3, 4, 5
QTYPE_A, QTYPE_AAAA, QTYPE_PTR = 1, 28, 12
QCLASS_IN = 1
FAKE_TTL = 60

_HEADER = struct.Struct("!6H")
_QR, _RD, _RA = 0x8000, 0x0100, 0x0080


@dataclasses.dataclass(frozen=True)
class Query:
    """The question of a query; QUESTION is its raw wire form."""

    id: int
    flags: int
    name: str            # lower-case, no trailing dot; "" for the root
    qtype: int
    qclass: int
    question: bytes


def _name(packet: bytes, pos: int) -> tuple[str, int]:
    """The uncompressed name at POS, and the offset after it."""
    labels: list[str] = []
    start = pos
    while True:
        if pos >= len(packet):
            raise ValueError("name runs past the end of the packet")
        n = packet[pos]
        if n & 0xC0 == 0xC0:
            raise ValueError("compression pointer in the question")
        if n > 63:
            raise ValueError(f"label of {n} bytes: at most 63")
        label = packet[pos + 1:pos + 1 + n]
        pos += 1 + n
        if pos - start > 255:
            raise ValueError("name longer than 255 bytes")
        if n == 0:
            return ".".join(labels), pos
        if len(label) < n:
            raise ValueError("label runs past the end of the packet")
        if not all(0x21 <= b <= 0x7E and b != 0x2E for b in label):
            raise ValueError("label with a byte that is not printable ASCII")
        labels.append(label.decode("ascii").lower())


def parse_query(packet: bytes) -> Query:
    """The question of query PACKET; ValueError when it is malformed."""
    if len(packet) < _HEADER.size:
        raise ValueError(f"{len(packet)} bytes: too short for a DNS header")
    qid, flags, qdcount, _, _, _ = _HEADER.unpack_from(packet)
    if flags & _QR:
        raise ValueError("a response, not a query")
    if (flags >> 11) & 0xF:
        raise ValueError(f"opcode {(flags >> 11) & 0xF}, not QUERY")
    if qdcount != 1:
        raise ValueError(f"{qdcount} questions, not 1")
    name, pos = _name(packet, _HEADER.size)
    if pos + 4 > len(packet):
        raise ValueError("question runs past the end of the packet")
    qtype, qclass = struct.unpack_from("!HH", packet, pos)
    return Query(qid, flags, name, qtype, qclass, packet[_HEADER.size:pos + 4])


def _message(q: Query, rcode: int, records: Sequence[tuple[int, bytes]],
             ttl: int) -> bytes:
    """A response to Q with RECORDS (type, rdata), all owned by its name."""
    flags = _QR | (q.flags & _RD) | _RA | (rcode & 0xF)
    out = [_HEADER.pack(q.id, flags, 1, len(records), 0, 0), q.question]
    for rtype, rdata in records:
        out.append(struct.pack("!HHHIH", 0xC00C, rtype, QCLASS_IN, ttl, len(rdata)))
        out.append(rdata)
    return b"".join(out)


def reply(q: Query, rcode: int = RCODE_NOERROR, addrs: Sequence[str] = (),
          ttl: int = FAKE_TTL) -> bytes:
    """A response to Q: RCODE, and one A or AAAA record per address."""
    records = []
    for addr in addrs:
        a = ipaddress.ip_address(addr)
        records.append((QTYPE_A if a.version == 4 else QTYPE_AAAA, a.packed))
    return _message(q, rcode, records, ttl)


def encode_name(name: str) -> bytes:
    """NAME in uncompressed wire form; ValueError when it does not fit."""
    labels = [x.encode("ascii") for x in name.rstrip(".").split(".")] if name.strip(".") \
        else []
    if any(not 1 <= len(x) <= 63 for x in labels):
        raise ValueError(f"name {name[:60]!r} has an empty or too long label")
    wire = b"".join(bytes([len(x)]) + x for x in labels) + b"\0"
    if len(wire) > 255:
        raise ValueError(f"name {name[:60]!r} is longer than 255 bytes")
    return wire


class FakePool:
    """Addresses of an IPv4 NETWORK handed out to names: the same name gets
    the same address while remembered; once CAPACITY (or the network) is
    used up, the least recently used name's address goes to the new one,
    but only if unused for HOLD seconds: an address a program may still
    hold is never given to another name (a flood of lookups cannot steer
    it elsewhere); the pool is then full. A new name gets an address drawn
    at random (RANDOM, an int in [0, n) for n), so addresses say nothing of
    how many names came before, or in what order."""

    def __init__(self, network: str = FAKE_NET4, capacity: int = 65536,
                 hold: float = 10 * FAKE_TTL, random=None) -> None:
        net = ipaddress.ip_network(network)
        if net.version != 4:
            raise ValueError(f"fake network {network}: must be IPv4 (A records)")
        size = net.num_addresses - 2              # not network, not broadcast
        if size < 1 or capacity < 1:
            raise ValueError(f"fake network {network} with capacity {capacity}: "
                             f"no address to hand out")
        self.network = net
        self.size = size
        self.capacity = min(capacity, size)
        self._first = int(net.network_address) + 1
        self.hold = hold
        if random is None:
            import secrets
            random = secrets.randbelow
        self._random = random
        # name -> (address, last used, time.monotonic()), least recent first
        self._by_name: collections.OrderedDict[str, tuple[int, float]] = \
            collections.OrderedDict()
        self._by_addr: dict[int, str] = {}

    def __len__(self) -> int:
        return len(self._by_name)

    def __contains__(self, addr: object) -> bool:
        """ADDR lies within the network, handed out or not."""
        a = _ipv4(addr)
        return a is not None and a in self.network

    def address_for(self, name: str, now: float | None = None) -> str | None:
        """NAME's address (it becomes the most recently used), or None when
        the pool is full."""
        now = time.monotonic() if now is None else now
        if name in self._by_name:
            addr = self._by_name.pop(name)[0]
        elif len(self._by_name) < self.capacity:
            addr = self._free()
        else:
            old, (addr, used) = next(iter(self._by_name.items()))
            if now - used < self.hold:
                return None
            del self._by_name[old]
        self._by_name[name] = (addr, now)
        self._by_addr[addr] = name
        return str(ipaddress.IPv4Address(addr))

    def _free(self) -> int:
        """A random address no name holds (there is one: fewer names than
        addresses)."""
        start = self._random(self.size)
        for i in range(self.size):
            addr = self._first + (start + i) % self.size
            if addr not in self._by_addr:
                return addr
        raise AssertionError("no free address below capacity")

    def peek(self, addr: str) -> str | None:
        """The name ADDR was handed out to, or None; its use is not
        renewed (one dict read: safe from another thread than the relay's)."""
        a = _ipv4(addr)
        return self._by_addr.get(int(a)) if a is not None else None

    def name_for(self, addr: str, now: float | None = None) -> str | None:
        """The name ADDR was handed out to (now most recently used), or None."""
        a = _ipv4(addr)
        name = self._by_addr.get(int(a)) if a is not None else None
        if name is not None:
            self._by_name[name] = (self._by_name.pop(name)[0],
                                   time.monotonic() if now is None else now)
        return name


def _ipv4(addr: object) -> ipaddress.IPv4Address | None:
    try:
        return ipaddress.IPv4Address(addr)  # type: ignore[arg-type]
    except ValueError:
        return None


def respond(packet: bytes, pool: FakePool | None) -> tuple[bytes | None, str]:
    """The answer to query PACKET, and a word for the log. POOL None: names
    may not be resolved (the proxy takes addresses only), every query is
    refused. Malformed: no answer."""
    try:
        q = parse_query(packet)
    except ValueError:
        return None, "malformed"
    if pool is None:
        return reply(q, RCODE_REFUSED), "refused-local"
    if q.qclass == QCLASS_IN and q.name:
        if q.qtype == QTYPE_A:
            addr = pool.address_for(q.name)
            if addr is None:
                return reply(q, RCODE_SERVFAIL), "pool-full"
            return reply(q, addrs=[addr]), "fake"
        if q.qtype == QTYPE_AAAA:
            return reply(q), "nodata"
    # not PTR either: any local program may ask, and the names sessions
    # looked up are theirs
    return reply(q, RCODE_REFUSED), "refused-type"


def tcp_frames(buf: bytes) -> tuple[list[bytes], bytes]:
    """DNS over TCP: the complete length-prefixed messages in BUF, and the
    rest (a message not all in yet)."""
    msgs: list[bytes] = []
    pos = 0
    while pos + 2 <= len(buf):
        (n,) = struct.unpack_from("!H", buf, pos)
        if pos + 2 + n > len(buf):
            break
        msgs.append(buf[pos + 2:pos + 2 + n])
        pos += 2 + n
    return msgs, buf[pos:]


def tcp_frame(msg: bytes) -> bytes:
    """MSG with its 2-byte length prefix, for DNS over TCP."""
    if len(msg) > 0xFFFF:
        raise ValueError(f"DNS message of {len(msg)} bytes: at most 65535 over TCP")
    return struct.pack("!H", len(msg)) + msg
