"""The BPF maps' entries as values: a session's policy, its counters, the
keys (their layouts: core/abi.py), pure."""
from __future__ import annotations

import dataclasses
import struct

from . import abi, netrules
from .abi import FLAG_BLOCK, FLAG_KILL, FLAG_PROXY, MAX_ALLOW, MAX_DENY, MAX_DNS

_KEY = struct.Struct("<Q")      # a cgroup id (the maps policy and stats)

KEY_SIZE = _KEY.size
POLICY_SIZE = abi.POLICY.size
STATS_SIZE = abi.STATS.size


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
    allow: tuple[str, ...] = ()  # rules that may use the main table (netrules' texts)
    proxy: bool = False  # proxy mode: TCP and DNS to the relay, nothing else leaves
    relay_port: int = 0  # the relay's TCP port on loopback (proxy mode)
    dns_port: int = 0    # its DNS answerer's UDP port (proxy mode)
    stats_slot: int = 0  # the session's element of the map `counters` (0: none)
    deny: tuple[str, ...] = ()   # rules refused and dropped (netrules' texts)

    def pack(self) -> bytes:
        flags = (FLAG_KILL if self.killed else 0) | (FLAG_BLOCK if self.block else 0) | \
            (FLAG_PROXY if self.proxy else 0)
        # the limiter's words (ev_*) are the programs': zero from us
        return abi.POLICY.pack(
            ifindex=self.ifindex, mark=self.mark, flags=flags, event_rate=self.event_rate,
            netns=self.netns, dns_n=min(len(self.dns), MAX_DNS),
            allow_n=min(len(self.allow), MAX_ALLOW),
            dns=tuple(abi.addr16(a) for a in self.dns[:MAX_DNS]),
            allow=tuple(rule_bytes(r) for r in self.allow[:MAX_ALLOW]),
            relay_port=abi.net_port(self.relay_port), dns_port=abi.net_port(self.dns_port),
            stats_slot=self.stats_slot, deny_n=min(len(self.deny), MAX_DENY),
            deny=tuple(rule_bytes(r) for r in self.deny[:MAX_DENY]))

    @classmethod
    def unpack(cls, raw: bytes) -> "Policy":
        """Also an older version's shorter entry (it has neither resolvers
        nor rules)."""
        v = abi.POLICY.unpack(raw.ljust(POLICY_SIZE, b"\0"))
        flags = v["flags"]
        return cls(ifindex=v["ifindex"], mark=v["mark"], killed=bool(flags & FLAG_KILL),
                   netns=v["netns"], event_rate=v["event_rate"],
                   block=bool(flags & FLAG_BLOCK),
                   dns=tuple(abi.addr_text(a) for a in v["dns"][:v["dns_n"]]),
                   allow=tuple(rule_text(r) for r in v["allow"][:v["allow_n"]]),
                   proxy=bool(flags & FLAG_PROXY), relay_port=abi.net_port(v["relay_port"]),
                   dns_port=abi.net_port(v["dns_port"]), stats_slot=v["stats_slot"],
                   deny=tuple(rule_text(r) for r in v["deny"][:v["deny_n"]]))


def rule_bytes(text: str) -> bytes:
    """A rule's canonical text (netrules) as a struct nl_rule."""
    r = netrules.parse(text)
    return abi.RULE.pack(net=abi.prefix16(r.net or "::/0"), port_lo=r.port_lo,
                         port_hi=r.port_hi, proto=netrules.PROTOCOLS.get(r.proto, 0),
                         family=r.family)


def rule_text(raw: bytes) -> str:
    """A struct nl_rule as its canonical text."""
    v = abi.RULE.unpack(raw)
    net = None if v["family"] == 0 else abi.prefix_text(v["net"])
    proto = {n: name for name, n in netrules.PROTOCOLS.items()}.get(v["proto"], "")
    return netrules.NetRule(net=net, port_lo=v["port_lo"], port_hi=v["port_hi"],
                            proto=proto).text()


