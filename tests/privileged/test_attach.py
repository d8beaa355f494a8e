"""netleak attach/detach on cgroups netleak did not make: a cgroup made by
hand stands in for a `systemd-run --scope` unit (systemd is not PID 1 on
these machines; --unit is driven through a stand-in systemctl). Also: other
tools' programs on the same cgroup, and network namespaces."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys

import pytest

from netleak_hook import lab as lablib
from netleak_hook.kernel import bpfsys, cgroupfs
from tests.helpers import wait_until
from tests.privileged.conftest import CLI, end_and_remove
from tests.privileged.probes import THEIRS

pytestmark = pytest.mark.privileged


# A job with a socket it opened before being attached ("old": UDP, connected)
# and a new TCP connection every 0.2 s ("new"), which prints what the
# server saw as its source address.
JOB = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
old = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
old.connect((host, port))
while True:
    try:
        old.send(b"old")
    except OSError:
        pass
    try:
        s = socket.create_connection((host, port), timeout=1)
        print("new", s.recv(100).decode().strip(), flush=True)
        s.close()
    except OSError as e:
        print("new refused", e.strerror, flush=True)
    time.sleep(0.2)
"""


class Job:
    """A cgroup made by hand (like a systemd scope) and a process in it."""

    def __init__(self, world, tmp_path, name: str = "job.scope") -> None:
        self.world = world
        self.root = cgroupfs.find_cgroup2()
        self.slice = f"{world.parent}-jobs.slice"
        self.rel = f"{self.slice}/{name}"
        self.path = cgroupfs.abspath(self.root, self.rel)
        cgroupfs.make(self.path)
        self.out = str(tmp_path / f"{name}.out")
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        # join the cgroup before python starts: every socket is the job's
        code = (f"echo $$ > {self.path}/cgroup.procs && exec {sys.executable} -c "
                f"'{JOB}' {lablib.SERVER4} {lablib.PORT} > {self.out} 2>&1")
        self.proc = self.world.lab.spawn(["sh", "-c", code])
        assert wait_until(lambda: len(self.lines()) >= 1, timeout=10), self.lines()

    def lines(self) -> list[str]:
        try:
            with open(self.out) as f:
                return [ln.strip() for ln in f if ln.strip()]
        except FileNotFoundError:
            return []

    def next_answers(self, n: int = 3) -> list[str]:
        start = len(self.lines())
        assert wait_until(lambda: len(self.lines()) >= start + n, timeout=15)
        return self.lines()[start:start + n]

    def close(self) -> None:
        end_and_remove(self.proc, cgroupfs.abspath(self.root, self.slice))


@pytest.fixture
def job(world, tmp_path):
    j = Job(world, tmp_path)
    try:
        yield j
    finally:
        j.close()


def test_attach_existing_cgroup_old_sockets_dropped_then_detach(world, job):
    lab = world.lab
    job.start()
    # before: the job goes out by the default route, old socket included
    with lab.capture("up0") as cap:
        assert job.next_answers() == ["new 192.0.2.2"] * 3
        seen_before = cap.stop()
    assert seen_before >= 6, "the capture on up0 sees nothing: it proves nothing"

    r = world.cli("attach", "vpn0", "--pid", str(job.proc.pid))
    assert r.returncode == 0, r.stderr
    assert f"/{job.rel}: on vpn0" in r.stdout
    job.next_answers(1)                      # one in flight may predate attach
    with lab.capture("up0") as cap:
        assert job.next_answers(5) == ["new 198.51.100.2"] * 5
        leaked = cap.stop()
    # the old socket kept sending every 0.2 s: dropped, not leaked
    assert leaked == 0
    (row,) = world.status()
    assert (row["state"], row["cgroup"], row["started_by"], row["procs"]) == \
        ("routed", f"/{job.rel}", "attach", 1)

    r = world.cli("detach", "--cgroup", job.path)   # the full path works too
    assert r.returncode == 0, r.stderr
    assert "released from vpn0" in r.stdout
    job.next_answers(1)
    assert job.next_answers() == ["new 192.0.2.2"] * 3
    assert world.sessions() == 0 and not world.our_rules()
    # programs gone from the cgroup, which is still the user's
    cfd = os.open(job.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_EGRESS) == []
    finally:
        os.close(cfd)
    assert os.path.isdir(job.path)


def test_attach_an_empty_cgroup_before_its_processes(world, job):
    """Protection before execution for a unit: attach first, then start."""
    r = world.cli("attach", "vpn0", "--cgroup", f"/{job.rel}")
    assert r.returncode == 0, r.stderr
    assert [x["state"] for x in world.status()] == ["starting"]
    job.start()
    assert job.lines()[0] == "new 198.51.100.2"
    assert wait_until(lambda: [x["state"] for x in world.status()] == ["routed"])
    job.proc.kill()
    job.proc.wait()
    # it emptied after use: reaped, programs detached, the cgroup left to its owner
    assert wait_until(lambda: world.sessions() == 0 and not world.our_rules())
    assert os.path.isdir(job.path)


