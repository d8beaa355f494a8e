"""The leak matrix in its short version (`make soak` runs it in full):
every state and probe of tests/soak.py, nothing leaks, every control is
seen, every cell ran, and the churn leaves nothing behind."""
from __future__ import annotations

import shutil

import pytest

from tests import soak
from tests.conftest import cannot_run, require_root

pytestmark = pytest.mark.privileged


def _require_tools() -> None:
    """tcpdump, nsenter, unshare, wireguard-go, wg, wg-quick, openvpn,
    openssl and BCC; with NETLEAK_REQUIRE_ROOT=1 their absence fails
    instead of skipping."""
    missing = [t for t in ("tcpdump", "nsenter", "unshare", "wireguard-go", "wg", "wg-quick",
                           "openvpn", "openssl") if shutil.which(t) is None]
    try:
        import bcc  # noqa: F401
    except ImportError:
        missing.append("BCC's python module")
    if missing:
        cannot_run(f"needs {', '.join(missing)} (make test installs them)")


def test_short_matrix_leaks_nothing():
    require_root()
    _require_tools()
    lines: list[str] = []
    res = soak.run_matrix(short=True, say=lines.append)
    soak.report(res, say=lines.append)
    print("\n".join(lines))
    bad = [c.line() for c in res.cells if c.verdict != "pass"]
    assert res.controls and [c.line() for c in res.controls if c.verdict != "seen"] == []
    assert res.failures == []
    assert res.missing() == []
    assert bad == []
    assert res.total_leaked == 0
    assert res.churn_sessions > 0 and res.churn_left == []
    assert res.leftovers == []
    assert res.ok
