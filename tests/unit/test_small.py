"""Small pure modules: reaper, mounts, policy, errors, cgroup.events parsing."""
from __future__ import annotations

import os
import re
import struct

import pytest

from netleak_hook.core import abi, mounts, policy, lifecycle
from netleak_hook.kernel import cgroupfs
from netleak_hook.core.errors import Exit, NetleakError
from netleak_hook.core.policy import Policy, Stats
from netleak_hook.core.state import Session
from tests.helpers import make_session

from netleak_hook.core.abi import POLICY as _POLICY

_PORTS = _POLICY.offsets["relay_port"]   # relay_port, then dns_port

# ---------- lifecycle.should_reap ----------

T0 = 1_700_000_000.0


def sess(committed: bool, created: float = T0) -> Session:
    return make_session(id="a", pid=123, created=created, committed=committed)


@pytest.mark.parametrize("committed", [True, False])
@pytest.mark.parametrize("alive", [True, False])
def test_reap_cgroup_gone(committed, alive):
    assert lifecycle.should_reap(sess(committed), None, alive, T0 + 1) is True


@pytest.mark.parametrize("committed", [True, False])
@pytest.mark.parametrize("alive", [True, False])
@pytest.mark.parametrize("age", [0.0, 1e6])
def test_reap_never_while_populated(committed, alive, age):
    assert lifecycle.should_reap(sess(committed), True, alive, T0 + age) is False


def test_reap_empty_committed():
    assert lifecycle.should_reap(sess(True), False, True, T0 + 1) is True


def test_reap_empty_uncommitted_young_alive_requester_kept():
    assert lifecycle.should_reap(sess(False), False, True, T0 + 1) is False
    assert lifecycle.should_reap(sess(False), False, True, T0 + lifecycle.SETUP_GRACE) is False


def test_reap_empty_uncommitted_requester_dead():
    assert lifecycle.should_reap(sess(False), False, False, T0 + 1) is True


def test_reap_empty_uncommitted_too_old():
    assert lifecycle.SETUP_GRACE > 0
    assert lifecycle.should_reap(sess(False), False, True,
                              T0 + lifecycle.SETUP_GRACE + 0.5) is True


# ---------- mounts ----------

PURE_V2 = """\
22 28 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:13 - proc proc rw
25 28 0:23 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
26 28 0:24 / /sys/fs/bpf rw,nosuid,nodev,noexec,relatime shared:10 - bpf bpf rw,mode=700
"""

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
32 31 0:29 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
34 31 0:31 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:12 - cgroup cgroup rw,cpu,cpuacct
"""

V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup ro,nosuid shared:9 - tmpfs tmpfs ro,mode=755
33 31 0:30 / /sys/fs/cgroup/systemd rw,nosuid shared:11 - cgroup cgroup rw,name=systemd
"""

ODD = r"""40 23 0:50 / /mnt/my\040cgroup rw,relatime - cgroup2 cgroup2 rw
41 23 0:51 / /mnt/back\134slash\011tab rw,relatime shared:1 master:2 - cgroup2 none rw
"""


def test_find_mounts_pure_v2():
    assert mounts.find_mounts(PURE_V2, "cgroup2") == ["/sys/fs/cgroup"]
    assert mounts.find_mounts(PURE_V2, "bpf") == ["/sys/fs/bpf"]
    assert mounts.find_mounts(PURE_V2, "tmpfs") == []


def test_find_mounts_hybrid_in_order():
    assert mounts.find_mounts(HYBRID, "cgroup") == ["/sys/fs/cgroup/systemd",
                                                    "/sys/fs/cgroup/cpu,cpuacct"]
    assert mounts.find_mounts(HYBRID, "cgroup2") == ["/sys/fs/cgroup/unified"]


def test_find_mounts_escapes():
    assert mounts.find_mounts(ODD, "cgroup2") == ["/mnt/my cgroup", "/mnt/back\\slash\ttab"]


def test_find_mounts_skips_malformed_lines():
    text = "garbage\n\n1 2 3 - cgroup2 x rw\n" + PURE_V2
    assert mounts.find_mounts(text, "cgroup2") == ["/sys/fs/cgroup"]


def test_cgroup2_mount_pure_v2():
    assert mounts.cgroup2_mount(PURE_V2) == "/sys/fs/cgroup"


def test_cgroup2_mount_hybrid():
    assert mounts.cgroup2_mount(HYBRID) == "/sys/fs/cgroup/unified"


@pytest.mark.parametrize("text", [V1_ONLY, "", "no dash here\n"])
def test_cgroup2_mount_none(text):
    assert mounts.cgroup2_mount(text) is None


def test_cgroup2_mount_escaped_space():
    assert mounts.cgroup2_mount(ODD) == "/mnt/my cgroup"


