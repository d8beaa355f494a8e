"""A session lasts as long as its cgroup holds a process, survives the crash
of every netleak process without a leak, and whatever a crash or a reboot
leaves is collected by the next daemon or by `netleak gc`."""
from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import time

import pytest

from netleak_hook.kernel import cgroupfs, programs
from tests.helpers import alive, wait_until
from tests.privileged.conftest import netleak_pids

pytestmark = pytest.mark.privileged


def _lines(path: str) -> list[str]:
    try:
        with open(path) as f:
            return [ln.strip() for ln in f if ln.strip()]
    except FileNotFoundError:
        return []


def _start_orphan(world, tmp_path, tries: int = 600) -> tuple[int, str]:
    """netleak-exec runs a shell that starts a client in the background and
    exits 0 at once: the client, orphaned, is the session's only process."""
    out, pidfile = str(tmp_path / "orphan.out"), str(tmp_path / "orphan.pid")
    client = shlex.join(world.lab.client(tries=tries))
    r = world.netleak("vpn0", "sh", "-c", f"{client} >{out} 2>&1 & echo $! >{pidfile}")
    assert r.returncode == 0, r.stderr
    pid = int(_lines(pidfile)[0])
    # netleak-exec returned while its orphan still runs: it did not wait for it
    assert alive(pid), "the orphan ended before netleak-exec returned"
    assert wait_until(lambda: bool(_lines(out)), timeout=10), "the orphan never answered"
    assert _lines(out)[0] == "ok 198.51.100.2", _lines(out)
    return pid, out


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _reap_time(world, pid: int) -> float:
    """Kill the session's last process; seconds until nothing is left of it.
    Under events_only() the daemon's full pass is an hour away: a session
    that goes at all went because epoll reported its cgroup empty."""
    _kill(pid)
    t0 = time.monotonic()
    assert wait_until(lambda: world.sessions() == 0 and not world.our_rules()
                      and world.cgroups() == [], timeout=30, step=0.01), \
        "not reaped: the cgroup's populated 0 event was missed"
    return time.monotonic() - t0


def test_orphan_keeps_the_session_routed_blocked_then_reaped(world, tmp_path):
    lab = world.lab
    world.events_only()
    pid, out = _start_orphan(world, tmp_path)
    rows = world.status()
    assert [(r["state"], r["procs"], r["iface"]) for r in rows] == [("routed", 1, "vpn0")]

    # still under control after its parent is gone: blocked while vpn0 is down
    with lab.capture("up0") as cap:
        lab.ip(lab.host, "link", "set", "vpn0", "down")
        n = len(_lines(out))
        assert wait_until(lambda: any(not ln.startswith("ok") for ln in _lines(out)[n:]),
                          timeout=10)
        assert [r["state"] for r in world.status()] == ["kill-switch"]
        n = len(_lines(out))     # a few more tries while the switch is on
        assert wait_until(lambda: len(_lines(out)) >= n + 3, timeout=15)
        leaked = cap.stop()
    assert leaked == 0
    world.control()
    lab.ip(lab.host, "link", "set", "vpn0", "up")
    lab.add_backup_default("vpn0")
    n = len(_lines(out))
    assert wait_until(lambda: "ok 198.51.100.2" in _lines(out)[n:], timeout=10)

    took = _reap_time(world, pid)
    print(f"reaped {took * 1000:.0f} ms after the last process died")


def test_reaped_on_populated_0(world):
    """The common case: the main command exits, and the session goes on the
    cgroup's own event, not on the periodic pass (make bench times it)."""
    world.events_only()
    p = world.spawn("vpn0", "sleep", "30")
    assert wait_until(lambda: world.sessions() == 1 and bool(world.our_rules()))
    took = _reap_time(world, p.pid)
    p.wait()
    print(f"reaped {took * 1000:.0f} ms after the main command died")


