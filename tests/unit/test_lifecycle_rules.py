"""Pure decisions of the session lifecycle: reaping, crash leftovers, gc
reports, which cgroups may be attached."""
from __future__ import annotations

import pytest

from netleak_hook.core import plan, lifecycle
from netleak_hook.core.state import Session
from tests.helpers import make_session

T0 = 1_700_000_000.0


def sess(committed: bool, owned: bool) -> Session:
    return make_session(id="a", cgroup="netleak/exec-a-1", cgroup_id=9, owned=owned, pid=1,
                        created=T0, committed=committed)


@pytest.mark.parametrize("alive", [True, False])
def test_attached_empty_cgroup_waits_for_its_processes(alive):
    # attached before its processes start: not reaped, however old
    s = sess(committed=False, owned=False)
    assert lifecycle.should_reap(s, False, alive, T0 + 10 * lifecycle.SETUP_GRACE) is False


def test_attached_cgroup_reaped_once_emptied_after_use_or_gone():
    assert lifecycle.should_reap(sess(True, False), False, False, T0 + 1) is True
    assert lifecycle.should_reap(sess(False, False), None, False, T0 + 1) is True
    assert lifecycle.should_reap(sess(True, False), True, False, T0 + 1) is False


def test_owned_setup_rolled_back_after_grace_even_with_live_requester():
    s = sess(committed=False, owned=True)
    assert lifecycle.should_reap(s, False, True, T0 + lifecycle.SETUP_GRACE + 0.1) is True


@pytest.mark.parametrize("sid,pid", [("0a1b2c3d4e", 1), ("x", 4194304), ("ab", 77)])
def test_exec_cgroup_name_round_trip(sid, pid):
    name = lifecycle.exec_cgroup_name(sid, pid)
    assert name.startswith("exec-")
    assert lifecycle.exec_cgroup_creator(name) == pid


@pytest.mark.parametrize("name", ["daemon", "exec-", "exec-abc", "exec-abc-", "exec-a-0",
                                  "exec-a-012", "exec-a-1x", "job.scope", "Exec-a-12",
                                  "exec-a--5"])
def test_not_an_exec_cgroup(name):
    assert lifecycle.exec_cgroup_creator(name) is None


def test_orphan_cgroup_removable_only_when_unclaimed_empty_and_abandoned():
    name = lifecycle.exec_cgroup_name("abc", 4242)
    ok = dict(claimed=False, populated=False, creator_alive=False, age=1.0)
    assert lifecycle.orphan_cgroup_removable(name, **ok) is True
    assert lifecycle.orphan_cgroup_removable(name, **{**ok, "claimed": True}) is False
    assert lifecycle.orphan_cgroup_removable(name, **{**ok, "populated": True}) is False
    assert lifecycle.orphan_cgroup_removable(name, **{**ok, "populated": None}) is False
    # its creator still sets it up: kept, unless that takes far too long
    assert lifecycle.orphan_cgroup_removable(name, **{**ok, "creator_alive": True}) is False
    assert lifecycle.orphan_cgroup_removable(
        name, **{**ok, "creator_alive": True, "age": lifecycle.SETUP_GRACE + 1}) is True
    # never anything that is not netleak-exec's
    assert lifecycle.orphan_cgroup_removable("daemon", **ok) is False
    assert lifecycle.orphan_cgroup_removable("job.scope", **ok) is False


def test_merge_reports():
    a = {"reaped": ["x"], "adopted": [], "entries_removed": 2, "routes_removed": 4,
         "cgroups_removed": ["exec-x-1"], "pinsets_removed": [], "sessions": 3}
    b = {"reaped": ["y"], "adopted": ["z"], "entries_removed": 0, "routes_removed": 1,
         "cgroups_removed": [], "pinsets_removed": ["v1-old"], "sessions": 1}
    m = lifecycle.merge_reports(a, b)
    assert m == {"reaped": ["x", "y"], "adopted": ["z"], "entries_removed": 2,
                 "routes_removed": 5, "cgroups_removed": ["exec-x-1"],
                 "pinsets_removed": ["v1-old"], "sessions": 1}
    assert lifecycle.merge_reports({}, b) == b
    assert lifecycle.merge_reports(a, {}) == a


@pytest.mark.parametrize("target", ["", "/", "//"])
def test_attach_refuses_the_root_cgroup(target):
    assert "root cgroup" in plan.attach_refusal(target, "netleak/daemon")


@pytest.mark.parametrize("target", ["netleak", "netleak/daemon", "/netleak/"])
def test_attach_refuses_a_cgroup_holding_the_daemon(target):
    assert "own daemon" in plan.attach_refusal(target, "netleak/daemon")


@pytest.mark.parametrize("target", ["netleak/daemon2", "netleakx", "system.slice/a.scope",
                                    "netleak/daemon/x"])
def test_attach_allows_others(target):
    assert plan.attach_refusal(target, "netleak/daemon") is None


def test_out_of_open_files_says_how_to_raise_the_limit():
    import errno

    from netleak_hook.daemon.requests import os_refusal as _os_refusal
    msg = _os_refusal(OSError(errno.EMFILE, "Too many open files"), 1021)
    assert "1021 sessions" in msg and "LimitNOFILE=" in msg and "ulimit -n" in msg
    assert _os_refusal(OSError(errno.ENOENT, "No such file"), 3).startswith("bad request:")


@pytest.mark.parametrize("rel,procs,systemd,delegated,want", [
    ("system.slice/run-u7.scope", [42], True, False, "system.slice/run-u7.scope"),
    ("system.slice/x.service", [42], True, False, "system.slice/x.service"),
    ("system.slice/x.service", [42, 43], True, False, None),     # shared: a cgroup of its own
    ("user.slice/user-1000.slice/session-2.scope", [7, 42], True, False, None),
    ("system.slice/run-u7.scope", [42], False, False, None),     # no systemd
    ("user.slice/user-1000.slice/user@1000.service/app.slice/a.scope", [42], True, True, None),
    ("system.slice", [42], True, False, None),                   # a slice is no unit to run in
    ("", [42], True, False, None),
])
def test_netleak_exec_takes_the_unit_it_runs_in_alone(rel, procs, systemd, delegated, want):
    assert lifecycle.own_unit_cgroup(rel, procs, 42, systemd, delegated) == want
