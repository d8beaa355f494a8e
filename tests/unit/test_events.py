"""Blocked-attempt events: the kernel record, its JSON and column forms,
the event log and its reader; the daemon's logfmt lines (pure, plus files
in a temporary folder)."""
from __future__ import annotations

import json
import os
import re
import socket
import struct
import threading

import pytest

from netleak_hook.core import events, lifecycle
from netleak_hook.rundir import eventlog
from netleak_hook.rundir import logfmt
from tests.helpers import make_session, wait_until


def raw_event(reason=2, hook=1, family=2, proto=17, dport=8080, daddr=b"\xcb\x00\x71\x0a",
              pid=4242, comm=b"curl", suppressed=0, t=5_000_000_000, cgroup=77,
              sock_cgroup=78) -> bytes:
    return struct.pack("<QQQIIBBBBHH16s16s", t, cgroup, sock_cgroup, pid, suppressed,
                       reason, hook, family, proto, dport, 0, daddr.ljust(16, b"\0"),
                       comm.ljust(16, b"\0"))


def test_record_size_matches_the_c_struct():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "netleak.h")) as f:
        header = f.read()
    body = header[header.index("struct nl_event {"):]
    body = body[:body.index("};")]
    sizes = {"u64": 8, "u32": 4, "u16": 2, "u8": 1, "char": 1}
    total = 0
    for m in re.finditer(r"^\s+(u64|u32|u16|u8|char) (\w+)(?:\[(\d+)\])?;", body, re.M):
        total += sizes[m.group(1)] * int(m.group(3) or 1)
    assert events.EVENT_SIZE == total == 72


def test_reason_and_hook_numbers_match_the_c_enums():
    with open(os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "netleak.h")) as f:
        header = f.read()
    c_reasons = {int(v): k for k, v in re.findall(r"NL_R_(\w+) = (\d+)", header)}
    assert {n: events.REASONS[n] for n in c_reasons} == {
        1: "kill-switch", 2: "wrong-device", 3: "no-policy", 4: "netns", 5: "no-dns",
        6: "no-network", 7: "proxy", 8: "source", 9: "mptcp", 10: "limit",
        11: "deny"}
    assert set(c_reasons) == set(events.REASONS)
    c_hooks = {int(v) for _, v in re.findall(r"NL_H_(\w+) = (\d+)", header)}
    assert c_hooks == set(events.HOOKS)
    assert set(events.REASON_TEXT) == set(events.REASONS.values())


def test_decode_ipv4_udp():
    ev = events.decode(raw_event())
    assert ev == {"boot_ns": 5_000_000_000, "cgroup_id": 77, "sock_cgroup_id": 78,
                  "pid": 4242, "comm": "curl", "reason": "wrong-device", "hook": "egress",
                  "family": "ipv4", "protocol": "udp", "daddr": "203.0.113.10",
                  "dport": 8080, "suppressed": 0, "rule_index": None}


def test_decode_ipv6_and_mapped():
    a = socket.inet_pton(socket.AF_INET6, "2001:db8::1")
    ev = events.decode(raw_event(family=10, proto=6, daddr=a, hook=3, reason=1))
    assert (ev["family"], ev["protocol"], ev["daddr"], ev["hook"], ev["reason"]) == \
        ("ipv6", "tcp", "2001:db8::1", "connect", "kill-switch")
    m = socket.inet_pton(socket.AF_INET6, "::ffff:203.0.113.5")
    assert events.decode(raw_event(family=10, daddr=m))["daddr"] == "::ffff:cb00:7105"


def test_decode_socket_hook_has_no_destination_nor_task_outside_task_context():
    ev = events.decode(raw_event(reason=4, hook=2, daddr=b"", dport=0, pid=0, comm=b""))
    assert (ev["daddr"], ev["dport"], ev["pid"], ev["comm"], ev["reason"], ev["hook"]) == \
        (None, None, None, None, "netns", "socket")


def test_decode_unknown_numbers_kept_as_text():
    ev = events.decode(raw_event(reason=99, hook=98, family=0, proto=200))
    assert (ev["reason"], ev["hook"], ev["family"], ev["protocol"], ev["daddr"]) == \
        ("99", "98", None, "200", None)


