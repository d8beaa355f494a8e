"""Fixtures for privileged tests: a lab of two namespaces per test, its own
run directory and cgroup parent, and a check that nothing is left behind."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile

import pytest

from netleak_hook import lab
from netleak_hook.core.config import DEFAULT_TABLE_BASE
from netleak_hook.kernel import bpfsys, cgroupfs, programs
from tests.conftest import cannot_run, require_root
from tests.helpers import alive, wait_until  # noqa: F401  (kept importable from here)
from tests.privileged import podman

EXEC = [sys.executable, "-m", "netleak_hook.execcmd"]
LINGER = "0.3"      # the suite's NETLEAK_LINGER_SECONDS
CLI = [sys.executable, "-m", "netleak_hook.cli"]


class World:
    """A lab plus the environment netleak runs with inside it."""

    def __init__(self, the_lab: lab.Lab, run_dir: str, parent: str) -> None:
        self.lab = the_lab
        self.run_dir = run_dir
        self.parent = parent
        # an interface's set-up lingers this long after its last session:
        # short, so "nothing left behind" is checked past its bound, not
        # before it (test_linger.py sets its own)
        self.env = dict(os.environ, NETLEAK_RUN_DIR=run_dir, NETLEAK_CGROUP_PARENT=parent,
                        NETLEAK_LINGER_SECONDS=LINGER)

    def events_only(self) -> None:
        """The daemon started after this runs its full pass once an hour
        only: what a test then sees must come from kernel events (epoll on
        cgroup.events, netlink), not from the periodic safety net."""
        self.env["NETLEAK_RECONCILE_SECONDS"] = "3600"

    def netleak(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `netleak-exec ARGS` inside the lab's HOST namespace."""
        return self.lab.run(EXEC + list(args), env=self.env, timeout=timeout)

    def cli(self, *args: str, env: dict | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess:
        """Run `netleak ARGS` inside the lab's HOST namespace."""
        return self.lab.run(CLI + list(args), env=env or self.env, timeout=timeout)

    def daemon_pid(self) -> int:
        with open(os.path.join(self.run_dir, "daemon.pid")) as f:
            return int(f.read())

    def spawn(self, *args: str) -> subprocess.Popen:
        return self.lab.spawn(EXEC + list(args), env=self.env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)

    def rules(self) -> str:
        return self.lab.ip(self.lab.host, "rule").stdout + \
            self.lab.ip(self.lab.host, "-6", "rule").stdout

    def our_rules(self) -> list[str]:
        """netleak's rules, at whatever priority they moved to: into its
        tables, or into main for a session mark of its own."""
        import re
        tables = range(DEFAULT_TABLE_BASE, DEFAULT_TABLE_BASE + 64)
        out = []
        for ln in self.rules().splitlines():
            m = re.search(r"lookup (\d+)", ln)
            if (m and int(m.group(1)) in tables) or re.search(r"fwmark 0x6e6c[89a-f]", ln):
                out.append(ln)
        return out

    def our_routes(self) -> str:
        out = ""
        for fam in ("-4", "-6"):
            for t in range(DEFAULT_TABLE_BASE, DEFAULT_TABLE_BASE + 4):
                out += self.lab.ip(self.lab.host, fam, "route", "show", "table", str(t),
                                   check=False).stdout
        return out

    def parent_path(self) -> str:
        return cgroupfs.abspath(cgroupfs.find_cgroup2(), self.parent)

    def cgroups(self) -> list[str]:
        """Cgroups under the parent, but the auto-started daemon's own and
        the relay's (where its sockets are made)."""
        root = self.parent_path()
        if not os.path.isdir(root):
            return []
        return [d for d in os.listdir(root)
                if os.path.isdir(os.path.join(root, d)) and d not in ("daemon", "relay")]

    def sessions(self) -> int:
        from netleak_hook.rundir.store import Store
        return len(Store(self.run_dir).load().sessions)

    def status(self) -> list[dict]:
        """`netleak status --json`: the rows."""
        r = self.cli("status", "--json")
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)["sessions"]

    def states(self) -> list[str]:
        return [row["state"] for row in self.status()]

    def control(self) -> None:
        """Positive control of a leak test: a plain request from HOST leaves
        by up0, and a capture there sees it."""
        with self.lab.capture("up0") as cap:
            self.lab.run(self.lab.client())
            assert cap.stop() > 0, "the capture on up0 sees nothing: it proves nothing"

    def hook_log(self) -> str:
        try:
            with open(os.path.join(self.run_dir, "hook.log")) as f:
                return f.read()
        except FileNotFoundError:
            return ""


