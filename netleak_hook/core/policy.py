"""Binary layouts of the BPF maps (mirrors bpf/netleak.h), pure."""
from __future__ import annotations

import dataclasses
import ipaddress
import struct

from .validate import MAX_ALLOW, MAX_DNS  # NL_MAX_DNS, NL_MAX_ALLOW

FLAG_KILL = 0x1
FLAG_BLOCK = 0x2
FLAG_PROXY = 0x4

_KEY = struct.Struct("<Q")
# ifindex, mark, flags, event_rate, netns, the limiter's 3 words (zero from
# us), dns_n, allow_n; then the resolvers and prefixes, 16 bytes per address
_HEAD = struct.Struct("<IIIIQQQQII")
_ADDR = 16
_TAIL = struct.Struct("<II")    # relay_port, dns_port (network order)
_POLICY_SIZE = _HEAD.size + MAX_DNS * _ADDR + MAX_ALLOW * 2 * _ADDR + _TAIL.size
_STATS = struct.Struct("<31Q")

KEY_SIZE = _KEY.size
POLICY_SIZE = _POLICY_SIZE
STATS_SIZE = _STATS.size


@dataclasses.dataclass(frozen=True)
class Policy:
    """The map entry of one controlled cgroup."""

    ifindex: int
    mark: int
    killed: bool
    netns: int = 0     # netns cookie; 0 lets sockets of any namespace through
    event_rate: int = 0  # blocked-attempt events per second at most
    block: bool = False  # no-network mode: loopback (and ALLOW) only
    dns: tuple[str, ...] = ()    # resolvers for loopback DNS (addresses)
    allow: tuple[str, ...] = ()  # prefixes that may use the main table (CIDRs)
    proxy: bool = False  # proxy mode: TCP and DNS to the relay, nothing else leaves
    relay_port: int = 0  # the relay's TCP port on loopback (proxy mode)
    dns_port: int = 0    # its DNS answerer's UDP port (proxy mode)

    def pack(self) -> bytes:
        flags = (FLAG_KILL if self.killed else 0) | (FLAG_BLOCK if self.block else 0) | \
            (FLAG_PROXY if self.proxy else 0)
        out = bytearray(_POLICY_SIZE)
        _HEAD.pack_into(out, 0, self.ifindex, self.mark, flags, self.event_rate,
                        self.netns, 0, 0, 0, min(len(self.dns), MAX_DNS),
                        min(len(self.allow), MAX_ALLOW))
        at = _HEAD.size
        for addr in self.dns[:MAX_DNS]:
            out[at: at + _ADDR] = _addr16(addr)
            at += _ADDR
        at = _HEAD.size + MAX_DNS * _ADDR
        for cidr in self.allow[:MAX_ALLOW]:
            addr, mask = _prefix16(cidr)
            out[at: at + 2 * _ADDR] = addr + mask
            at += 2 * _ADDR
        _TAIL.pack_into(out, _POLICY_SIZE - _TAIL.size, _net16(self.relay_port),
                        _net16(self.dns_port))
        return bytes(out)

    @classmethod
    def unpack(cls, raw: bytes) -> "Policy":
        """Also an older version's shorter entry (it has neither resolvers
        nor prefixes)."""
        raw = raw.ljust(_POLICY_SIZE, b"\0")
        ifindex, mark, flags, rate, netns, _, _, _, ndns, nallow = _HEAD.unpack_from(raw)
        at = _HEAD.size
        dns = tuple(_addr_str(raw[at + i * _ADDR: at + (i + 1) * _ADDR])
                    for i in range(min(ndns, MAX_DNS)))
        at += MAX_DNS * _ADDR
        allow = tuple(_prefix_str(raw[at + i * 2 * _ADDR: at + (i + 1) * 2 * _ADDR])
                      for i in range(min(nallow, MAX_ALLOW)))
        relay, dns_port = _TAIL.unpack_from(raw, _POLICY_SIZE - _TAIL.size)
        return cls(ifindex=ifindex, mark=mark, killed=bool(flags & FLAG_KILL), netns=netns,
                   event_rate=rate, block=bool(flags & FLAG_BLOCK), dns=dns, allow=allow,
                   proxy=bool(flags & FLAG_PROXY),
                   relay_port=_net16(relay), dns_port=_net16(dns_port))


def _net16(port: int) -> int:
    """A port to or from network order in the low 16 bits of a u32 (a
    swap: its own inverse)."""
    return int.from_bytes((port & 0xffff).to_bytes(2, "big"), "little")


