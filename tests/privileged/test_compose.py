"""A compose file with `annotations:` brought up by podman-compose through
pytest-docker, in the lab's HOST namespace."""
from __future__ import annotations

import os
import re
import shlex
import shutil
import sys

import pytest
from pytest_docker.plugin import get_docker_services

from tests.helpers import wait_until
from tests.privileged.podman import BUSYBOX_IMAGE, UP, VPN, client

pytestmark = [pytest.mark.privileged, pytest.mark.container]

COMPOSE_FILE = os.path.join(os.path.dirname(__file__), "compose", "compose.yaml")


def _podman_compose() -> str:
    found = shutil.which("podman-compose") or os.path.join(os.path.dirname(sys.executable),
                                                           "podman-compose")
    assert os.access(found, os.X_OK), "podman-compose is missing: make test installs it"
    return found


@pytest.fixture
def compose(world, pods):
    """pytest-docker's service set-up, with podman-compose as the compose
    command (run in HOST with the private podman configuration) and `up -d`:
    podman before 4.6 ignores --wait, and the default set-up would hang."""
    env = {k: pods.pm.env[k] for k in
           ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_REGISTRIES_CONF")}
    env.update(NETLEAK_TEST_IMAGE=BUSYBOX_IMAGE,
               NETLEAK_TEST_CGROUP_PARENT=f"/{pods.pm.cgroup_parent}",
               NETLEAK_TEST_PROBE=client(3, "sleep 600")[-1])
    command = shlex.join(["env", *(f"{k}={v}" for k, v in env.items()), *pods.ns,
                          _podman_compose(), "--in-pod", "false"])
    with get_docker_services(command, COMPOSE_FILE, f"netleaktest{os.getpid()}",
                             ["up --build -d"], ["down -t 0"]) as services:
        yield services


def _logs(services, service: str) -> list[str]:
    """The probe's lines of one service, without podman-compose's colours
    and "[service] |" prefixes."""
    out = services._docker_compose.execute(f"logs {service}", ignore_stderr=True)
    lines = [re.sub(r"\x1b\[[0-9;]*m", "", ln).split("|", 1)[-1].strip()
             for ln in out.decode().splitlines()]
    return [ln for ln in lines if ln == "failed" or ln.startswith("ok ")]


def test_compose_annotations_pin_one_service(world, compose):
    assert wait_until(lambda: len(_logs(compose, "pinned")) >= 3
                      and len(_logs(compose, "plain")) >= 3, timeout=60)
    pinned, plain = _logs(compose, "pinned"), _logs(compose, "plain")
    assert pinned == [VPN] * 3
    assert plain == [UP] * 3
    assert world.sessions() == 1      # only the annotated service is controlled
