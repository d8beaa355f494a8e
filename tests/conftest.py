"""Shared fixtures: root-only tests fail instead of skipping in CI."""
from __future__ import annotations

import os

import pytest


def cannot_run(msg: str) -> None:
    """A test that lacks what it needs: skip; with NETLEAK_REQUIRE_ROOT=1
    (CI), fail instead."""
    if os.environ.get("NETLEAK_REQUIRE_ROOT") == "1":
        pytest.fail(msg + " and NETLEAK_REQUIRE_ROOT=1 forbids skipping")
    pytest.skip(msg)


def require_root() -> None:
    """Skip without root; with NETLEAK_REQUIRE_ROOT=1 (CI), fail instead."""
    if os.geteuid() != 0:
        cannot_run("needs root (network namespaces, cgroups, BPF)")
