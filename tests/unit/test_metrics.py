"""netleak metrics: the Prometheus text exposition format (pure)."""
from __future__ import annotations

import dataclasses
import os
import re

import pytest

from netleak_hook import metrics
from netleak_hook.core.policy import Stats

LINE = re.compile(r'^[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? [0-9]+$')


def _session(sid="s0", state="routed", counters=True, cgroup="/netleak/exec-s0-1",
             container=None):
    c = dataclasses.asdict(Stats(*range(1, 12), refused_limit=12, refused_kill_connect=13,
                                 refused_kill_sendmsg=14)) if counters else None
    return {"id": sid, "iface": "wg0", "state": state, "cgroup": cgroup,
            "container": container, "counters": c}


def _series(text: str) -> dict[str, str]:
    out = {}
    for ln in text.splitlines():
        if not ln.startswith("#"):
            k, v = ln.rsplit(" ", 1)
            out[k] = v
    return out


def test_every_line_is_valid_exposition_text():
    text = metrics.render({"sessions": [_session(), _session("s1", "kill-switch")]})
    assert text.endswith("\n")
    for ln in text.splitlines():
        assert ln.startswith(("# HELP ", "# TYPE ")) or LINE.match(ln), ln
    names = [ln.split()[2] for ln in text.splitlines() if ln.startswith("# TYPE")]
    assert names == ["netleak_sessions", "netleak_packets_total", "netleak_bytes_total",
                     "netleak_sockets_refused_total", "netleak_kill_switch_refused_total",
                     "netleak_dns_redirected_total",
                     "netleak_events_undelivered_total", "netleak_connections"]


def test_values_by_verdict():
    s = _series(metrics.render({"sessions": [_session(container="c0ffee")]}))
    ids = 'session="s0",iface="wg0",cgroup="/netleak/exec-s0-1",container="c0ffee"'
    assert s[f'netleak_packets_total{{{ids},verdict="passed"}}'] == "1"
    assert s[f'netleak_bytes_total{{{ids},verdict="passed"}}'] == "2"
    assert s[f'netleak_packets_total{{{ids},verdict="loopback"}}'] == "3"
    assert s[f'netleak_packets_total{{{ids},verdict="drop_kill"}}'] == "5"
    assert s[f'netleak_bytes_total{{{ids},verdict="drop_device"}}'] == "8"
    assert s[f'netleak_packets_total{{{ids},verdict="drop_nopolicy"}}'] == "9"
    assert s[f'netleak_sockets_refused_total{{{ids},reason="netns"}}'] == "11"
    assert s[f'netleak_sockets_refused_total{{{ids},reason="limit"}}'] == "12"
    assert s[f'netleak_sockets_refused_total{{{ids},reason="kill"}}'] == "27"
    assert s[f'netleak_kill_switch_refused_total{{{ids},call="connect"}}'] == "13"
    assert s[f'netleak_kill_switch_refused_total{{{ids},call="sendmsg"}}'] == "14"
    assert len([k for k in s if k.startswith("netleak_sockets_refused_total{")]) == 9
    assert s['netleak_sessions{state="routed"}'] == "1"
    assert s['netleak_sessions{state="kill-switch"}'] == "0"


def test_no_sessions_still_says_zero():
    s = _series(metrics.render({"sessions": []}))
    assert s['netleak_sessions{state="routed"}'] == "0"
    assert not any(k.startswith("netleak_packets_total") for k in s)


def test_session_without_counters_has_no_counter_series():
    s = _series(metrics.render({"sessions": [_session(counters=False, state="unknown")]}))
    assert s['netleak_sessions{state="unknown"}'] == "1"
    assert not any(k.startswith("netleak_bytes_total") for k in s)


@pytest.mark.parametrize("raw,escaped", [('a"b', 'a\\"b'), ("a\\b", "a\\\\b"),
                                         ("a\nb", "a\\nb")])
def test_label_values_are_escaped(raw, escaped):
    text = metrics.render({"sessions": [_session(cgroup=raw)]})
    assert f'cgroup="{escaped}"' in text
    assert all(LINE.match(ln) for ln in text.splitlines() if not ln.startswith("#"))


def test_write_replaces_atomically(tmp_path):
    target = tmp_path / "netleak.prom"
    target.write_text("old\n")
    metrics.write(str(target), "new\n")
    assert target.read_text() == "new\n"
    assert os.listdir(tmp_path) == ["netleak.prom"]


def test_write_never_changes_a_file_swapped_in_by_link(tmp_path, monkeypatch):
    """The attack on an atomic replace in a directory another user may
    write: the temporary file swapped for a link to someone else's file
    right after it is made. The mode is set on the descriptor, so that file
    keeps its own; the rename puts the link itself in place."""
    from netleak_hook.rundir import files
    real_mkstemp = files.tempfile.mkstemp
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    prom = tmp_path / "prom"
    prom.mkdir()

    def swapped(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        os.unlink(name)
        os.symlink(victim, name)        # the other user's move
        return fd, name
    monkeypatch.setattr(files.tempfile, "mkstemp", swapped)
    metrics.write(str(prom / "netleak.prom"), "x 1\n")
    assert os.stat(victim).st_mode & 0o777 == 0o600
    assert victim.read_text() == "secret\n"


def test_connections_by_session_and_protocol():
    data = {"sessions": [_session("s0"), _session("s1", cgroup="/netleak/exec-s1-1")],
            "connections": [{"session": "s0", "proto": "tcp"}, {"session": "s0", "proto": "tcp"},
                            {"session": "s1", "proto": "udp"}]}
    s = _series(metrics.render(data))
    ids0 = 'session="s0",iface="wg0",cgroup="/netleak/exec-s0-1",container=""'
    ids1 = 'session="s1",iface="wg0",cgroup="/netleak/exec-s1-1",container=""'
    assert s[f'netleak_connections{{{ids0},proto="tcp"}}'] == "2"
    assert s[f'netleak_connections{{{ids0},proto="udp"}}'] == "0"
    assert s[f'netleak_connections{{{ids1},proto="udp"}}'] == "1"
    # without the daemon's answer, no figures (not zeros that would lie)
    assert not [k for k in _series(metrics.render({"sessions": [_session()]}))
                if k.startswith("netleak_connections{")]
