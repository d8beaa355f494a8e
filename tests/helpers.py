"""Helpers shared by the unit and the privileged tests: pure, no fixtures,
nothing that needs root to import."""
from __future__ import annotations

import time

from netleak_hook.core.state import Session


def make_session(**overrides) -> Session:
    """A Session with test defaults: session "s1" on wg0, in the cgroup
    netleak/exec-<id> (unless CGROUP is given), cgroup id 1, pin set "/p";
    OVERRIDES set any field."""
    fields = {"id": "s1", "iface": "wg0", "cgroup_id": 1, "pinset": "/p", **overrides}
    fields.setdefault("cgroup", f"netleak/exec-{fields['id']}")
    return Session(**fields)


def wait_until(pred, timeout: float = 5.0, step: float = 0.05) -> bool:
    """Call PRED every STEP seconds until it is true, for at most TIMEOUT
    seconds; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(step)
    return pred()


def alive(pid: int) -> bool:
    """PID exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def cli_runner():
    """click's CliRunner with stdout and stderr apart, on the click of
    Debian 12 (8.1: mix_stderr=False asks for it) and on later ones (which
    keep them apart and took the argument away)."""
    from click.testing import CliRunner
    try:
        return CliRunner(mix_stderr=False)
    except TypeError:
        return CliRunner()