def test_attach_by_unit_through_systemctl(world, job, tmp_path):
    """--unit asks systemctl for the unit's cgroup (a stand-in here: systemd
    is not PID 1 on these machines)."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text("#!/bin/sh\n"
                    "# stand-in: systemctl show --property=ControlGroup --value UNIT\n"
                    f'[ "$4" = job.scope ] && echo /{job.rel} && exit 0\n'
                    "echo\n")
    fake.chmod(0o755)
    env = dict(world.env, PATH=f"{bindir}:{os.environ['PATH']}")
    job.start()
    r = world.cli("attach", "vpn0", "--unit", "job.scope", env=env)
    assert r.returncode == 0, r.stderr
    job.next_answers(1)
    assert job.next_answers() == ["new 198.51.100.2"] * 3
    r = world.cli("detach", "--unit", "other.scope", env=env)
    assert r.returncode == 125 and "other.scope is not under netleak control" in r.stderr, \
        r.stderr
    r = world.cli("detach", "--unit", "job.scope", env=env)
    assert r.returncode == 0, r.stderr
    assert world.sessions() == 0


def _refused(world, *args: str, status: int = 125, env: dict | None = None) -> str:
    r = world.cli(*args, env=env)
    assert r.returncode == status, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 if status == 125 else lines, r.stderr
    assert world.sessions() == 0 and not world.our_rules() and world.our_routes() == ""
    return r.stderr


def test_refusals_say_what_to_do_and_leave_nothing(world, job):
    job.start()
    assert "root cgroup" in _refused(world, "attach", "vpn0", "--cgroup", "/")
    assert "root cgroup" in _refused(world, "attach", "vpn0", "--pid", "1")
    # the daemon runs now (previous refusals came from it): its own cgroup
    err = _refused(world, "attach", "vpn0", "--pid", str(world.daemon_pid()))
    assert "netleak's own daemon" in err
    err = _refused(world, "attach", "vpn0", "--cgroup", world.parent)
    assert "netleak's own daemon" in err
    assert "no cgroup" in _refused(world, "attach", "vpn0", "--cgroup", "/netleak-test-nope")
    assert "'..'" in _refused(world, "attach", "vpn0", "--cgroup", f"{job.rel}/../..")
    assert "no process" in _refused(world, "attach", "vpn0", "--pid", "999999999")
    # systemd is not PID 1 here: the real systemctl says so
    if shutil.which("systemctl") and not os.path.isdir("/run/systemd/system"):
        assert "--cgroup PATH or --pid PID" in _refused(world, "attach", "vpn0",
                                                        "--unit", "job.scope")
    assert "not a systemd unit name" in _refused(world, "attach", "vpn0", "--unit", "a b")
    assert "interface" in _refused(world, "attach", "vpn0 x", "--cgroup", job.rel)
    assert "exactly one" in _refused(world, "attach", "vpn0", "--cgroup", job.rel,
                                     "--pid", "1", status=2)
    assert "not under netleak control" in _refused(world, "detach", "--cgroup", job.rel)
    # attached twice; detaching a netleak-exec session
    assert world.cli("attach", "vpn0", "--cgroup", job.rel).returncode == 0
    r = world.cli("attach", "up0", "--cgroup", job.rel)
    assert r.returncode == 125 and "already under netleak control" in r.stderr
    p = world.spawn("vpn0", "sleep", "30")
    assert wait_until(lambda: world.sessions() == 2)
    (owned,) = [x for x in world.status() if x["started_by"] == "netleak-exec"]
    r = world.cli("detach", "--id", owned["id"])
    assert r.returncode == 125 and "ends with its processes" in r.stderr, r.stderr
    p.kill()
    p.wait()
    assert world.cli("detach", "--cgroup", job.rel).returncode == 0


def test_another_tools_program_keeps_working(world, job):
    """Both run (ALLOW_MULTI); detaching ours leaves theirs attached."""
    from bcc import BPF
    b = BPF(text=THEIRS)
    fn = b.load_func(b"theirs", BPF.CGROUP_SKB)
    cfd = os.open(job.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        bpfsys.prog_attach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
        theirs_id = bpfsys.prog_id(fn.fd)
        job.start()
        assert world.cli("attach", "vpn0", "--cgroup", job.rel).returncode == 0
        job.next_answers(1)
        before = b[b"seen"][0].value
        assert job.next_answers() == ["new 198.51.100.2"] * 3   # ours enforce
        assert b[b"seen"][0].value > before                      # theirs count
        ids = bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
        assert theirs_id in ids and len(ids) == 2
        assert world.cli("detach", "--cgroup", job.rel).returncode == 0
        assert bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_EGRESS) == [theirs_id]
        before = b[b"seen"][0].value
        assert job.next_answers() == ["new 192.0.2.2"] * 3
        assert b[b"seen"][0].value > before
        bpfsys.prog_detach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
    finally:
        os.close(cfd)
        b.cleanup()


def test_a_cgroup_held_exclusively_is_refused(world, job):
    from bcc import BPF
    b = BPF(text=THEIRS)
    fn = b.load_func(b"theirs", BPF.CGROUP_SKB)
    cfd = os.open(job.path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        bpfsys.prog_attach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS, flags=0)
        err = _refused(world, "attach", "vpn0", "--cgroup", job.rel)
        assert "BPF_F_ALLOW_MULTI" in err
        assert [bpfsys.prog_id(fn.fd)] == bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
        bpfsys.prog_detach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
    finally:
        os.close(cfd)
        b.cleanup()


@pytest.fixture
def alt(world):
    """A third namespace with its own way to the server (alt0, 192.0.2.66):
    the path around the policy a process could try by entering it."""
    lab = world.lab
    name = f"{lab.host}-alt"
    lablib.sh("ip", "netns", "add", name)
    try:
        lablib.sh("ip", "link", "add", "alt0", "netns", name, "type", "veth",
                  "peer", "name", "alt0p", "netns", lab.net)
        lab.ip(name, "link", "set", "lo", "up")
        lab.ip(name, "addr", "add", "192.0.2.66/26", "dev", "alt0")
        lab.ip(lab.net, "addr", "add", "192.0.2.65/26", "dev", "alt0p")
        lab.ip(name, "link", "set", "alt0", "up")
        lab.ip(lab.net, "link", "set", "alt0p", "up")
        lab.ip(name, "route", "add", "default", "via", "192.0.2.65")
        yield name
    finally:
        lablib.sh("ip", "netns", "del", name, check=False)


def test_entering_another_network_namespace_gives_no_path(world, alt):
    lab = world.lab
    enter = ["nsenter", f"--net=/run/netns/{alt}"]
    with lab.capture("alt0", ns=alt, peer="192.0.2.65") as cap:
        r = lab.run(lab.client(tries=3), ns=alt)       # control: the path works
        assert r.stdout.splitlines()[0] == "ok 192.0.2.66", r.stdout + r.stderr
        assert cap.stop() > 0, "the capture on alt0 sees nothing: it proves nothing"
    with lab.capture("alt0", ns=alt, peer="192.0.2.65") as cap:
        r = world.netleak("vpn0", *enter, *lab.client(tries=3))
        leaked = cap.stop()
    assert leaked == 0
    assert r.stdout.splitlines() == ["refused Operation not permitted"] * 3, r.stdout
    # a fresh namespace of its own: no sockets there either
    code = "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
    r = world.netleak("vpn0", "unshare", "-n", sys.executable, "-c", code)
    # PermissionError comes from socket() in the traceback, not from unshare
    assert r.returncode != 0 and "PermissionError" in r.stderr, r.stderr
    # and back in its own namespace the session routes as before
    r = world.netleak("vpn0", *lab.client())
    assert r.stdout.strip() == "ok 198.51.100.2"


def test_scope_pattern_attach_self_then_exec(world, job):
    """examples/systemd-run-scope.sh without systemd: the unit's first
    process attaches its own cgroup, then execs the job."""
    cli, client = shlex.join(CLI), shlex.join(world.lab.client(tries=2))
    code = (f"echo $$ > {job.path}/cgroup.procs && "
            f"{cli} attach vpn0 --pid $$ >/dev/null && exec {client}")
    r = world.lab.run(["sh", "-c", code], env=world.env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["ok 198.51.100.2"] * 2
    assert wait_until(lambda: world.sessions() == 0)


def test_refused_across_network_namespaces(world, job, alt, tmp_path):
    """A cgroup another namespace's daemon controls, or one with a process
    of another namespace, is refused: neither daemon could keep its promise."""
    job.start()
    assert world.cli("attach", "vpn0", "--cgroup", job.rel).returncode == 0
    # the daemon of the alt namespace (its own run directory) may not take it
    alt_env = dict(world.env, NETLEAK_RUN_DIR=str(tmp_path / "alt-run"))
    try:
        r = world.lab.run(CLI + ["attach", "alt0", "--cgroup", job.rel], env=alt_env,
                          ns=alt)
        assert r.returncode == 125 and "another netleak daemon" in r.stderr, r.stderr
    finally:
        lablib.stop_daemon(str(tmp_path / "alt-run"))
    assert world.cli("detach", "--cgroup", job.rel).returncode == 0
    # a process of the alt namespace in the cgroup: its sockets belong there
    other = world.lab.spawn(["sh", "-c", f"echo $$ > {job.path}/cgroup.procs && "
                             f"exec sleep 30"], ns=alt)
    assert wait_until(lambda: other.pid in cgroupfs.procs(job.path))
    err = _refused(world, "attach", "vpn0", "--cgroup", job.rel)
    assert f"process {other.pid}" in err and "another network namespace" in err
    other.kill()
    other.wait()
