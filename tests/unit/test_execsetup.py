"""netleak-exec's set-up on a systemd host (execsetup.py), the kernel faked."""
from __future__ import annotations

import pytest

from netleak_hook import execsetup
from netleak_hook.core.config import Config
from netleak_hook.core.errors import NO_SCOPE, NetleakError


@pytest.fixture
def systemd_host(monkeypatch):
    import netleak_hook.kernel.systemd as sd
    monkeypatch.setattr(sd, "running", lambda: True)
    monkeypatch.setattr(execsetup.cgroupfs, "find_cgroup2", lambda: "/cg")
    monkeypatch.setattr(execsetup.Store, "check", lambda self: True)
    monkeypatch.setattr(execsetup, "_own_unit", lambda root: None)
    made = []
    monkeypatch.setattr(execsetup, "_open_own_cgroup", lambda *a: made.append(a) or a[3])
    return made


def test_a_daemon_without_systemd_gets_a_cgroup_of_netleaks_own(systemd_host, monkeypatch):
    def refused(*a):
        raise NetleakError(f"{NO_SCOPE} (it runs where /run/systemd/system is not)")
    monkeypatch.setattr(execsetup, "_open_in_unit", refused)
    sid = execsetup.open_exec_session(Config(), "wg0", None, None)
    (args,) = systemd_host
    assert args[3] == sid and args[4] == "wg0"


def test_other_refusals_are_not_worked_around(systemd_host, monkeypatch):
    def refused(*a):
        raise NetleakError("no interface named wg0 in this network namespace")
    monkeypatch.setattr(execsetup, "_open_in_unit", refused)
    with pytest.raises(NetleakError, match="no interface"):
        execsetup.open_exec_session(Config(), "wg0", None, None)
    assert systemd_host == []


# ---------- the move in the background ----------

def test_the_background_move_writes_this_process_to_cgroup_procs(tmp_path):
    import os
    procs = tmp_path / "cgroup.procs"
    procs.write_text("")
    done = execsetup._move_in_background(str(tmp_path))
    execsetup._wait(done)
    assert procs.read_text() == f"{os.getpid()}\n"
    assert done.acquire(blocking=False)         # free once the move is over


def test_a_move_that_cannot_begin_leaves_it_to_the_daemon(tmp_path):
    done = execsetup._move_in_background(str(tmp_path / "gone"))
    assert done.acquire(blocking=False)