def test_sigkill_of_every_netleak_process_then_link_down_leaks_nothing(world, tmp_path):
    """The daemon and netleak-exec runs killed mid-set-up (at random points:
    while starting a daemon, while asking it, while joining), then the
    daemon they started killed too; vpn0 goes down with no netleak process
    alive. Then the next command repairs everything."""
    lab = world.lab
    pid, out = _start_orphan(world, tmp_path)
    _kill(world.daemon_pid())
    rnd = random.Random(7)
    for i in range(8):
        p = world.spawn("vpn0", "sleep", "30")
        time.sleep(rnd.uniform(0.0, 0.25))
        _kill(p.pid)
        p.wait()
    # whichever daemon those started dies too (they run for our run directory)
    def all_dead() -> bool:
        for pid_ in netleak_pids(world.run_dir):
            _kill(pid_)
        return netleak_pids(world.run_dir) == []
    assert wait_until(all_dead, timeout=5, step=0.2)

    with lab.capture("up0") as cap:
        lab.ip(lab.host, "link", "set", "vpn0", "down")
        n = len(_lines(out))
        assert wait_until(lambda: len(_lines(out)) >= n + 3, timeout=15)
        leaked = cap.stop()
    assert leaked == 0
    assert not any(ln.startswith("ok") for ln in _lines(out)[n:])
    world.control()

    lab.ip(lab.host, "link", "set", "vpn0", "up")
    lab.add_backup_default("vpn0")
    r = world.cli("gc", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["sessions"] == 1, report          # the orphan's, finished
    n = len(_lines(out))
    assert wait_until(lambda: "ok 198.51.100.2" in _lines(out)[n:], timeout=10)
    assert world.cgroups() == [world.status()[0]["cgroup"].rsplit("/", 1)[1]]
    _reap_time(world, pid)


def _pinset() -> str:
    return os.path.join(os.environ["NETLEAK_BPF_DIR"], programs.pinset_name())


def test_gc_after_a_simulated_reboot(world, tmp_path):
    """Every netleak process and the workload SIGKILLed, the run directory
    and the pins gone (as after a reboot), while the namespace keeps our
    rules and routes and the cgroup stays: `netleak gc` collects it all."""
    lab = world.lab
    pid, _ = _start_orphan(world, tmp_path)
    _kill(world.daemon_pid())
    _kill(pid)
    for name in os.listdir(world.run_dir):
        os.unlink(os.path.join(world.run_dir, name))
    programs.remove_pins(os.environ["NETLEAK_BPF_DIR"])
    assert world.our_rules() and world.our_routes() and world.cgroups()

    r = world.cli("gc", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["routes_removed"] >= 2 and len(report["cgroups_removed"]) == 1, report
    assert not world.our_rules() and world.our_routes() == "" and world.cgroups() == []
    assert programs.Pinset(_pinset()).complete()
    # and netleak works as before
    r = world.netleak("vpn0", *lab.client())
    assert r.stdout.strip() == "ok 198.51.100.2", r.stderr


def test_half_done_setups_finished_or_rolled_back(world):
    """A state file that records set-ups a crash interrupted: the one whose
    cgroup holds its workload is finished (programs, entry, routes), the one
    whose requester died with an empty cgroup is rolled back."""
    lab = world.lab
    root = cgroupfs.find_cgroup2()
    # a session, to learn what a complete record looks like
    p = world.spawn("vpn0", *lab.client(tries=300))
    assert p.stdout.readline().startswith("ok 198.51.100.2")
    from netleak_hook.rundir.store import Store
    store = Store(world.run_dir)
    lab_state = store.load()
    (live,) = lab_state.sessions.values()
    _kill(world.daemon_pid())

    import dataclasses
    dead = subprocess.Popen(["true"])
    dead.wait()
    half = f"{world.parent}/exec-halfdone-{dead.pid}"
    cgroupfs.make(cgroupfs.abspath(root, half))
    rolled = dataclasses.replace(live, id="rollback", cgroup=half, committed=False,
                                 pid=dead.pid,
                                 cgroup_id=cgroupfs.cgroup_id(cgroupfs.abspath(root, half)))
    finished = dataclasses.replace(live, committed=False)
    store.save(lab_state.with_session(finished).with_session(rolled))

    r = world.cli("gc", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["reaped"] == ["rollback"], report
    rows = world.status()
    assert [(x["id"], x["state"]) for x in rows] == [(live.id, "routed")]
    assert not os.path.exists(cgroupfs.abspath(root, half))
    p.kill()
    p.wait()
