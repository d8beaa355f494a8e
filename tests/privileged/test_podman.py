"""Real podman (runc, cgroupfs) running the hook from a hooks directory, in
the lab's HOST namespace: `--network=host` there is the lab's network."""
from __future__ import annotations

import os
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import wait_until
from tests.privileged.conftest import policy_keys
from tests.privileged.podman import ANN, BUSYBOX_IMAGE, HOST, UP, VPN, client

pytestmark = [pytest.mark.privileged, pytest.mark.container]

def test_annotated_container_leaves_by_vpn0_unannotated_untouched(world, pods):
    with world.lab.capture("up0") as cap:
        r = pods.run("--rm", HOST, ANN, *client(3))
        leaked = cap.stop()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [VPN] * 3
    assert leaked == 0
    assert "createRuntime" in pods.hook_log() and "on vpn0 (routed)" in pods.hook_log()

    # the same container without the annotation: podman and the hook leave it alone
    with world.lab.capture("up0") as cap:
        r = pods.run("--rm", HOST, *client(3))
        seen = cap.stop()
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [UP] * 3
    assert seen > 0, "the capture on up0 saw nothing: it proves nothing"
    assert "no io.netleak.interface annotation" not in pods.hook_log()  # not even run
    assert wait_until(lambda: world.sessions() == 0)


@pytest.mark.parametrize("args,needle", [
    (["--network=none", ANN], "run it with --network=host"),
    ([HOST, "--annotation=io.netleak.interface=vpn0;reboot"], "interface"),
])
def test_refused_container_never_runs(world, pods, args, needle):
    """A private network namespace, a bad interface name: the hook
    exits non-zero, podman aborts the start, the command never runs."""
    keys = policy_keys()
    r = pods.run("--name", "refused", *args, BUSYBOX_IMAGE, "sh", "-c", "echo RAN")
    assert r.returncode != 0
    assert "RAN" not in r.stdout
    assert needle in r.stderr, r.stderr
    assert "refused: " in pods.hook_log()
    state = pods.podman("inspect", "--format", "{{.State.Status}}", "refused").stdout.strip()
    assert state in ("created", "exited", "stopped"), state
    assert world.sessions() == 0 and not world.our_rules()
    assert policy_keys() <= keys


def test_container_on_an_absent_interface_waits_for_it(world, pods):
    """Started before its interface exists: it runs blocked (up0 sees none
    of it), and reaches the server by vpn0 once vpn0 is made."""
    lab_ = world.lab
    lab_.ip(lab_.host, "link", "del", "vpn0")
    with lab_.capture("up0") as cap:
        r = pods.run("-d", "--name", "early", HOST, ANN, *client(600))
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: pods.logs("early").count("failed") >= 3, timeout=30)
        leaked = cap.stop()
    assert leaked == 0
    world.control()
    assert world.states() == ["waiting"]
    assert "on vpn0 (waiting for the interface to appear" in pods.hook_log()
    lab_.recreate("vpn0")
    assert wait_until(lambda: VPN in pods.logs("early"), timeout=30)
    assert UP not in pods.logs("early")


def test_interface_down_while_running_leaks_nothing(world, pods):
    lab_ = world.lab
    r = pods.run("-d", "--name", "flap", HOST, ANN, *client(600))
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: VPN in pods.logs("flap"), timeout=20)
    with lab_.capture("up0") as cap:
        lab_.ip(lab_.host, "link", "set", "vpn0", "down")
        assert wait_until(lambda: world.states() == ["kill-switch"], timeout=10)
        n = len(pods.logs("flap"))
        assert wait_until(lambda: pods.logs("flap")[n:].count("failed") >= 3, timeout=30)
        leaked = cap.stop()
    assert leaked == 0
    world.control()
    lab_.ip(lab_.host, "link", "set", "vpn0", "up")
    lab_.add_backup_default("vpn0")
    n = len(pods.logs("flap"))
    assert wait_until(lambda: VPN in pods.logs("flap")[n:], timeout=20)
    assert UP not in pods.logs("flap")


@pytest.mark.parametrize("how", ["rm -f", "kill -s KILL"])
def test_container_ended_by_podman_leaves_no_state(world, pods, how):
    keys = policy_keys()
    r = pods.run("-d", "--name", "gone", HOST, ANN, BUSYBOX_IMAGE, "sleep", "600")
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: world.sessions() == 1 and bool(world.our_rules()))
    assert policy_keys() > keys
    verb = how.split()
    r = pods.podman(*verb, *(["-t", "0"] if verb[0] == "rm" else []), "gone")
    assert r.returncode == 0, r.stderr
    # (past the suite's linger: rules and routes both)
    assert wait_until(lambda: world.sessions() == 0 and not world.our_rules()
                      and world.our_routes() == "", timeout=15)
    assert policy_keys() <= keys


def test_twenty_containers_in_parallel(world, pods):
    n = 20
    names = [f"par{i}" for i in range(n)]

    def start(name: str):
        return pods.run("-d", "--name", name, HOST, ANN, *client(1, "sleep 600"))
    with ThreadPoolExecutor(n) as pool:
        results = list(pool.map(start, names))
    assert [r.returncode for r in results] == [0] * n, [r.stderr for r in results]
    assert wait_until(lambda: all(pods.logs(c) for c in names), timeout=60)
    assert {c: pods.logs(c) for c in names} == {c: [VPN] for c in names}
    assert world.sessions() == n
    assert world.states() == ["routed"] * n
    r = pods.podman("rm", "-f", "-t", "0", *names, timeout=180)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: world.sessions() == 0 and not world.our_rules(), timeout=30)


def test_podman_run_example(world, pods):
    """examples/podman-run.sh as a user runs it (podman's default cgroup parent)."""
    script = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "podman-run.sh")
    r = subprocess.run([*pods.ns, "sh", script, "vpn0", *client(2)], env=pods.pm.env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [VPN] * 2
    assert wait_until(lambda: world.sessions() == 0)
