"""netleak-hook run the way a container runtime runs it: a process waits in
its cgroup (a container before its first instruction), the hook gets the OCI
state on stdin, then the process goes on. The real-podman tests build on
this."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys

import pytest

from netleak_hook.kernel import cgroupfs
from tests.helpers import wait_until
from tests.privileged.conftest import end_and_remove

pytestmark = pytest.mark.privileged

HOOK = [sys.executable, "-m", "netleak_hook.hook"]
CID = "c0ffee" + "0" * 58


class Container:
    """A cgroup and a process held before its first instruction."""

    def __init__(self, world, tmp_path, ns: str | None = None, nested: bool = False) -> None:
        self.world = world
        self.root = cgroupfs.find_cgroup2()
        self.top = f"{world.parent}-ctr"
        self.rel = f"{self.top}/{CID}"
        self.path = cgroupfs.abspath(self.root, self.rel)
        cgroupfs.make(self.path)
        self.fifo = str(tmp_path / "go")
        os.mkfifo(self.fifo)
        inner = f"mkdir {self.path}/inner && echo $$ > {self.path}/inner/cgroup.procs && " \
            if nested else ""
        code = (f"echo $$ > {self.path}/cgroup.procs && read go < {self.fifo} && {inner}"
                f"exec {shlex.join(world.lab.client(tries=2))}")
        self.proc = world.lab.spawn(["sh", "-c", code], ns=ns, stdout=subprocess.PIPE,
                                    text=True)
        assert wait_until(lambda: self.proc.pid in cgroupfs.procs(self.path))

    def hook(self, annotations: dict | None = None, status: str = "creating",
             pid: int | None = None) -> subprocess.CompletedProcess:
        state = {"ociVersion": "1.0.2", "id": CID, "status": status,
                 "pid": self.proc.pid if pid is None else pid, "bundle": "/nonexistent",
                 "annotations": {"io.netleak.interface": "vpn0"} if annotations is None
                 else annotations}
        return subprocess.run(self.world.lab.nsenter(self.world.lab.host) + HOOK,
                              input=json.dumps(state), env=self.world.env,
                              capture_output=True, text=True, timeout=60)

    def go(self) -> list[str]:
        with open(self.fifo, "w") as f:
            f.write("go\n")
        out, _ = self.proc.communicate(timeout=30)
        return out.splitlines()

    def close(self) -> None:
        end_and_remove(self.proc, cgroupfs.abspath(self.root, self.top))


@pytest.fixture
def container(world, tmp_path):
    made = []

    def make(**kw) -> Container:
        made.append(Container(world, tmp_path, **kw))
        return made[-1]
    yield make
    for c in made:
        c.close()


@pytest.mark.parametrize("nested", [False, True])
def test_container_routed_from_its_first_instruction(world, container, nested):
    c = container(nested=nested)
    r = c.hook()
    assert r.returncode == 0, r.stderr
    rows = json.loads(world.cli("status", "--json").stdout)["sessions"]
    assert [(x["started_by"], x["container"], x["cgroup"]) for x in rows] == \
        [("hook", CID, f"/{c.rel}")]
    assert c.go() == ["ok 198.51.100.2"] * 2
    assert wait_until(lambda: world.sessions() == 0)       # the reaper, not poststop
    r = c.hook(status="stopped", pid=0)
    assert r.returncode == 0, r.stderr
    log = world.hook_log()
    assert f"createRuntime {CID[:12]}: on vpn0 (routed)" in log
    assert f"poststop {CID[:12]}: reaper told" in log


def test_unannotated_container_untouched(world, container):
    c = container()
    r = c.hook(annotations={"org.example": "x"})
    assert r.returncode == 0 and world.sessions() == 0
    assert c.go() == ["ok 192.0.2.2"] * 2


@pytest.mark.parametrize("value,words", [("vpn0 ; id", "io.netleak.interface"),
                                        ("", "io.netleak.interface")])
def test_bad_annotation_aborts_the_start(world, container, value, words):
    c = container()
    r = c.hook(annotations={"io.netleak.interface": value})
    assert r.returncode == 125, r.stderr
    assert words in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "refused" in world.hook_log()
    assert world.sessions() == 0 and not world.our_rules()


def test_private_network_namespace_refused(world, container):
    c = container(ns=world.lab.net)       # the container's own namespace
    r = c.hook()
    assert r.returncode == 125
    assert "--network=host" in r.stderr
    assert world.sessions() == 0 and not world.our_rules()


def test_absent_interface_starts_waiting(world, container):
    """An annotated interface that does not exist yet: the container starts
    with the kill switch on (nothing reaches up0) and the log says it waits."""
    c = container()
    r = c.hook(annotations={"io.netleak.interface": "nope0"})
    assert r.returncode == 0, r.stderr
    assert f"createRuntime {CID[:12]}: on nope0 (waiting for the interface to appear" \
        in world.hook_log()
    (row,) = world.status()
    assert row["state"] == "waiting" and row["state_detail"].startswith(
        "waiting for the interface"), row
    with world.lab.capture("up0") as cap:
        answers = c.go()
        leaked = cap.stop()
    assert len(answers) == 2 and not any(a.startswith("ok") for a in answers), answers
    assert leaked == 0
    world.control()


def test_not_oci_state(world):
    r = subprocess.run(world.lab.nsenter(world.lab.host) + HOOK, input="hello",
                       env=world.env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 125 and "OCI hook" in r.stderr