def test_decode_comm_not_utf8():
    assert events.decode(raw_event(comm=b"\xffab"))["comm"] == "\ufffdab"


def test_enrich_names_the_session_and_converts_the_clock():
    ev = events.decode(raw_event(t=2_500_000_000))
    out = events.enrich(ev, 1_790_000_000.0, {"id": "ab12", "container": "c0ffee",
                                              "cgroup": "/netleak/x", "iface": "wg0"})
    assert out["ts"] == 1_790_000_002.5
    assert out["time"] == "2026-09-21T14:13:22.500000Z"
    assert (out["session"], out["container"], out["cgroup"], out["iface"]) == \
        ("ab12", "c0ffee", "/netleak/x", "wg0")
    unknown = events.enrich(ev, 0.0, None)
    assert (unknown["session"], unknown["container"], unknown["cgroup"]) == (None, None, None)
    assert unknown["cgroup_id"] == 77
    json.dumps(out)     # JSON-ready


def _ev(**kw) -> dict:
    base = events.enrich(events.decode(raw_event()), 1_790_000_000.0,
                         {"id": "ab12cd34ef", "cgroup": "/netleak/x", "iface": "wg0"})
    base.update(kw)
    return base


@pytest.mark.parametrize("kw, dest", [
    ({}, "203.0.113.10:8080"),
    ({"daddr": "2001:db8::1", "family": "ipv6"}, "[2001:db8::1]:8080"),
    ({"dport": None, "protocol": "icmp"}, "203.0.113.10"),
    ({"daddr": None, "dport": None}, "-"),
])
def test_dest_text(kw, dest):
    assert events.dest_text(_ev(**kw)) == dest


def test_line_columns_under_80():
    long = _ev(comm="a-very-long-command-name", daddr="2001:db8:ff::10",
               family="ipv6", dport=65535, pid=4194304, reason="wrong-device")
    widest4 = _ev(daddr="255.255.255.255", dport=65535, pid=4194304)
    for ev in (_ev(), long, widest4, _ev(pid=None, comm=None, session=None)):
        ln = events.line(ev)
        assert len(ln) < 80, ln
        assert len(ln.split()) == len(events.HEADER.split())
    assert events.line(long).split()[5] == "udp6"
    whole = _ev(daddr="2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", family="ipv6")
    assert events.line(whole).endswith("[2001:db8:ffff:ffff:ffff:ffff:ffff:ffff]:8080")
    assert events.line(_ev(pid=None, comm=None, session=None)).split()[1:4] == ["-"] * 3


def test_held_back_note():
    assert events.held_back(_ev()) is None
    assert events.held_back(_ev(suppressed=120)) == \
        "# 120 more events of session ab12cd34ef suppressed by the rate limit"


def test_matches_by_id_or_prefix():
    ev = _ev()
    assert events.matches(ev, None) and events.matches(ev, "ab12") and \
        events.matches(ev, "ab12cd34ef")
    assert not events.matches(ev, "zz") and not events.matches(_ev(session=None), "ab")


# ---------- the log file ----------

def _log(path, **kw) -> "eventlog.EventLog":
    return eventlog.EventLog(os.open(str(path), os.O_RDONLY | os.O_DIRECTORY), str(path), **kw)


def test_log_appends_turns_over_and_reads_back(tmp_path):
    log = _log(tmp_path, max_bytes=1400)
    batches = [[_ev(dport=i)] for i in range(6)]
    for b in batches:
        log.append(b)
    assert os.path.exists(tmp_path / "events.jsonl.1")
    got = [e["dport"] for e in eventlog.recorded(str(tmp_path))]
    assert got == sorted(got) and got[-1] == 5 and len(got) >= 3
    assert os.stat(tmp_path / "events.jsonl").st_mode & 0o777 == 0o600