# why socket calls were refused, as the counters name them (refused_<reason>):
# kill (kill switch on: connect and sendmsg), netns (socket in another network
# namespace), dns (loopback DNS, no resolver), block (no-network mode), proxy
# (proxy mode: neither TCP nor DNS), source (setsockopt for a foreign source),
# mptcp (MPTCP socket), limit (too many redirected sockets), deny (a --deny rule)
REFUSALS = ("kill", "netns", "dns", "block", "proxy", "source", "mptcp", "limit", "deny")


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
    allowed_packets: int = 0        # left for an --allow rule
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
    refused_kill_connect: int = 0   # connect() refused: kill switch on
    refused_kill_sendmsg: int = 0   # sendmsg() with an address refused: kill switch on
    drop_deny_packets: int = 0      # held by a --deny rule: dropped (out or in)
    drop_deny_bytes: int = 0
    refused_deny: int = 0           # connect/sendmsg refused by a --deny rule

    @property
    def refused_kill(self) -> int:
        """Socket calls refused while the kill switch was on."""
        return self.refused_kill_connect + self.refused_kill_sendmsg

    def refusals(self) -> dict[str, int]:
        """Socket calls refused, by reason (REFUSALS' order)."""
        return {why: getattr(self, f"refused_{why}") for why in REFUSALS}

    @property
    def refused(self) -> int:
        """Socket calls refused, whatever the reason."""
        return sum(self.refusals().values())

    @property
    def dropped(self) -> int:
        """Outgoing packets dropped, whatever the reason."""
        return (self.drop_kill_packets + self.drop_device_packets +
                self.drop_nopolicy_packets + self.drop_block_packets +
                self.drop_proxy_packets + self.drop_source_packets +
                self.drop_deny_packets)

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(*(a + b for a, b in zip(dataclasses.astuple(self),
                                             dataclasses.astuple(other))))

    @classmethod
    def unpack_percpu(cls, raw: bytes, ncpus: int, stride: int = 0) -> "Stats":
        """Sum the CPUs' values, STRIDE bytes each (an older version's
        shorter struct: the fields it lacks read as 0)."""
        size = abi.STATS.size
        stride = stride or size
        totals = [0] * len(abi.STATS.names)
        for cpu in range(ncpus):
            one = raw[cpu * stride: cpu * stride + min(stride, size)]
            vals = abi.STATS.struct.unpack(one.ljust(size, b"\0"))
            totals = [a + b for a, b in zip(totals, vals)]
        return cls(**dict(zip(abi.STATS.names, totals)))


MAX_SLOT = 0xFFFF               # nl_policy.stats_slot is a u16


def free_slots(used, limit: int = abi.MAX_ENTRIES):
    """The slots of the map `counters` a new session may claim, lowest
    first: 1 to LIMIT - 1 (0 means none; at most MAX_SLOT), but for those
    in USED. Daemons of other namespaces share the map, so a slot may still
    be taken: the claim (BPF_NOEXIST on the map `slots`) says, and the next
    one is tried."""
    return (slot for slot in range(1, min(limit, MAX_SLOT + 1)) if slot not in used)


SLOT_KEY_SIZE = 4               # the map `slots`: slot (u32) -> its owner
SLOT_OWNER = struct.Struct("<QQ")   # struct nl_slot_owner: cgroup id, the claimer's netns


def pack_slot(slot: int) -> bytes:
    return slot.to_bytes(SLOT_KEY_SIZE, "little")


LOCAL_KEY_SIZE = abi.LOCAL_KEY.size


def local_key(netns: int, addr: str) -> bytes:
    """The key of one of this machine's addresses in the map `locals`."""
    return abi.LOCAL_KEY.pack(netns=netns, addr=abi.addr16(addr))


def local_key_netns(raw: bytes) -> int:
    """The network namespace (cookie) of a key of the map `locals`."""
    return abi.LOCAL_KEY.unpack(raw)["netns"]


def local_value(ifindex: int) -> bytes:
    """The value of an address in the map `locals`: its interface (u32)."""
    return ifindex.to_bytes(4, "little")


def pack_key(cgroup_id: int) -> bytes:
    return _KEY.pack(cgroup_id)


def unpack_key(raw: bytes) -> int:
    return _KEY.unpack(raw)[0]
