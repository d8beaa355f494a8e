"""The kernel ABI, bpf/netleak.h, as userspace sees it: structs, codes, limits (pure).

A struct is data here: its members in the header's order, each (name, C
type) or (name, C type, count), a C type being one of the header's scalar
types or another Layout. Offsets, size and the struct module's format
follow from them by C's natural alignment. tests/unit/test_abi.py parses
the header and checks every layout, code and limit against it.

Light to import (nothing at all is imported here; the struct module and
ipaddress only when first used): core/validate.py asks for the limits.
"""
from __future__ import annotations

# ---------- limits and flags (#define) ----------
# Those the header lets a compile override (#ifndef) are its defaults; the
# programs are built with them (kernel/programs.py passes some as -D).

FLAG_KILL = 0x1             # NL_FLAG_KILL: the kill switch is on
FLAG_BLOCK = 0x2            # NL_FLAG_BLOCK: no-network mode
FLAG_PROXY = 0x4            # NL_FLAG_PROXY: proxy mode
MAX_DNS = 4                 # NL_MAX_DNS: resolvers per session
MAX_ALLOW = 8               # NL_MAX_ALLOW: --allow rules per session
MAX_DENY = 8                # NL_MAX_DENY: --deny rules per session
WINDOW_SHIFT = 30           # NL_WINDOW_SHIFT: the event limiter's window, ns >> it
LOOPBACK_IFINDEX = 1
DNS_PORT = 53
MAX_REDIRECTS = 1048576     # NL_MAX_REDIRECTS: sockets sent elsewhere, all sessions
SESSION_REDIRECTS = 8192    # NL_SESSION_REDIRECTS: ... of one session at once
MAX_LOCALS = 16384          # NL_MAX_LOCALS: this machine's addresses, all namespaces
MAX_DEPTH = 16              # NL_MAX_DEPTH: cgroup levels the ancestor walk covers
MAX_ENTRIES = 4096          # NL_MAX_ENTRIES: sessions (policy entries, counter slots)
NOPOLICY_RATE = 50          # NL_NOPOLICY_RATE: events per window without a policy
MAX_RINGS = 256             # NL_MAX_RINGS: event readers (network namespaces)
RING_PAGES = 16             # NL_RING_PAGES: each reader's ring, in pages

# the header's scalar types: struct module code and size (C aligns each
# to its size)
SCALARS = {"u8": ("B", 1), "char": ("B", 1), "u16": ("H", 2), "u32": ("I", 4),
           "u64": ("Q", 8)}
_BYTES = ("u8", "char")     # arrays of these are seen as bytes


class Layout:
    """One C struct of the header. A member's value in pack() and unpack():
    an int for a scalar; bytes for an array of u8 or char, and for a struct
    member whose layout is OPAQUE (seen as its bytes, as an address is); a
    tuple of COUNT ints, or of COUNT bytes for structs, for other arrays;
    the members of any other struct member inline, named MEMBER_INNER."""

    __slots__ = ("c_name", "fields", "opaque", "size", "align", "offsets", "format",
                 "names", "_shape", "_struct")

    def __init__(self, c_name: str, fields: tuple, opaque: bool = False) -> None:
        self.c_name = c_name
        self.fields = tuple(f if len(f) == 3 else (f[0], f[1], 0) for f in fields)
        self.opaque = opaque
        self.offsets: dict[str, int] = {}
        codes: list[str] = []
        self._shape: list[tuple[str, int, object]] = []   # name, values, default
        at, align = 0, 1
        for name, ctype, count in self.fields:
            size, field_align = _size_align(ctype)
            at = _pad(codes, at, field_align)
            self.offsets[name] = at
            align = max(align, field_align)
            if isinstance(ctype, Layout):
                if count:
                    codes += [f"{size}s"] * count
                    self._shape.append((name, count, b""))
                elif ctype.opaque:
                    codes.append(f"{size}s")
                    self._shape.append((name, 0, b""))
                else:
                    codes.append(ctype.format[1:])
                    self._shape += [(f"{name}_{n}", k, d) for n, k, d in ctype._shape]
            elif count and ctype in _BYTES:
                codes.append(f"{count}s")
                self._shape.append((name, 0, b""))
            else:
                codes.append(f"{count or ''}{SCALARS[ctype][0]}")
                self._shape.append((name, count, 0))
            at += size * (count or 1)
        self.size = _pad(codes, at, align)
        self.align = align
        self.format = "<" + "".join(c for c in codes if c)
        self.names = tuple(n for n, _, _ in self._shape)
        self._struct = None

    def __repr__(self) -> str:
        return f"Layout(struct {self.c_name}, {self.size} bytes)"

    @property
    def struct(self):
        """The struct.Struct of FORMAT, made when first asked for."""
        if self._struct is None:
            import struct
            self._struct = struct.Struct(self.format)
        return self._struct

    def pack(self, **values) -> bytes:
        """The C struct of VALUES; members not given are zero (a tuple
        shorter than its array is zero filled)."""
        flat: list = []
        for name, count, default in self._shape:
            v = values.pop(name, default if not count else ())
            if count:
                if len(v) > count:
                    raise ValueError(f"{self.c_name}.{name}: {len(v)} values, room for {count}")
                flat += [*v, *(default,) * (count - len(v))]
            else:
                flat.append(v)
        if values:
            raise TypeError(f"struct {self.c_name} has no member {sorted(values)[0]}")
        return self.struct.pack(*flat)

    def unpack(self, raw: bytes) -> dict:
        """The members of the C struct at the start of RAW, by name."""
        flat = self.struct.unpack_from(raw)
        out, at = {}, 0
        for name, count, _ in self._shape:
            if count:
                out[name] = flat[at: at + count]
                at += count
            else:
                out[name] = flat[at]
                at += 1
        return out