def test_cgroup2_mount_prefers_sys_fs_cgroup_over_earlier_ones():
    text = ODD + PURE_V2
    assert mounts.cgroup2_mount(text) == "/sys/fs/cgroup"


# ---------- policy ----------

def test_sizes():
    assert policy.POLICY_SIZE == 776
    assert policy.KEY_SIZE == 8
    assert policy.STATS_SIZE == 288


def test_policy_layout_matches_the_c_struct():
    """struct nl_policy: 4 u32, 4 u64, 2 u32, then the resolvers and the
    allow rules (16 and 40 bytes each), two u16, two u32 and the deny rules."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "netleak.h")) as f:
        header = f.read()
    body = header[header.index("struct nl_policy {"):]
    body = body[:body.index("};")]
    n_dns = int(re.search(r"#define NL_MAX_DNS (\d+)", header).group(1))
    n_allow = int(re.search(r"#define NL_MAX_ALLOW (\d+)", header).group(1))
    n_deny = int(re.search(r"#define NL_MAX_DENY (\d+)", header).group(1))
    assert (n_dns, n_allow, n_deny) == (policy.MAX_DNS, policy.MAX_ALLOW, policy.MAX_DENY)
    words = len(re.findall(r"^\s+u32 ", body, re.M)) * 4 + \
        len(re.findall(r"^\s+u64 ", body, re.M)) * 8 + \
        len(re.findall(r"^\s+u16 ", body, re.M)) * 2
    members = words + 16 * n_dns + 40 * (n_allow + n_deny)
    assert policy.POLICY_SIZE == members + -members % 8     # padded to its u64s


@pytest.mark.parametrize("killed", [False, True])
def test_policy_round_trip(killed):
    p = Policy(ifindex=7, mark=0x6E6C0001, killed=killed, netns=2**40 + 3)
    raw = p.pack()
    assert len(raw) == 776
    assert Policy.unpack(raw) == p


def test_policy_round_trip_with_guards():
    p = Policy(ifindex=0, mark=0, killed=False, netns=5, block=True,
               dns=("198.51.100.53", "2001:db8::53"),
               allow=("192.168.1.0/24", "10.0.0.0/8", "2001:db8:9::/48", "192.0.2.7/32"))
    assert Policy.unpack(p.pack()) == p


def test_policy_round_trip_with_port_rules():
    p = Policy(ifindex=3, mark=9, killed=False,
               allow=("192.168.1.0/24:631/tcp", "[2001:db8::/64]:53", ":8000-8100", "/udp",
                      "0.0.0.0/0:443/tcp", "::/0/udp"),
               deny=("203.0.113.0/24:25", ":53/udp", "2001:db8::1/128"))
    assert Policy.unpack(p.pack()) == p


def test_a_rule_as_the_programs_see_it():
    """struct nl_rule: the prefix (IPv4 mapped), ports in host order, the
    IPPROTO_* number and the family."""
    raw = policy.rule_bytes("192.168.1.0/24:631-632/tcp")
    assert raw[:16] == bytes(10) + b"\xff\xff" + bytes([192, 168, 1, 0])
    assert raw[16:32] == b"\xff" * 15 + bytes(1)      # /96 + 24
    assert struct.unpack_from("<HHBB", raw, 32) == (631, 632, 6, 4)
    anyaddr = policy.rule_bytes(":53")
    assert anyaddr[:32] == bytes(32) and struct.unpack_from("<HHBB", anyaddr, 32) == (53, 53, 0, 0)
    assert struct.unpack_from("<HHBB", policy.rule_bytes("::/0/udp"), 32) == (0, 0, 17, 6)


def test_policy_layout():
    raw = Policy(ifindex=0x01020304, mark=0xAABBCCDD, killed=True, netns=9,
                 event_rate=50, dns=("192.0.2.53",), allow=("192.168.0.0/16",)).pack()
    assert raw[:56] == struct.pack("<IIIIQQQQII", 0x01020304, 0xAABBCCDD, 1, 50, 9, 0, 0, 0,
                                   1, 1)
    # addresses as the programs compare them: IPv4 mapped, network order
    assert raw[56:72] == bytes(10) + b"\xff\xff" + bytes([192, 0, 2, 53])
    prefix = raw[56 + 4 * 16:56 + 4 * 16 + 32]     # the first rule's prefix
    assert prefix[:16] == bytes(10) + b"\xff\xff" + bytes([192, 168, 0, 0])
    assert prefix[16:] == b"\xff" * 14 + bytes(2)       # /96 + 16
    assert Policy(ifindex=1, mark=2, killed=False).pack()[8:12] == b"\0\0\0\0"
    assert Policy(ifindex=1, mark=2, killed=False, block=True).pack()[8:12] == \
        b"\x02\0\0\0"


def test_policy_unpack_flags_and_an_older_shorter_entry():
    raw = struct.pack("<IIIIQQQQ", 3, 4, 0b1000, 0, 0, 0, 0, 0)
    assert Policy.unpack(raw).killed is False
    raw = struct.pack("<IIIIQQQQ", 3, 4, 0b1011, 0, 0, 7, 8, 9)
    assert Policy.unpack(raw) == Policy(3, 4, True, block=True)


def test_policy_unpack_ignores_trailing_bytes():
    raw = Policy(5, 6, True).pack() + b"\xff" * 8
    assert Policy.unpack(raw) == Policy(5, 6, True)


def test_stats_unpack_percpu_sums():
    cpu0 = struct.pack("<36Q", *range(1, 37))
    cpu1 = struct.pack("<36Q", *[10 * i for i in range(1, 11)], 2**40, 5, 6, *[0] * 18, 100,
                       200, 0, 0, 4)
    s = Stats.unpack_percpu(cpu0 + cpu1, 2)
    assert s == Stats(passed_packets=11, passed_bytes=22, loopback_packets=33,
                      loopback_bytes=44, drop_kill_packets=55, drop_kill_bytes=66,
                      drop_device_packets=77, drop_device_bytes=88,
                      drop_nopolicy_packets=99, drop_nopolicy_bytes=110,
                      refused_netns=11 + 2**40, events_suppressed=17, events_lost=19,
                      allowed_packets=14, allowed_bytes=15, drop_block_packets=16,
                      drop_block_bytes=17, drop_inbound_packets=18, drop_inbound_bytes=19,
                      refused_dns=20, refused_block=21, dns_redirected=22, proxied=23,
                      refused_proxy=24, drop_proxy_packets=25, drop_proxy_bytes=26,
                      drop_source_packets=27, drop_source_bytes=28, refused_source=29,
                      refused_mptcp=30, refused_limit=31, refused_kill_connect=132,
                      refused_kill_sendmsg=233, drop_deny_packets=34, drop_deny_bytes=35,
                      refused_deny=40)
    assert s.dropped == 55 + 77 + 99 + 16 + 25 + 27 + 34
    assert s.refused_kill == 132 + 233
    assert s.refusals() == {"kill": 365, "netns": 11 + 2**40, "dns": 20, "block": 21,
                            "proxy": 24, "source": 29, "mptcp": 30, "limit": 31, "deny": 40}
    assert s.refused == 365 + 11 + 2**40 + 20 + 21 + 24 + 29 + 30 + 31 + 40


def test_stats_of_an_older_layout_read_with_its_stride():
    """An older version's pin set: 11 counters a CPU, the newer ones read 0."""
    old = struct.pack("<11Q", *range(1, 12)) * 2
    s = Stats.unpack_percpu(old, 2, stride=88)
    assert s == Stats(*[2 * v for v in range(1, 12)])
    assert s.events_suppressed == s.events_lost == 0


