"""The Containerfile: built from a local Debian rootfs (no registry here),
run as the node agent in the lab's HOST namespace, with the host's PID and
cgroup namespaces and bpffs, as a DaemonSet would run it on a CRI-O node.
The agent installs the hook into the (test's) hooks directory, with the hook
as a zipapp the host's python3 runs; containers started afterwards are
protected by the agent's daemon, and refused once the agent is gone."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from netleak_hook.kernel import programs
from tests.helpers import wait_until
from tests.privileged import podman
from tests.privileged.conftest import LINGER
from tests.privileged.podman import ANN, HOST, VPN, client

pytestmark = [pytest.mark.privileged, pytest.mark.container]

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
IMAGE = "localhost/netleak-test-agent:latest"


@pytest.fixture(scope="session")
def agent_image(podman_env):
    """podman build of the Containerfile FROM a debootstrap'd bookworm."""
    pm = podman_env
    if not pm.has_image(podman.DEBIAN_IMAGE):
        pm.import_rootfs(podman.debian_rootfs_tar(), podman.DEBIAN_IMAGE)
    r = pm.run("build", "--network=host", "--build-arg", f"BASE={podman.DEBIAN_IMAGE}",
               "-t", IMAGE, "-f", os.path.join(ROOT, "Containerfile"), ROOT, timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return IMAGE


def test_agent_installs_the_hook_and_protects_containers(world, pods, agent_image,
                                                         tmp_path):
    pm = pods.pm
    bpf_dir = os.environ["NETLEAK_BPF_DIR"]
    programs.ensure_bpffs(bpf_dir)          # the host's bpffs, shared with the agent
    lib = tmp_path / "lib"                  # the host's /opt/netleak, say
    lib.mkdir()
    os.unlink(os.path.join(pm.hooks_dir, "netleak.json"))   # the agent writes it
    env = {"NETLEAK_RUN_DIR": world.run_dir, "NETLEAK_CGROUP_PARENT": world.parent,
           "NETLEAK_BPF_DIR": bpf_dir, "NETLEAK_LINGER_SECONDS": LINGER}
    r = pods.run(
        "-d", "--name", "agent", "--privileged", "--pid=host", HOST, "--cgroupns=host",
        "-v", "/sys/fs/cgroup:/sys/fs/cgroup", "-v", "/sys/fs/bpf:/sys/fs/bpf",
        "-v", f"{world.run_dir}:{world.run_dir}", "-v", "/lib/modules:/lib/modules:ro",
        "-v", "/usr/src:/usr/src:ro", "-v", f"{pm.hooks_dir}:/host/hooks.d",
        "-v", f"{lib}:/host/lib", *(f"--env={k}={v}" for k, v in env.items()),
        agent_image, "--host-dir", str(lib))
    assert r.returncode == 0, r.stderr
    try:
        assert wait_until(lambda: os.path.exists(os.path.join(world.run_dir, "daemon.sock")),
                          timeout=120), pods.podman("logs", "agent").stderr[-3000:]
        with open(os.path.join(pm.hooks_dir, "netleak.json")) as f:
            doc = json.load(f)
        assert doc["hook"]["path"] == "/usr/bin/python3"
        assert doc["hook"]["args"] == ["python3", f"{lib}/netleak-hook.pyz"]
        assert "NETLEAK_AUTOSTART=0" in doc["hook"]["env"]

        # an annotated container: the host's python3 runs the hook, the
        # agent's daemon protects it
        with world.lab.capture("up0") as cap:
            r = pods.run("--rm", HOST, ANN, *client(3))
            leaked = cap.stop()
        assert r.returncode == 0, r.stderr + pods.hook_log()
        assert r.stdout.splitlines() == [VPN] * 3
        assert leaked == 0
        world.control()
        assert wait_until(lambda: world.sessions() == 0)
    finally:
        pods.podman("stop", "-t", "5", "agent", timeout=60)

    # the agent is gone and the hook stays: annotated containers are refused
    r = pods.run("--rm", HOST, ANN, podman.BUSYBOX_IMAGE, "echo", "RAN")
    assert r.returncode != 0
    assert "RAN" not in r.stdout
    assert "NETLEAK_AUTOSTART=0" in r.stderr, r.stderr
    assert not os.path.exists(os.path.join(world.run_dir, "daemon.pid")) or \
        subprocess.run(["pgrep", "-F", os.path.join(world.run_dir, "daemon.pid")],
                       capture_output=True).returncode != 0