@pytest.fixture(scope="session", autouse=True)
def test_pins():
    """The suite pins its programs in a folder of its own and removes it at
    the end: a user's pins under /sys/fs/bpf/netleak are never touched, and
    nothing of the suite's stays on the machine."""
    if os.geteuid() != 0:
        yield None
        return
    bpf_dir = f"/sys/fs/bpf/netleak-test-{os.getpid()}"
    mounted_before = os.path.ismount("/sys/fs/bpf")
    remove_stale_test_pins()
    old = os.environ.get("NETLEAK_BPF_DIR")
    os.environ["NETLEAK_BPF_DIR"] = bpf_dir
    try:
        yield bpf_dir
    finally:
        if old is None:
            del os.environ["NETLEAK_BPF_DIR"]
        else:
            os.environ["NETLEAK_BPF_DIR"] = old
        programs.remove_pins(bpf_dir)
        if not mounted_before:   # netleak mounted bpffs for the suite: undo it
            subprocess.run(["umount", "/sys/fs/bpf"], check=False)
    assert not os.path.exists(bpf_dir)


def remove_stale_test_pins(top: str = "/sys/fs/bpf") -> list[str]:
    """The pin folders of earlier runs of the suite whose pytest is gone
    without its teardown (SIGTERM or SIGKILL, as a CI timeout sends):
    removed by their name, netleak-test-<pid>, only when no such process
    lives; returns what was removed."""
    removed = []
    for name in sorted(os.listdir(top)) if os.path.isdir(top) else ():
        prefix, _, pid = name.rpartition("-")
        if prefix == "netleak-test" and pid.isdigit() and not alive(int(pid)):
            programs.remove_pins(os.path.join(top, name))
            removed.append(name)
    return removed


def netleak_pids(run_dir: str) -> list[int]:
    """netleak processes (daemon, netleak-exec, netleak) working for RUN_DIR
    (a zombie has no command line: it is not counted)."""
    found = []
    mark = f"NETLEAK_RUN_DIR={run_dir}".encode()
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                cmd = f.read()
            with open(f"/proc/{d}/environ", "rb") as f:
                env = f.read()
        except OSError:
            continue
        if b"netleak_hook" in cmd and mark in env:
            found.append(int(d))
    return found


def policy_keys(bpf_dir: str | None = None) -> set[int]:
    """cgroup ids in the policy map of the current pin set of BPF_DIR (the
    suite's by default)."""
    pins = programs.Pinset(os.path.join(bpf_dir or os.environ["NETLEAK_BPF_DIR"],
                                        programs.pinset_name()))
    if not pins.complete():
        return set()
    m = programs.Maps(pins)
    try:
        return {int.from_bytes(k, "little") for k in bpfsys.map_keys(m.policy, 8)}
    finally:
        m.close()


def kill_cgroup_tree(root: str) -> None:
    """SIGKILL what a failed test left running in its own cgroups (the
    test's processes, e.g. an orphaned client), so they can be removed."""
    import signal
    for _ in range(50):
        pids = cgroupfs.tree_procs(root)
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not cgroupfs.populated(root), timeout=1)


def end_and_remove(proc, top: str) -> None:
    """Kill a test's process (by its PID) and remove the cgroup tree TOP
    the test made for it."""
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait()
    kill_cgroup_tree(top)
    assert wait_until(lambda: not cgroupfs.populated(top))
    cgroupfs.remove_tree(top)


