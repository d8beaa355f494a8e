"""The kernel counters: each moves for the traffic that should move it, and
not for other traffic; `netleak status` and `netleak metrics` show them."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from netleak_hook.kernel import bpfsys, programs
from netleak_hook.core.policy import pack_key
from tests.helpers import wait_until
from tests.privileged.probes import CONNECTED_BOUND, ESCAPE, KILL_CALLS, UNSHARE_SOCKET

pytestmark = pytest.mark.privileged

EXEC = [sys.executable, "-m", "netleak_hook.execcmd"]

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


def _killed(world) -> None:
    """vpn0 down, and the daemon has set the session's kill-switch flag
    (the state says kill-switch as soon as the link is down, before it)."""
    world.lab.ip(world.lab.host, "link", "set", "vpn0", "down")
    assert wait_until(lambda: [r["killed"] for r in world.status()] == [True])


def _spawn_in(held, *argv: str) -> subprocess.Popen:
    """ARGV in the held session's cgroup, with a pipe each way."""
    join = f'echo $$ > {held.path}/cgroup.procs && exec "$@"'
    return held.world.lab.spawn(["sh", "-c", join, "sh", *argv], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)


def _ask(p: subprocess.Popen, command: str) -> list[str]:
    """Send COMMAND to a probe; its lines up to "done"."""
    p.stdin.write(command + "\n")
    p.stdin.flush()
    out = []
    while (line := p.stdout.readline().strip()) != "done":
        assert line, f"the probe ended: {out}"
        out.append(line)
    return out


def test_kill_switch_refusals_and_drops_counted(world, held):
    """While the switch is on, a plain connect and a datagram forced towards
    up0 are refused by the connect and sendmsg programs (routing's errno),
    each counted once as a call; a socket connected by up0 before the switch
    came on sends by send(), which no program sees: its packets are dropped
    at egress and counted as packets."""
    lab = world.lab
    bound = _spawn_in(held, sys.executable, "-c", CONNECTED_BOUND, labmod.SERVER4)
    try:
        assert bound.stdout.readline().strip() == "ready"
        _killed(world)
        c0 = held.counters()
        r = held.run(*labmod.Lab.client(tries=2))
        assert r.stdout.splitlines() == ["refused No route to host"] * 2, r.stdout
        assert _delta(c0, held.counters()) == {"refused_kill_connect": 2}
        r = held.run(sys.executable, "-c", ESCAPE, "bindtodevice", labmod.SERVER4)
        assert r.stdout.splitlines() == ["refused No route to host"] * 5, r.stdout
        assert _delta(c0, held.counters()) == {"refused_kill_connect": 2,
                                               "refused_kill_sendmsg": 5}
        assert _ask(bound, "send") == ["refused Operation not permitted"] * 5
        d = _delta(c0, held.counters())
        bound.stdin.close()
        bound.wait()
    finally:
        if bound.poll() is None:
            bound.kill()
            bound.wait()
    assert set(d) == {"drop_kill_packets", "drop_kill_bytes", "refused_kill_connect",
                      "refused_kill_sendmsg"}, d
    assert d["drop_kill_packets"] == 5 and d["refused_kill_sendmsg"] == 5
    status = world.cli("status")
    assert status.returncode == 0
    [row] = status.stdout.splitlines()[1:]
    assert row.split()[5:8] == ["0", "5", "7"]      # PASS, DROP (packets), REFUSED (calls)


N_TCP, M_UDP = 5, 7


def test_kill_switch_refusals_counted_exactly_by_call(world):
    """A workload (nobody) makes exactly N TCP connects and M UDP sendtos,
    IPv4 and IPv6, while vpn0 is down: each fails at once with "No route to
    host" and the session's counters say N and M under the kill switch,
    nothing else (no packet: none on up0 either). Its calls to loopback and
    to this machine's own addresses (the down vpn0's IPv4 one too) go
    through and are not counted; with vpn0 back, the same calls go out."""
    lab = world.lab
    world.events_only()
    own = ["192.0.2.2", "2001:db8:1::2", "198.51.100.2"]    # up0's, and vpn0's
    p = lab.spawn(EXEC + ["-u", "nobody", "vpn0", sys.executable, "-c", KILL_CALLS,
                          labmod.SERVER4, labmod.SERVER6, str(labmod.PORT), *own],
                  env=world.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert wait_until(lambda: [r["procs"] for r in world.status()] == [1])
        _killed(world)
        (row,) = world.status()
        c0 = row["counters"]
        with lab.capture("up0") as cap:
            tcp = _ask(p, f"tcp {N_TCP}")
            udp = _ask(p, f"udp {M_UDP}")
            leaked = cap.stop()
        assert tcp == ["tcp refused No route to host"] * N_TCP
        assert [ln.split(" ", 1)[1] for ln in udp] == ["refused No route to host"] * M_UDP
        assert [ln.split()[0] for ln in udp] == ["udp4", "udp6", "udp4mapped", "udp4bound",
                                                 "udp4", "udp6", "udp4mapped"]
        assert leaked == 0
        (row,) = world.status()
        assert _delta(c0, row["counters"]) == {"refused_kill_connect": N_TCP,
                                               "refused_kill_sendmsg": M_UDP}
        assert row["refused"]["kill"] == N_TCP + M_UDP
        assert row["refused_calls"] == N_TCP + M_UDP and row["dropped"] == 0

        c1 = row["counters"]
        local = _ask(p, "local")
        assert local == [f"local-{k} {h} ok" for h in ["127.0.0.1", "::1", *own]
                         for k in ("tcp", "udp")], local
        d = _delta(c1, world.status()[0]["counters"])
        assert set(d) == {"loopback_packets", "loopback_bytes"}, d
        assert d["loopback_packets"] >= 3 * 5          # a handshake and a datagram each

        m = world.cli("metrics")
        assert m.returncode == 0, m.stderr

        def metric(name: str, label: str) -> int:
            [v] = [int(ln.rsplit(" ", 1)[1]) for ln in m.stdout.splitlines()
                   if ln.startswith(name + "{") and f'session="{row["id"]}"' in ln
                   and label in ln]
            return v
        assert metric("netleak_kill_switch_refused_total", 'call="connect"') == N_TCP
        assert metric("netleak_kill_switch_refused_total", 'call="sendmsg"') == M_UDP
        assert metric("netleak_sockets_refused_total", 'reason="kill"') == N_TCP + M_UDP

        # the positive control of the refusals: vpn0 back, the same calls leave
        lab.ip(lab.host, "link", "set", "vpn0", "up")
        assert wait_until(lambda: world.states() == ["routed"]
                          and world.status()[0]["killed"] is False, timeout=10)
        assert _ask(p, "tcp 1") == ["tcp ok"]         # IPv4 (vpn0 lost its IPv6 address)
        (row,) = world.status()
        assert row["refused"]["kill"] == N_TCP + M_UDP and row["counters"]["passed_packets"] > 0
        p.stdin.close()
        assert p.wait(timeout=30) == 0
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    world.control()


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
