"""The kernel counters: each moves for the traffic that should move it, and
not for other traffic; `netleak status` and `netleak metrics` show them."""
from __future__ import annotations

import os
import sys

import pytest

from netleak_hook import lab as labmod
from netleak_hook.kernel import bpfsys, programs
from netleak_hook.core.policy import pack_key
from tests.helpers import wait_until
from tests.privileged.probes import ESCAPE, UNSHARE_SOCKET

pytestmark = pytest.mark.privileged

def _delta(before: dict, after: dict) -> dict:
    return {k: after[k] - before[k] for k in after if after[k] != before[k]}


def test_passed_counts_packets_and_bytes_by_the_interface(held):
    c0 = held.counters()
    r = held.run(*labmod.Lab.client(tries=3))
    assert r.stdout.splitlines() == ["ok 198.51.100.2"] * 3
    d = _delta(c0, held.counters())
    assert set(d) == {"passed_packets", "passed_bytes"}, d
    assert d["passed_packets"] >= 3 * 3          # SYN, ACK, FIN at least, per try
    assert d["passed_bytes"] >= d["passed_packets"] * 40


def test_loopback_counted_apart(held):
    c0 = held.counters()
    held.run(*labmod.Lab.client("127.0.0.1", tries=2))   # refused: RST comes back
    d = _delta(c0, held.counters())
    assert set(d) == {"loopback_packets", "loopback_bytes"}, d
    assert d["loopback_packets"] >= 2


def test_kill_switch_drops_counted(world, held):
    """While the switch is on, the session's routes end in `unreachable`: a
    plain connect fails before any packet exists (nothing to count). A
    packet that finds a way out anyway (bound to up0) is dropped for the
    kill switch, the first check."""
    lab = world.lab
    lab.ip(lab.host, "link", "set", "vpn0", "down")
    assert wait_until(lambda: held.rows()[0]["state"] == "kill-switch")
    c0 = held.counters()
    r = held.run(*labmod.Lab.client(tries=2))
    assert r.stdout.splitlines() == ["refused No route to host"] * 2, r.stdout
    assert held.counters() == c0
    r = held.run(sys.executable, "-c", ESCAPE, "bindtodevice", labmod.SERVER4)
    assert "ok" not in r.stdout
    d = _delta(c0, held.counters())
    assert set(d) == {"drop_kill_packets", "drop_kill_bytes"}, d
    assert d["drop_kill_packets"] == 5
    status = world.cli("status")
    assert status.returncode == 0
    [row] = status.stdout.splitlines()[1:]
    assert row.split()[5] == "0" and int(row.split()[6]) >= 2     # PASS, DROP


def test_wrong_device_drops_counted(held):
    c0 = held.counters()
    r = held.run(sys.executable, "-c", ESCAPE, "bindtodevice", labmod.SERVER4)
    assert "ok" not in r.stdout
    d = _delta(c0, held.counters())
    assert set(d) == {"drop_device_packets", "drop_device_bytes"}, d
    assert d["drop_device_packets"] == 5


def test_missing_policy_drops_counted(world, held):
    """A policy entry removed behind the daemon's back: fail closed, counted
    under the cgroup's own id; `netleak gc` puts the entry back."""
    pins = programs.Pinset(os.path.join(os.environ["NETLEAK_BPF_DIR"], programs.pinset_name()))
    maps = programs.Maps(pins)
    try:
        cid = held.rows()[0]["cgroup_id"]
        c0 = held.counters()
        bpfsys.map_delete(maps.policy, pack_key(cid))
        assert held.rows()[0]["state"] == "no-policy"
        r = held.run(*labmod.Lab.client(tries=2))
        assert "ok" not in r.stdout
        d = _delta(c0, held.counters())
        assert set(d) == {"drop_nopolicy_packets", "drop_nopolicy_bytes"}, d
    finally:
        maps.close()
    assert world.cli("gc").returncode == 0
    assert held.rows()[0]["state"] == "routed"
    assert held.run(*labmod.Lab.client()).stdout.startswith("ok 198.51.100.2")


def test_sockets_of_another_namespace_refused_counted(held):
    c0 = held.counters()
    r = held.run("unshare", "-n", sys.executable, "-c", UNSHARE_SOCKET)
    assert r.returncode != 0 and "Operation not permitted" in r.stderr
    assert _delta(c0, held.counters()) == {"refused_netns": 1}


def test_metrics_show_the_same_counters(world, held):
    assert held.run(*labmod.Lab.client(tries=2)).stdout.splitlines() == \
        ["ok 198.51.100.2"] * 2
    c = held.counters()
    assert c["passed_packets"] > 0
    r = world.cli("metrics")
    assert r.returncode == 0, r.stderr
    sid = held.rows()[0]["id"]
    line = [ln for ln in r.stdout.splitlines()
            if ln.startswith("netleak_packets_total{") and f'session="{sid}"' in ln
            and 'verdict="passed"' in ln]
    # the held process sleeps: nothing moves between the two reads
    assert len(line) == 1 and int(line[0].rsplit(" ", 1)[1]) == c["passed_packets"]
    assert 'netleak_sessions{state="routed"} 1' in r.stdout
