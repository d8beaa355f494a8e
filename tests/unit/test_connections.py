"""netleak connections: the dump's parse, the rows, the table, --follow."""
from __future__ import annotations

import socket
import struct

from netleak_hook.core import abi, connections as conn
from netleak_hook.kernel import sockdiag
from netleak_hook.kernel.sockdiag import Diag


def _diag(**kw) -> Diag:
    base = dict(family=socket.AF_INET, protocol=socket.IPPROTO_TCP, state=1,
                src="198.51.100.2", sport=40000, dst="203.0.113.10", dport=8080,
                cookie=7, uid=65534, inode=99, cgroup_id=5)
    base.update(kw)
    return Diag(**base)


def _flowstat(**kw) -> bytes:
    return abi.FLOWSTAT.pack(**{"session": 5, "first_ns": 0, "pid": 0, **kw})


SESSION = {"id": "3f9c2a1e77", "iface": "vpn0"}


# ---------- the dump ----------

def _nlattr(kind: int, payload: bytes) -> bytes:
    out = struct.pack("<HH", 4 + len(payload), kind) + payload
    return out + b"\0" * (-len(out) % 4)


def _msg(family, state, sport, dport, src, dst, cookie, uid, inode, attrs=b"") -> bytes:
    body = (struct.pack("<BBBB", family, state, 0, 0) +
            struct.pack(">HH16s16s", sport, dport, src, dst) +
            struct.pack("<III", 0, cookie & 0xFFFFFFFF, cookie >> 32) +
            struct.pack("<IIIII", 0, 0, 0, uid, inode) + attrs)
    return struct.pack("<IHHII", 16 + len(body), 20, 2, 1, 0) + body


def test_dump_request_asks_for_tcp_info_and_the_storages():
    raw = sockdiag.dump_request(socket.AF_INET6, socket.IPPROTO_UDP, [11, 12], seq=3)
    length, kind, flags, seq, _ = struct.unpack_from("<IHHII", raw)
    assert (length, kind, flags, seq) == (len(raw), 20, 0x301, 3)
    family, proto, ext, _, states = struct.unpack_from("<BBBBI", raw, 16)
    assert (family, proto, ext) == (socket.AF_INET6, socket.IPPROTO_UDP, 2)
    assert not states & (1 << 6)        # TIME_WAIT's mini sockets: no cgroup, no storage
    alen, atype = struct.unpack_from("<HH", raw, 16 + 56)
    assert atype == 0x8000 | 2 and alen == 4 + 2 * 8
    assert struct.unpack_from("<HHI HHI", raw, 16 + 60) == (8, 1, 11, 8, 1, 12)


def test_dump_parse_reads_addresses_counters_and_storage():
    info = bytes(120) + struct.pack("<QQII", 1001, 2002, 30, 40) + bytes(20)
    value = _flowstat(pid=4242, tx_bytes=5)
    storage = _nlattr(0x8000 | 20, _nlattr(0x8000 | 1, _nlattr(2, struct.pack("<I", 9)) +
                                           _nlattr(3, value)))
    attrs = _nlattr(2, info) + _nlattr(21, struct.pack("<Q", 77)) + storage
    v4 = _msg(socket.AF_INET, 1, 40000, 443, bytes([192, 0, 2, 1]) + bytes(12),
              bytes([203, 0, 113, 9]) + bytes(12), 2**40 + 5, 65534, 1234, attrs)
    mapped = bytes(10) + b"\xff\xff" + bytes([203, 0, 113, 9])
    v6 = _msg(socket.AF_INET6, 7, 5353, 0, bytes(16), mapped, 8, 0, 4321)
    done = struct.pack("<IHHII", 20, 3, 2, 1, 0) + bytes(4)
    got, over = sockdiag.parse_dump(v4 + v6 + done, socket.IPPROTO_TCP)
    assert over
    a, b = got
    assert (a.src, a.sport, a.dst, a.dport, a.cookie, a.uid, a.inode, a.cgroup_id) == \
        ("192.0.2.1", 40000, "203.0.113.9", 443, 2**40 + 5, 65534, 1234, 77)
    assert a.tcp == (1001, 2002, 30, 40) and a.storage == value
    assert (b.src, b.dst, b.tcp, b.storage) == ("::", "203.0.113.9", None, None)


