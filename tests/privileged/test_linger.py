"""An interface's set-up (rules, table routes) lingers after its last session
for NETLEAK_LINGER_SECONDS: the next command on it reuses it as it is; once
the bound is over, after a clean stop of the daemon, or by the gc that
follows a crash, nothing of it remains; while it lingers the kill switch
holds for every session that comes, whatever the link did meanwhile."""
from __future__ import annotations

import json
import os
import re
import signal

import pytest

from tests.helpers import wait_until

pytestmark = pytest.mark.privileged

VPN = "ok 198.51.100.2"


def _events(world, name: str) -> list[dict]:
    """The daemon log's records of event NAME (key -> value)."""
    pair = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S*)')
    out = []
    with open(os.path.join(world.run_dir, "daemon.log")) as f:
        for ln in f:
            rec = {k: (v[1:-1] if v.startswith('"') else v) for k, v in pair.findall(ln)}
            if rec.get("event") == name:
                out.append(rec)
    return out


def _one_session(world) -> None:
    r = world.netleak("vpn0", *world.lab.client())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == VPN, r.stdout


def _lingering(world) -> list[dict]:
    r = world.cli("status", "--json")
    assert r.returncode == 0, r.stderr
    return [b for b in json.loads(r.stdout)["bindings"] if b["lingering"] is not None]


def _gone(world) -> bool:
    return not world.our_rules() and world.our_routes() == ""


def test_a_lone_session_within_the_linger_reuses_the_set_up(world):
    world.env["NETLEAK_LINGER_SECONDS"] = "60"
    world.events_only()
    _one_session(world)
    assert wait_until(lambda: world.sessions() == 0)
    rules, routes = sorted(world.our_rules()), world.our_routes()
    assert rules and "dev vpn0" in routes
    (b,) = _lingering(world)
    assert b["iface"] == "vpn0" and b["sessions"] == 0 and 0 < b["lingering"] <= 60
    r = world.cli("status")
    assert r.returncode == 0 and "vpn0: lingering" in r.stdout, r.stdout
    assert [e["iface"] for e in _events(world, "linger")] == ["vpn0"]
    made = len(_events(world, "routes"))

    with world.lab.capture("up0") as cap:
        _one_session(world)
        leaked = cap.stop()
    assert leaked == 0
    world.control()
    # the second session found its table and rules in place: none made
    assert len(_events(world, "routes")) == made
    assert wait_until(lambda: world.sessions() == 0)
    assert sorted(world.our_rules()) == rules and world.our_routes() == routes
    assert _events(world, "release") == []
    # the daemon's fixture check waits out no 60 s: a gc collects it now
    r = world.cli("gc", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["released"] == ["vpn0"], r.stdout
    assert _gone(world)


def test_after_the_bound_nothing_remains(world):
    world.env["NETLEAK_LINGER_SECONDS"] = "2"
    world.events_only()
    _one_session(world)
    assert wait_until(lambda: world.sessions() == 0)
    assert world.our_rules() and world.our_routes()
    assert wait_until(lambda: _gone(world), timeout=10), world.rules()
    (rel,) = _events(world, "release")
    assert (rel["iface"], rel["lingered"]) == ("vpn0", "true")
    assert _lingering(world) == []


def test_a_clean_daemon_stop_removes_a_lingering_set_up(world):
    world.env["NETLEAK_LINGER_SECONDS"] = "600"
    _one_session(world)
    assert wait_until(lambda: world.sessions() == 0)
    assert world.our_rules() and world.our_routes()
    pid = world.daemon_pid()
    os.kill(pid, signal.SIGTERM)
    assert wait_until(lambda: not os.path.exists(f"/proc/{pid}"), timeout=10)
    assert _gone(world), world.rules()


def test_a_crashed_daemons_linger_goes_at_the_next_start(world):
    world.env["NETLEAK_LINGER_SECONDS"] = "600"
    _one_session(world)
    assert wait_until(lambda: world.sessions() == 0)
    os.kill(world.daemon_pid(), signal.SIGKILL)
    # left until the next daemon starts (README says so)
    assert world.our_rules() and world.our_routes()
    r = world.cli("gc", "--json")           # starts one: its start-up gc releases it
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["released"] == ["vpn0"], r.stdout
    assert _gone(world)
    _one_session(world)                    # and it works as before
    assert wait_until(lambda: world.sessions() == 0)
    r = world.cli("gc")
    assert r.returncode == 0, r.stderr


def test_the_kill_switch_holds_for_sessions_that_come_while_it_lingers(world):
    """The link is re-created (a new ifindex) and then taken down while the
    set-up lingers: the table follows it, so the next session is routed by
    the new link, and one while it is down leaks nothing."""
    lab = world.lab
    world.env["NETLEAK_LINGER_SECONDS"] = "60"
    world.events_only()             # what follows the link comes from its events
    _one_session(world)
    assert wait_until(lambda: world.sessions() == 0)
    lab.recreate("vpn0")
    index = lab.ip(lab.host, "-o", "link", "show", "vpn0").stdout.split(":")[0]
    assert wait_until(lambda: "dev vpn0" in world.our_routes())
    with lab.capture("up0") as cap:
        _one_session(world)
        leaked = cap.stop()
    assert leaked == 0
    assert wait_until(lambda: world.sessions() == 0)
    assert [b["ifindex"] for b in _lingering(world)] == [int(index)]

    lab.ip(lab.host, "link", "set", "vpn0", "down")
    assert wait_until(lambda: "dev vpn0" not in world.our_routes())
    with lab.capture("up0") as cap:
        r = world.netleak("vpn0", *lab.client(tries=3))
        leaked = cap.stop()
    assert r.returncode == 0, r.stderr
    assert VPN not in r.stdout and leaked == 0
    world.control()
    lab.ip(lab.host, "link", "set", "vpn0", "up")
    r = world.cli("gc")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: world.sessions() == 0 and _gone(world))