@pytest.fixture
def world(request):
    require_root()
    tag = f"nlt{os.getpid() % 10000}{abs(hash(request.node.name)) % 1000}"
    parent = f"netleak-test-{tag}"
    keys_before = policy_keys()
    the_lab = lab.Lab(tag)
    run_dir = tempfile.mkdtemp(prefix="netleak-test-")
    try:
        the_lab.build()
        the_lab.start_server()
        w = World(the_lab, run_dir, parent)
        yield w
        # Nothing left behind once the workload is gone and the reaper ran.
        assert wait_until(lambda: w.sessions() == 0), "sessions not reaped"
        # (a lingering set-up included: its bound is the suite's LINGER)
        assert wait_until(lambda: not w.our_rules() and w.our_routes() == ""), \
            (w.rules(), w.our_routes())
        assert w.cgroups() == []
        assert policy_keys() <= keys_before, "policy map entries left behind"
        # a daemon that exits takes its own cgroup and the parent along
        lab.stop_daemon(run_dir)
        assert not os.path.exists(w.parent_path()), os.listdir(w.parent_path())
    finally:
        lab.stop_daemon(run_dir)
        the_lab.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        # the parent, and the test's hand-made siblings (<parent>-jobs.slice,
        # <parent>-ctr) a failing test may have left
        top = cgroupfs.find_cgroup2()
        for name in os.listdir(top):
            if name == parent or name.startswith(parent + "-"):
                root = os.path.join(top, name)
                kill_cgroup_tree(root)
                cgroupfs.remove_tree(root)


@pytest.fixture(scope="session")
def podman_env():
    """Real podman with private configuration and storage (see podman.py),
    a busybox image imported from a local rootfs; all removed at the end."""
    require_root()
    missing = podman.have_podman()
    if missing:
        cannot_run(f"needs {missing} (make test installs them)")
    base = tempfile.mkdtemp(prefix="netleak-test-podman-", dir="/var/tmp")
    try:
        pm = podman.Podman(base, f"netleak-test-podman-{os.getpid()}")
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    try:
        pm.import_rootfs(podman.busybox_rootfs_tar(base), podman.BUSYBOX_IMAGE)
        yield pm
    finally:
        pm.reset()


class Pods:
    """podman inside the lab's HOST namespace, with the hook installed for
    this test's run directory, cgroup parent and pins."""

    def __init__(self, world: World, pm: "podman.Podman") -> None:
        self.world = world
        self.pm = pm
        self.ns = world.lab.nsenter(world.lab.host)
        pm.install_hook({"NETLEAK_RUN_DIR": world.run_dir,
                         "NETLEAK_CGROUP_PARENT": world.parent,
                         "NETLEAK_BPF_DIR": os.environ["NETLEAK_BPF_DIR"],
                         "NETLEAK_LINGER_SECONDS": LINGER})

    def run(self, *args: str, **kw) -> subprocess.CompletedProcess:
        """podman run ..., in HOST."""
        return self.pm.container_run(*args, ns=self.ns, **kw)

    def podman(self, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.pm.run(*args, ns=self.ns, **kw)

    def logs(self, name: str) -> list[str]:
        return self.podman("logs", name).stdout.splitlines()

    def hook_log(self) -> str:
        return self.world.hook_log()


@pytest.fixture
def pods(world, podman_env):
    p = Pods(world, podman_env)
    try:
        yield p
    finally:
        # every container of the test, before the world checks what is left
        podman_env.run("rm", "-a", "-f", "-t", "0", timeout=120)


class Held:
    """A session held open by a sleeping process; commands join its cgroup
    (before their first socket) and run there."""

    def __init__(self, world, *session: str) -> None:
        """SESSION: netleak-exec's options and IFACE (default: vpn0)."""
        self.world = world
        world.events_only()     # no periodic pass repairs what a test breaks
        self.proc = world.spawn(*(session or ("vpn0",)), "sleep", "300")
        # the suite's first session compiles the programs: seconds on a busy machine
        assert wait_until(lambda: len(self.rows()) == 1 and self.rows()[0]["procs"] == 1,
                          timeout=60)
        self.cgroup = self.rows()[0]["cgroup"]
        self.path = cgroupfs.abspath(cgroupfs.find_cgroup2(), self.cgroup)

    def rows(self) -> list[dict]:
        return self.world.status()

    def counters(self) -> dict:
        return self.rows()[0]["counters"]

    def run(self, *argv: str):
        join = f'echo $$ > {self.path}/cgroup.procs && exec "$@"'
        return self.world.lab.run(["sh", "-c", join, "sh", *argv])

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def held(world):
    h = Held(world)
    yield h
    h.close()