def _size_align(ctype) -> tuple[int, int]:
    if isinstance(ctype, Layout):
        return ctype.size, ctype.align
    size = SCALARS[ctype][1]
    return size, size


def _pad(codes: list[str], at: int, align: int) -> int:
    """AT rounded up to ALIGN, the padding bytes added to CODES."""
    pad = -at % align
    if pad:
        codes.append(f"{pad}x")
    return at + pad


# ---------- the structs userspace reads or writes ----------

# an address: four words in network order, IPv4 mapped (addr16, addr_text)
ADDR = Layout("nl_addr", (("w", "u32", 4),), opaque=True)
# a prefix: ADDR & MASK == ADDR for its addresses (prefix16, prefix_text)
PREFIX = Layout("nl_prefix", (("addr", ADDR), ("mask", ADDR)), opaque=True)

# an --allow or --deny rule: a prefix, ports in host order (0, 0: any), an
# IPPROTO_* (0: any) and a family (0: both, 4, 6)
RULE = Layout("nl_rule", (
    ("net", PREFIX), ("port_lo", "u16"), ("port_hi", "u16"), ("proto", "u8"),
    ("family", "u8"), ("pad", "u8", 2)))

# the map `policy`, by cgroup id; ev_* are the programs' (userspace writes 0)
POLICY = Layout("nl_policy", (
    ("ifindex", "u32"), ("mark", "u32"), ("flags", "u32"), ("event_rate", "u32"),
    ("netns", "u64"), ("ev_window", "u64"), ("ev_sent", "u64"), ("ev_suppressed", "u64"),
    ("dns_n", "u32"), ("allow_n", "u32"),
    ("dns", ADDR, MAX_DNS), ("allow", RULE, MAX_ALLOW),
    # ports in network order (net_port); the slot of the map `counters`
    ("relay_port", "u16"), ("stats_slot", "u16"), ("dns_port", "u32"),
    ("deny_n", "u32"), ("deny", RULE, MAX_DENY)))

COUNT = Layout("nl_count", (("packets", "u64"), ("bytes", "u64")))

# the map `counters`, by a session's slot (and `stats`, by cgroup id, for
# verdicts with no policy entry), per CPU: its names are policy.Stats' fields
STATS = Layout("nl_stats", (
    ("passed", COUNT), ("loopback", COUNT), ("drop_kill", COUNT), ("drop_device", COUNT),
    ("drop_nopolicy", COUNT), ("refused_netns", "u64"), ("events_suppressed", "u64"),
    ("events_lost", "u64"), ("allowed", COUNT), ("drop_block", COUNT),
    ("drop_inbound", COUNT), ("refused_dns", "u64"), ("refused_block", "u64"),
    ("dns_redirected", "u64"), ("proxied", "u64"), ("refused_proxy", "u64"),
    ("drop_proxy", COUNT), ("drop_source", COUNT), ("refused_source", "u64"),
    ("refused_mptcp", "u64"), ("refused_limit", "u64"), ("refused_kill_connect", "u64"),
    ("refused_kill_sendmsg", "u64"), ("drop_deny", COUNT), ("refused_deny", "u64")))

# one blocked attempt, from an event ring
EVENT = Layout("nl_event", (
    ("time_ns", "u64"), ("cgroup", "u64"), ("sock_cgroup", "u64"), ("pid", "u32"),
    ("suppressed", "u32"), ("reason", "u8"), ("hook", "u8"), ("family", "u8"),
    ("protocol", "u8"), ("dport", "u16"), ("rule", "u16"), ("daddr", "u8", 16),
    ("comm", "char", 16)))

