"""The examples stay in step with the product: annotation name, network
mode, and the agent's mount points."""
from __future__ import annotations

import os
import subprocess

import yaml

from netleak_hook import cli
from netleak_hook.core import oci

EX = os.path.join(os.path.dirname(__file__), "..", "..", "examples")


def _load(*parts: str) -> list[dict]:
    with open(os.path.join(EX, *parts)) as f:
        return list(yaml.safe_load_all(f))


def test_compose_example_pins_app_only():
    [doc] = _load("compose.yaml")
    app, tools = doc["services"]["app"], doc["services"]["tools"]
    assert app["annotations"] == {oci.ANNOTATION_IFACE: "wg0"}
    assert app["network_mode"] == tools["network_mode"] == "host"
    assert "annotations" not in tools


def test_kubernetes_pod_is_annotated_with_host_network():
    [pod] = _load("kubernetes", "pinned-pod.yaml")
    assert pod["metadata"]["annotations"] == {oci.ANNOTATION_IFACE: "wg0"}
    assert pod["spec"]["hostNetwork"] is True


def test_daemonset_mounts_what_the_agent_expects():
    [ds] = _load("kubernetes", "netleak-agent.yaml")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] and spec["hostPID"]
    [ctr] = spec["containers"]
    assert ctr["securityContext"]["privileged"] is True
    host = {v["name"]: v["hostPath"]["path"] for v in spec["volumes"]}
    mounts = {m["mountPath"]: host[m["name"]] for m in ctr["volumeMounts"]}
    defaults = {p.name: p.default for p in cli.agent.params}
    assert mounts[defaults["hooks_dir"]] == "/usr/share/containers/oci/hooks.d"
    assert mounts[defaults["zipapp_dir"]] == defaults["host_dir"]
    for path in ("/sys/fs/cgroup", "/sys/fs/bpf", "/run/netleak", "/lib/modules"):
        assert mounts[path] == path


def test_shell_examples_parse():
    for name in ("podman-run.sh", "systemd-run-scope.sh"):
        subprocess.run(["sh", "-n", os.path.join(EX, name)], check=True)