def test_pinset_usable_with_an_older_versions_pins(tmp_path):
    from netleak_hook.kernel import programs
    pins = programs.Pinset(str(tmp_path))
    for name in programs.BASE_PINS:
        (tmp_path / name).touch()
    assert pins.usable() and not pins.complete()
    for name in programs.PINS:
        (tmp_path / name).touch()
    assert pins.usable() and pins.complete()
    (tmp_path / "map_stats").unlink()
    assert not pins.usable()


def test_stats_unpack_percpu_only_ncpus():
    raw = struct.pack("<36Q", *range(36)) + struct.pack("<36Q", *range(100, 136))
    assert Stats.unpack_percpu(raw, 1) == Stats(*range(36))
    assert Stats.unpack_percpu(b"", 0) == Stats()


def test_stats_layout_matches_the_c_struct():
    """struct nl_stats: {packets, bytes} pairs and single u64 counters."""
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "netleak.h")) as f:
        header = f.read()
    body = header[header.index("struct nl_stats {"):]
    body = body[:body.index("};")]
    pairs = body.count("struct nl_count ")
    singles = body.count("u64 ")
    assert policy.STATS_SIZE == (2 * pairs + singles) * 8 == 288


def test_stats_defaults():
    assert Stats().dropped == 0 and Stats().passed_packets == 0
    assert Stats().refused == 0 and set(Stats().refusals()) == set(policy.REFUSALS)


def test_stats_of_the_layout_before_the_kill_switch_counters():
    """31 counters a CPU: the kill switch's refusals read 0."""
    old = struct.pack("<31Q", *range(1, 32)) * 2
    s = Stats.unpack_percpu(old, 2, stride=248)
    assert s.refused_limit == 62 and s.refused_kill == 0
    assert s.refusals()["kill"] == 0


@pytest.mark.parametrize("cid", [0, 1, 12345, 2**63 + 5, 2**64 - 1])
def test_key_round_trip(cid):
    raw = policy.pack_key(cid)
    assert len(raw) == 8
    assert policy.unpack_key(raw) == cid


