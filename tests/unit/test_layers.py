"""Kernel at the edges: pure modules, and netleak-exec's warm path, import
no heavy or kernel-facing library."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("bcc", "pyroute2", "click")
WARM_PATH_FORBIDDEN = HEAVY + ("argparse", "dataclasses")

PURE = ("plan", "state", "config", "validate", "reaper", "mounts", "policy", "errors",
        "doctor", "targets", "status")


def loaded_after(imports: list[str], watch: tuple[str, ...]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"for m in {imports!r}: importlib.import_module(m)\n"
        f"print(json.dumps(sorted(n for n in {list(watch)!r} if n in sys.modules)))\n"
    )
    # -I: no user site, no PYTHON* variables, no cwd on sys.path
    r = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_watch_detects_a_loaded_module():
    # the probe itself works: json is loaded by the probe, so it must be seen
    assert loaded_after([], ("json",)) == ["json"]
    assert loaded_after(["argparse"], ("argparse",)) == ["argparse"]


@pytest.mark.parametrize("mod,heavy", [("netleak_hook.cli", "click"),
                                       ("netleak_hook.kernel.netlink", "pyroute2")])
def test_watch_detects_heavy_imports_of_edge_modules(mod, heavy):
    # positive control: the edges do load the heavy libraries
    pytest.importorskip(heavy)
    assert heavy in loaded_after([mod], HEAVY)


@pytest.mark.parametrize("mod", PURE)
def test_pure_module_imports_nothing_heavy(mod):
    assert loaded_after([f"netleak_hook.{mod}"], HEAVY) == []


def test_exec_warm_path_is_light():
    assert loaded_after(["netleak_hook.execcmd", "netleak_hook.session",
                         "netleak_hook.confine", "netleak_hook.client"],
                        WARM_PATH_FORBIDDEN) == []