def test_log_never_writes_through_a_link(tmp_path):
    from netleak_hook.core.errors import NetleakError
    target = tmp_path / "elsewhere"
    target.write_text("precious\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "events.jsonl").symlink_to(target)
    with pytest.raises(NetleakError, match="symbolic link"):
        _log(run).append([_ev()])
    assert target.read_text() == "precious\n"


def test_recorded_skips_torn_and_foreign_lines(tmp_path):
    (tmp_path / "events.jsonl").write_text(
        json.dumps(_ev()) + "\n" + '{"reason": "kill' + "\n" + "[1, 2]\n" + '{"a": 1}\n')
    assert len(eventlog.recorded(str(tmp_path))) == 1
    assert eventlog.recorded(str(tmp_path / "none")) == []


class Following:
    """events.follow in a thread, collecting dports; entered once it holds
    the log (its first stop() call comes after the file is opened)."""

    def __init__(self, run_dir: str) -> None:
        self.got: list[int] = []
        self.done = threading.Event()
        self.started = threading.Event()

        def stop() -> bool:
            self.started.set()
            return self.done.is_set()
        self.thread = threading.Thread(target=eventlog.follow, kwargs={
            "run_dir": run_dir, "emit": lambda e: self.got.append(e["dport"]),
            "stop": stop, "poll": 0.01})

    def __enter__(self) -> "Following":
        self.thread.start()
        assert self.started.wait(5)
        return self

    def wait_for(self, n: int) -> list[int]:
        wait_until(lambda: len(self.got) >= n, timeout=5, step=0.01)
        return self.got

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def test_follow_sees_new_events_across_a_turn_over(tmp_path):
    log = _log(tmp_path, max_bytes=1400)    # ~3 lines a file
    log.append([_ev(dport=1)])              # before follow: not shown
    with Following(str(tmp_path)) as f:
        for i in range(2, 12):
            log.append([_ev(dport=i)])
            f.wait_for(i - 1)               # one turn-over at a time, as in life
        got = f.wait_for(10)
    assert os.path.exists(tmp_path / "events.jsonl.1")
    assert got == list(range(2, 12))


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path):
    with Following(str(tmp_path)) as f:
        _log(tmp_path).append([_ev(dport=3)])
        assert f.wait_for(1) == [3]


# ---------- the daemon's log lines ----------

@pytest.mark.parametrize("v, text", [
    ("wg0", "wg0"), (5, "5"), (True, "true"), (None, '""'), ("", '""'),
    ("a b", '"a b"'), ('say "hi"', '"say \\"hi\\""'), ("x=1", '"x=1"'),
    ("two\nlines", '"two\\nlines"'), (0.25, "0.25"), ("a\rb\tc", '"a\\rb\\tc"'),
    ("x\x1by\u2028", '"x\\u001by\\u2028"'),
])
def test_logfmt_values(v, text):
    assert logfmt.value(v) == text


def test_logfmt_line_orders_time_level_pid_event_fields_msg():
    ln = logfmt.line(1_790_000_000.5, "INFO", 42, "wg0 is down: kill switch on",
                     {"iface": "wg0", "event": "kill-switch-on", "sessions": 2})
    assert ln == ('time=2026-09-21T14:13:20.500000Z level=info pid=42 event=kill-switch-on '
                  'iface=wg0 sessions=2 msg="wg0 is down: kill switch on"')


def test_logfmt_formatter_one_line_even_with_a_traceback():
    import logging
    try:
        raise ValueError("boom")
    except ValueError:
        import sys
        rec = logging.LogRecord("netleak.daemon", logging.ERROR, __file__, 1, "failed %s",
                                ("x",), sys.exc_info())
    out = logfmt.Formatter().format(rec)
    assert "\n" not in out and out.startswith("time=") and "level=error" in out
    assert 'msg="failed x\\nTraceback' in out and "ValueError: boom" in out


# ---------- why a session ended ----------

@pytest.mark.parametrize("committed, populated, cause", [
    (True, False, "empty"), (True, None, "cgroup-gone"), (False, None, "cgroup-gone"),
    (False, False, "setup-abandoned"),
])
def test_reap_cause(committed, populated, cause):
    s = make_session(id="s", cgroup="netleak/x", pinset="p", committed=committed)
    assert lifecycle.reap_cause(s, populated) == cause