def test_dump_parse_raises_the_kernels_error():
    err = struct.pack("<IHHII", 36, 2, 0, 1, 0) + struct.pack("<i", -1) + bytes(16)
    try:
        sockdiag.parse_dump(err, socket.IPPROTO_TCP)
    except OSError as e:
        assert e.errno == 1
    else:
        raise AssertionError("no error")


# ---------- rows ----------

def test_a_tcp_row_takes_the_kernels_counters():
    d = _diag(tcp=(100_001, 5000, 80, 60), storage=_flowstat(pid=42, first_ns=10**9))
    r = conn.row(d, SESSION, (42, "curl", "nobody"), boot_now_ns=4 * 10**9)
    assert r == {"session": "3f9c2a1e77", "iface": "vpn0", "pid": 42, "comm": "curl",
                 "user": "nobody", "proto": "tcp", "family": "ipv4",
                 "local": "198.51.100.2:40000", "remote": "203.0.113.10:8080", "dest": None,
                 "name": None, "state": "established", "tx_bytes": 100_000, "rx_bytes": 5000,
                 "tx_packets": 80, "rx_packets": 60, "age": 3.0, "cookie": 7}


def test_a_udp_row_takes_the_socket_storage():
    d = _diag(protocol=socket.IPPROTO_UDP, state=7, dst="0.0.0.0", dport=0,
              storage=_flowstat(tx_packets=3, tx_bytes=300, rx_packets=2, rx_bytes=20, pid=9))
    r = conn.row(d, SESSION)
    assert (r["proto"], r["state"], r["remote"], r["tx_bytes"], r["rx_packets"], r["pid"]) == \
        ("udp", "unconnected", None, 300, 2, 9)
    assert conn.far_end(r) == "*"


def test_proxy_mode_rows_name_the_real_destination_and_the_name():
    d = _diag(dst="127.0.0.1", dport=41000, tcp=(1, 0, 1, 1))
    r = conn.row(d, SESSION, redirect=("198.18.0.7", 443), name="example.org")
    assert (r["remote"], r["dest"], r["name"]) == \
        ("127.0.0.1:41000", "198.18.0.7:443", "example.org")
    assert conn.far_end(r) == "example.org:443"
    r6 = conn.row(_diag(family=socket.AF_INET6, dst="::1", dport=41000, tcp=(1, 0, 1, 1)),
                  SESSION, redirect=("2001:db8::7", 443))
    assert conn.far_end(r6) == "[2001:db8::7]:443"


def test_the_table_is_busiest_first_under_80_columns():
    rows = [conn.row(_diag(cookie=i, tcp=(1 + size, 0, 1, 1),
                           dst=f"2001:db8:ffff:ffff:ffff:ffff:ffff:{i:x}",
                           family=socket.AF_INET6), SESSION, (i, "x" * 30, "nobody"))
            for i, size in ((1, 10), (2, 3 << 20), (3, 5000))]
    text = conn.table(rows)
    lines = text.splitlines()
    assert lines[0].startswith("SESSION") and lines[0].endswith("REMOTE")
    assert all(len(ln) <= 80 for ln in lines), [len(ln) for ln in lines]
    assert [ln.split()[1] for ln in lines[1:]] == ["2", "3", "1"]
    assert "3.0M" in lines[1] and "…" in lines[1]


def test_the_table_escapes_what_a_workload_names():
    r = conn.row(_diag(tcp=(1, 0, 1, 1)), SESSION, (1, "evil\x1b[2J", "nobody"))
    assert "\x1b" not in conn.table([r])


def test_sizes():
    assert [conn.size_text(n) for n in (0, 999, 1024, 15 << 10, 3 << 20, 5 << 30)] == \
        ["0", "999", "1.0k", "15k", "3.0M", "5.0G"]


# ---------- --follow ----------

