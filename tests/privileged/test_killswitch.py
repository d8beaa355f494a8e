"""No packet leaves by the default uplink while vpn0 flaps, is deleted and
re-created, or while no netleak process is alive. Each test counts packets
on up0 (the leak path) and proves the capture sees a plain request."""
from __future__ import annotations

import os
import signal
import time

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.privileged


def _trace(out: str) -> str:
    return "".join("+" if ln.startswith("ok") else "x"
                   for ln in out.splitlines() if ln.strip())


def _first_answer(p) -> str:
    """Wait for the workload's first answer: the session is up and routed."""
    line = p.stdout.readline()
    assert line.startswith("ok 198.51.100.2"), line + p.stderr.read()
    return line


def _until_refused(p) -> str:
    """Read the workload's answers up to its first refused one: the loss
    of the interface has reached it."""
    seen = ""
    while True:
        line = p.stdout.readline()
        assert line, f"the workload ended without being refused: {seen!r}"
        seen += line
        if not line.startswith("ok"):
            return seen


@pytest.mark.parametrize("event", ["down", "delete"])
def test_flap_never_leaks_and_resumes(world, event):
    lab = world.lab
    with lab.capture("up0") as cap:
        p = world.spawn("vpn0", *lab.client(tries=25))
        first = _first_answer(p)
        if event == "down":
            lab.ip(lab.host, "link", "set", "vpn0", "down")
            first += _until_refused(p)
            lab.ip(lab.host, "link", "set", "vpn0", "up")
        else:
            lab.ip(lab.host, "link", "del", "vpn0")
            first += _until_refused(p)
            lab.recreate("vpn0")       # same name, new ifindex
        out, err = p.communicate(timeout=90)
        leaked = cap.stop()
    trace = _trace(first + out)
    assert leaked == 0
    assert "x" in trace, f"the interface loss was not seen: {trace}"
    assert trace.startswith("+") and trace.endswith("++"), trace
    assert p.returncode == 0, err
    world.control()


def test_resumes_on_the_link_event(world):
    """Traffic resumes when vpn0 comes back, driven by the netlink event:
    the daemon's periodic full pass is an hour away."""
    lab = world.lab
    world.events_only()
    p = world.spawn("vpn0", *lab.client(tries=60))
    _first_answer(p)
    lab.ip(lab.host, "link", "set", "vpn0", "down")
    assert wait_until(lambda: world.states() == ["kill-switch"], timeout=10)
    lab.ip(lab.host, "link", "set", "vpn0", "up")
    t_up = time.monotonic()
    deadline = t_up + 30
    ok = False
    while time.monotonic() < deadline and not ok:
        r = world.netleak("vpn0", *lab.client())
        ok = r.stdout.startswith("ok 198.51.100.2")
    took = time.monotonic() - t_up
    p.kill()
    p.wait()
    assert ok, "traffic did not resume after vpn0 came back"
    print(f"resumed {took * 1000:.0f} ms after vpn0 came back")


def test_no_leak_with_no_netleak_process_alive(world):
    """SIGKILL the daemon, then take vpn0 down and delete it: the kernel side
    alone (unreachable fallback, ifindex check) keeps the cgroup in."""
    lab = world.lab
    p = world.spawn("vpn0", *lab.client(tries=20))
    _first_answer(p)
    os.kill(world.daemon_pid(), signal.SIGKILL)
    with lab.capture("up0") as cap:
        lab.ip(lab.host, "link", "set", "vpn0", "down")
        seen = _until_refused(p)
        lab.ip(lab.host, "link", "del", "vpn0")
        out, _ = p.communicate(timeout=90)
        leaked = cap.stop()
    assert leaked == 0
    assert "x" in _trace(seen + out)
    world.control()
    # a new netleak command brings a daemon back, which cleans up
    lab.recreate("vpn0")
    r = world.netleak("vpn0", *lab.client())
    assert r.stdout.strip() == "ok 198.51.100.2", r.stderr


def test_down_before_start_blocks_until_up(world):
    """A session started while vpn0 is administratively down is blocked from
    its first packet, then routed once vpn0 comes up. (A down link has no
    routes to learn its gateway from: here --via gives it; test_waiting.py
    has it learned once the link is back.)"""
    lab = world.lab
    lab.ip(lab.host, "link", "set", "vpn0", "down")
    with lab.capture("up0") as cap:
        p = world.spawn("--via", "198.51.100.1", "vpn0", *lab.client(tries=15))
        seen = _until_refused(p)
        lab.ip(lab.host, "link", "set", "vpn0", "up")
        lab.add_backup_default("vpn0")
        out, err = p.communicate(timeout=90)
        leaked = cap.stop()
    trace = _trace(seen + out)
    assert leaked == 0
    assert trace.startswith("x") and trace.endswith("+"), (trace, err)
    world.control()