def test_key_little_endian():
    assert policy.pack_key(1) == b"\x01" + b"\0" * 7


# ---------- errors ----------

def test_exit_values():
    assert Exit.NETLEAK == 125
    assert Exit.CANNOT_EXEC == 126
    assert Exit.NOT_FOUND == 127
    assert Exit.OK == 0


def test_netleak_error_defaults_to_125():
    e = NetleakError("boom")
    assert e.exit_status == 125 and type(e.exit_status) is int
    assert str(e) == "boom" == e.message


def test_netleak_error_status_is_plain_int():
    e = NetleakError("x", Exit.NOT_FOUND)
    assert e.exit_status == 127 and type(e.exit_status) is int


@pytest.mark.parametrize("text,want", [
    (b"populated 1\nfrozen 0\n", True),
    (b"populated 0\nfrozen 0\n", False),
    (b"frozen 0\npopulated 0\n", False),
    (b"populated 1", True),
    (b"frozen 0\n", None),
    (b"", None),
    (b"populatedx 1\n", None),
])
def test_parse_populated(text, want):
    assert cgroupfs.parse_populated(text) is want


def test_policy_round_trip_in_proxy_mode():
    """The relay's port goes in network order, as the programs compare it
    with user_port."""
    p = Policy(ifindex=0, mark=0, killed=False, netns=5, proxy=True, relay_port=0x1234,
               dns_port=0x5678)
    raw = p.pack()
    assert raw[_PORTS:_PORTS + 8] == b"\x12\x34\0\0\x56\x78\0\0"
    assert raw[8] == 0x4       # flags: NL_FLAG_PROXY
    assert Policy.unpack(raw) == p



def test_a_leftover_drop_in_is_removed_only_if_it_is_netleaks(tmp_path, monkeypatch):
    from netleak_hook.daemon.units import DROPIN_HEAD, dropin
    from netleak_hook.kernel import systemd
    monkeypatch.setattr(systemd, "RUNTIME_UNITS", str(tmp_path))
    removed = []
    monkeypatch.setattr(systemd.Systemd, "remove_dropin", lambda self, u: removed.append(u))
    (tmp_path / "web.service.d").mkdir()
    (tmp_path / "web.service.d" / "netleak.conf").write_text(
        dropin(["/usr/bin/netleak", "attach", "wg0", "--unit", "%n"]))
    (tmp_path / "db.service.d").mkdir()
    (tmp_path / "db.service.d" / "netleak.conf").write_text("[Service]\nNice=5\n")
    assert systemd.remove_dropin_of_netleak("web.service", DROPIN_HEAD)
    assert not systemd.remove_dropin_of_netleak("db.service", DROPIN_HEAD)   # not ours
    assert not systemd.remove_dropin_of_netleak("none.service", DROPIN_HEAD)
    assert removed == ["web.service"]


def test_policy_names_its_counters_slot():
    p = Policy(ifindex=7, mark=1, killed=False, proxy=True, relay_port=1021,
               stats_slot=4095)
    raw = p.pack()
    at = _POLICY.offsets["stats_slot"]
    assert raw[at:at + 2] == (4095).to_bytes(2, "little")
    assert Policy.unpack(raw) == p
    # the slot is the upper half of the u32 an older version reads as the
    # relay's port, which it masks off: the port it reads is right
    old_u32 = int.from_bytes(raw[_PORTS:_PORTS + 4], "little")
    assert old_u32 >> 16 == 4095 and abi.net_port(old_u32) == 1021
    # and an older version's entry (that half zero) has no slot
    assert Policy.unpack(raw[:at] + b"\0\0" + raw[at + 2:]).stats_slot == 0


def test_free_slots_lowest_first_never_zero_nor_past_the_map():
    assert list(policy.free_slots({1, 3}, limit=6)) == [2, 4, 5]
    assert list(policy.free_slots(set(range(1, 4)), limit=4)) == []
    assert max(policy.free_slots(set(), limit=1 << 20)) == 0xFFFF   # a u16 in the entry
    assert next(policy.free_slots(set())) == 1


def test_counters_of_a_slot_and_of_a_cgroup_id_add_up():
    a = Stats(passed_packets=2, passed_bytes=100, refused_netns=1)
    b = Stats(passed_packets=3, drop_nopolicy_packets=4)
    assert a + b == Stats(passed_packets=5, passed_bytes=100, refused_netns=1,
                          drop_nopolicy_packets=4)


def test_a_sessions_entry_carries_its_slot():
    from netleak_hook.core.state import policy_for
    s = make_session(stats_slot=9)
    assert policy_for(s, Policy(ifindex=5, mark=1, killed=True)).stats_slot == 9