def _r(cookie, tx=0, state="established"):
    return {"cookie": cookie, "tx_bytes": tx, "rx_bytes": 0, "tx_packets": 0,
            "rx_packets": 0, "state": state}


def test_follow_gives_the_table_then_opens_updates_and_closes():
    f = conn.Follow(every=1.0)
    assert [e["event"] for e in f.step([_r(1), _r(2)], 0.0)] == ["current", "current"]
    assert f.step([_r(1), _r(2)], 0.5) == []                  # nothing moved
    got = f.step([_r(1, tx=10), _r(2), _r(3)], 0.6)
    assert [(e["event"], e["cookie"]) for e in got] == [("open", 3)]   # 1: too soon
    got = f.step([_r(1, tx=20), _r(3)], 1.2)
    assert [(e["event"], e["cookie"], e["tx_bytes"]) for e in got] == \
        [("update", 1, 20), ("close", 2, 0)]
    got = f.step([_r(3, tx=5)], 1.3)
    # a close carries the last figures seen, even those not printed yet
    assert [(e["event"], e["cookie"]) for e in got] == [("close", 1)]
    assert f.step([], 9.0)[0]["tx_bytes"] == 5


def test_counts_by_session_and_protocol():
    rows = [{"session": "a", "proto": "tcp"}, {"session": "a", "proto": "tcp"},
            {"session": "a", "proto": "udp"}, {"session": "b", "proto": "tcp"}]
    assert conn.counts(rows) == {("a", "tcp"): 2, ("a", "udp"): 1, ("b", "tcp"): 1}


# ---------- the daemon's view ----------

def test_the_daemon_view_finds_each_sessions_sockets(tmp_path):
    """Sockets by the cgroup they were made in (the session's, or one
    below it), their process by the descriptor it holds, UDP's figures from
    the socket storage; other cgroups' sockets are not shown."""
    import os
    import types
    from netleak_hook.core.state import Session, State
    from netleak_hook.daemon.connview import ConnectionView
    top = tmp_path / "netleak" / "exec-s1"
    (top / "child").mkdir(parents=True)
    (top / "cgroup.procs").write_text("100\n")
    (top / "child" / "cgroup.procs").write_text("101\n")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "cgroup.procs").write_text("")
    ino = lambda p: os.stat(p).st_ino      # noqa: E731
    s = Session(id="s1", iface="vpn0", cgroup="netleak/exec-s1", cgroup_id=ino(top),
                pinset="/pins/a")
    holder = types.SimpleNamespace(state=State(sessions={"s1": s}))
    maps = types.SimpleNamespace(flows=7, redirect=-1)
    pins = types.SimpleNamespace(maps_for=lambda pinset: maps)
    cgroups = types.SimpleNamespace(path=lambda rel: str(tmp_path / rel))
    dumps = [
        _diag(cookie=1, cgroup_id=ino(top), inode=11, tcp=(501, 20, 3, 2)),
        _diag(cookie=2, cgroup_id=ino(top / "child"), inode=12, protocol=socket.IPPROTO_UDP,
              tcp=None),
        _diag(cookie=3, cgroup_id=ino(tmp_path / "other"), inode=13, tcp=(9, 9, 1, 1)),
    ]
    asked = []
    view = ConnectionView(
        holder, pins, types.SimpleNamespace(relay=None), cgroups,
        dump=lambda fds: asked.append(fds) or dumps,
        owners=lambda pids: {11: (100, 3), 12: (101, 4)} if sorted(pids) == [100, 101] else {},
        clock_ns=lambda: 5 * 10**9,
        storage=lambda fd, pid, n: _flowstat(tx_packets=2, tx_bytes=64, first_ns=10**9)
        if (fd, pid, n) == (7, 101, 4) else None)
    got = view.rows()
    assert asked == [[7]]
    assert [(r["cookie"], r["pid"], r["session"]) for r in got] == [(1, 100, "s1"),
                                                                     (2, 101, "s1")]
    udp = got[1]
    assert (udp["tx_bytes"], udp["tx_packets"], udp["age"]) == (64, 2, 4.0)
    assert view.rows("s2") == [] and view.answer({"session": "s"})["connections"] == got
