"""Binary layouts of the BPF maps (mirrors bpf/netleak.h), pure."""
from __future__ import annotations

import dataclasses
import struct

FLAG_KILL = 0x1

_KEY = struct.Struct("<Q")
_POLICY = struct.Struct("<IIIIQQQQ")  # the limiter's 3 words: zero from us
_STATS = struct.Struct("<13Q")

KEY_SIZE = _KEY.size
POLICY_SIZE = _POLICY.size
STATS_SIZE = _STATS.size


@dataclasses.dataclass(frozen=True)
class Policy:
    """The map entry of one controlled cgroup."""

    ifindex: int
    mark: int
    killed: bool
    netns: int = 0     # netns cookie; 0 lets sockets of any namespace through
    event_rate: int = 0  # blocked-attempt events per second at most

    def pack(self) -> bytes:
        return _POLICY.pack(self.ifindex, self.mark, FLAG_KILL if self.killed else 0,
                            self.event_rate, self.netns, 0, 0, 0)

    @classmethod
    def unpack(cls, raw: bytes) -> "Policy":
        ifindex, mark, flags, rate, netns = _POLICY.unpack(raw[: _POLICY.size])[:5]
        return cls(ifindex=ifindex, mark=mark, killed=bool(flags & FLAG_KILL), netns=netns,
                   event_rate=rate)


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

    @property
    def dropped(self) -> int:
        """Packets dropped, whatever the reason."""
        return self.drop_kill_packets + self.drop_device_packets + self.drop_nopolicy_packets

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


def pack_key(cgroup_id: int) -> bytes:
    return _KEY.pack(cgroup_id)


def unpack_key(raw: bytes) -> int:
    return _KEY.unpack(raw)[0]