def _addr16(addr: str) -> bytes:
    """ADDR as 16 bytes, IPv4 mapped (as the programs compare them)."""
    a = ipaddress.ip_address(addr)
    return (a.packed if a.version == 6 else
            ipaddress.IPv6Address(b"\0" * 10 + b"\xff\xff" + a.packed).packed)


def _prefix16(cidr: str) -> tuple[bytes, bytes]:
    net = ipaddress.ip_network(cidr)
    bits = net.prefixlen + (96 if net.version == 4 else 0)
    mask = ((1 << 128) - 1) ^ ((1 << (128 - bits)) - 1)
    return _addr16(str(net.network_address)), mask.to_bytes(16, "big")


def _addr_str(raw: bytes) -> str:
    a = ipaddress.IPv6Address(raw)
    return str(a.ipv4_mapped or a)


def _prefix_str(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw[:_ADDR])
    bits = bin(int.from_bytes(raw[_ADDR:], "big")).count("1")
    if addr.ipv4_mapped is not None and bits >= 96:
        return str(ipaddress.ip_network(f"{addr.ipv4_mapped}/{bits - 96}"))
    return str(ipaddress.ip_network(f"{addr}/{bits}"))


@dataclasses.dataclass(frozen=True)
class Stats:
    """Counters of one cgroup, summed over CPUs (struct nl_stats): packets
    and bytes by verdict, and sockets refused."""

    passed_packets: int = 0         # left by the interface
    passed_bytes: int = 0
    loopback_packets: int = 0       # stayed on the machine
    loopback_bytes: int = 0
    drop_kill_packets: int = 0      # kill switch on
    drop_kill_bytes: int = 0
    drop_device_packets: int = 0    # would have left by another interface
    drop_device_bytes: int = 0
    drop_nopolicy_packets: int = 0  # no policy entry: fail closed
    drop_nopolicy_bytes: int = 0
    refused_netns: int = 0          # sockets opened in another network namespace
    events_suppressed: int = 0      # blocked-attempt events held back by the rate limit
    events_lost: int = 0            # events with no reader, or its ring full
    allowed_packets: int = 0        # left for an --allow prefix
    allowed_bytes: int = 0
    drop_block_packets: int = 0     # no-network mode
    drop_block_bytes: int = 0
    drop_inbound_packets: int = 0   # arrived by another interface
    drop_inbound_bytes: int = 0
    refused_dns: int = 0            # loopback DNS with no resolver: refused
    refused_block: int = 0          # connect/sendmsg refused in no-network mode
    dns_redirected: int = 0         # loopback DNS sent to a session's resolver
    proxied: int = 0                # proxy mode: connections and DNS sent to the relay
    refused_proxy: int = 0          # proxy mode: neither TCP nor DNS: refused
    drop_proxy_packets: int = 0     # proxy mode: would have left directly
    drop_proxy_bytes: int = 0
    drop_source_packets: int = 0    # on loopback from an address not this machine's
    drop_source_bytes: int = 0
    refused_source: int = 0         # setsockopt refused: non-local source addresses
    refused_mptcp: int = 0          # MPTCP sockets refused
    refused_limit: int = 0          # over the redirected sockets a session may hold

    @property
    def dropped(self) -> int:
        """Outgoing packets dropped, whatever the reason."""
        return (self.drop_kill_packets + self.drop_device_packets +
                self.drop_nopolicy_packets + self.drop_block_packets +
                self.drop_proxy_packets + self.drop_source_packets)

    @classmethod
    def unpack_percpu(cls, raw: bytes, ncpus: int, stride: int = 0) -> "Stats":
        """Sum the CPUs' values, STRIDE bytes each (an older version's
        shorter struct: the fields it lacks read as 0)."""
        stride = stride or _STATS.size
        totals = [0] * len(dataclasses.fields(cls))
        for cpu in range(ncpus):
            one = raw[cpu * stride: cpu * stride + min(stride, _STATS.size)]
            vals = _STATS.unpack(one.ljust(_STATS.size, b"\0"))
            totals = [a + b for a, b in zip(totals, vals)]
        return cls(*totals)


LOCAL_KEY_SIZE = 24      # struct nl_local_key: netns cookie, address (16 bytes)


def local_key(netns: int, addr: str) -> bytes:
    """The key of one of this machine's addresses in the map `locals`."""
    return netns.to_bytes(8, "little") + _addr16(addr)


def pack_key(cgroup_id: int) -> bytes:
    return _KEY.pack(cgroup_id)


def unpack_key(raw: bytes) -> int:
    return _KEY.unpack(raw)[0]