# the map `redirect`, by socket cookie: where a socket was going, and where
# the programs sent it (ports in network order)
REDIRECT = Layout("nl_redirect", (
    ("orig", ADDR), ("server", ADDR), ("orig_port", "u32"), ("server_port", "u32"),
    ("cgroup", "u64"), ("proxy", "u32"), ("pad", "u32")))

# the map `locals`' key: one of this machine's addresses in a namespace
LOCAL_KEY = Layout("nl_local_key", (("netns", "u64"), ("addr", ADDR)))

# the socket storage `flows`: a session's UDP socket's counters (and who
# connected or sent on any of its sockets, since when)
FLOWSTAT = Layout("nl_flowstat", (
    ("session", "u64"), ("first_ns", "u64"), ("pid", "u32"), ("pad", "u32"),
    ("tx_packets", "u64"), ("tx_bytes", "u64"), ("rx_packets", "u64"), ("rx_bytes", "u64")))

LAYOUTS = (ADDR, PREFIX, RULE, FLOWSTAT, POLICY, COUNT, STATS, EVENT, REDIRECT, LOCAL_KEY)


# ---------- codes (enum) ----------

class Codes:
    """One C enum of the header: its members as (C name, value, the name
    userspace shows). NAMES: value -> shown name."""

    __slots__ = ("c_name", "members", "names")

    def __init__(self, c_name: str, members: tuple) -> None:
        self.c_name = c_name
        self.members = members
        self.names = {value: shown for _, value, shown in members}

    def __repr__(self) -> str:
        return f"Codes(enum {self.c_name})"


# why an attempt was blocked (struct nl_event.reason)
REASON = Codes("nl_reason", (
    ("NL_R_KILL", 1, "kill-switch"), ("NL_R_DEVICE", 2, "wrong-device"),
    ("NL_R_NOPOLICY", 3, "no-policy"), ("NL_R_NETNS", 4, "netns"),
    ("NL_R_DNS", 5, "no-dns"), ("NL_R_BLOCK", 6, "no-network"),
    ("NL_R_PROXY", 7, "proxy"), ("NL_R_SOURCE", 8, "source"),
    ("NL_R_MPTCP", 9, "mptcp"), ("NL_R_LIMIT", 10, "limit"), ("NL_R_DENY", 11, "deny")))

REASON_DENY = 11             # NL_R_DENY: nl_event.rule names the deny rule

# where it was seen (struct nl_event.hook)
HOOK = Codes("nl_hook", (
    ("NL_H_EGRESS", 1, "egress"), ("NL_H_SOCK", 2, "socket"),
    ("NL_H_CONNECT", 3, "connect"), ("NL_H_SENDMSG", 4, "sendmsg"),
    ("NL_H_SETSOCKOPT", 5, "setsockopt")))

ENUMS = (REASON, HOOK)


# ---------- values of the members ----------

def addr16(addr: str) -> bytes:
    """ADDR as a struct nl_addr: 16 bytes, IPv4 mapped (as the programs
    compare them)."""
    import ipaddress
    a = ipaddress.ip_address(addr)
    return (a.packed if a.version == 6 else
            ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed).packed)


def addr_text(raw: bytes) -> str:
    """A struct nl_addr's address as text (IPv4 as IPv4)."""
    import ipaddress
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a)


def prefix16(cidr: str) -> bytes:
    """CIDR as a struct nl_prefix: the network's address, then its mask."""
    import ipaddress
    net = ipaddress.ip_network(cidr)
    bits = net.prefixlen + (96 if net.version == 4 else 0)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return addr16(str(net.network_address)) + mask.to_bytes(16, "big")


def prefix_text(raw: bytes) -> str:
    """A struct nl_prefix as a CIDR (IPv4 as IPv4)."""
    import ipaddress
    size = ADDR.size
    addr = ipaddress.IPv6Address(raw[:size])
    bits = bin(int.from_bytes(raw[size:2 * size], "big")).count("1")
    if addr.ipv4_mapped is not None and bits >= 96:
        return str(ipaddress.ip_network(f"{addr.ipv4_mapped}/{bits - 96}"))
    return str(ipaddress.ip_network(f"{addr}/{bits}"))


def net_port(port: int) -> int:
    """A port to or from network order in the low 16 bits of a u32, as the
    header's *_port members hold it (a swap: its own inverse)."""
    return int.from_bytes((port & 0xffff).to_bytes(2, "big"), "little")
