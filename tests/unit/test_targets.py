"""Naming an existing cgroup: --cgroup, --pid, --unit."""
from __future__ import annotations

import subprocess

import pytest

from netleak_hook.core import targets
from netleak_hook.core.errors import NetleakError

MOUNT = "/sys/fs/cgroup/unified"


@pytest.mark.parametrize("given,rel", [
    ("/system.slice/foo.service", "system.slice/foo.service"),
    ("system.slice/foo.service/", "system.slice/foo.service"),
    (f"{MOUNT}/user.slice/x.scope", "user.slice/x.scope"),
    (f"{MOUNT}/", ""), (MOUNT, ""), ("/", ""), (".", ""),
    ("a//b/./c", "a/b/c"), (".hidden", ".hidden"),
])
def test_cgroup_rel(given, rel):
    assert targets.cgroup_rel(given, MOUNT) == rel


@pytest.mark.parametrize("given,words", [
    ("", "empty"), ("a\0b", "empty"), ("../x", "'..'"), ("a/../../b", "'..'"),
    (f"{MOUNT}/..", "'..'"), ("/sys/fs/cgroup/cpu/foo", "not under the cgroup v2 mount"),
])
def test_cgroup_rel_refuses(given, words):
    with pytest.raises(NetleakError) as e:
        targets.cgroup_rel(given, MOUNT)
    assert words in e.value.message


def test_pure_v2_mount():
    assert targets.cgroup_rel("/sys/fs/cgroup/a.slice", "/sys/fs/cgroup") == "a.slice"


@pytest.mark.parametrize("name,unit", [("nginx", "nginx.service"), ("a.scope", "a.scope"),
                                       ("x@1.service", "x@1.service"),
                                       ("user-1000.slice", "user-1000.slice")])
def test_unit_name(name, unit):
    assert targets.unit_name(name) == unit


@pytest.mark.parametrize("name", ["", "a b", "a;rm", "a/b", "x" * 256, "$(id)"])
def test_unit_name_refused(name):
    with pytest.raises(NetleakError) as e:
        targets.unit_name(name)
    assert "not a systemd unit name" in e.value.message


def runner(rc: int = 0, out: str = "", err: str = "", raises=None):
    calls = []

    def run(argv):
        calls.append(argv)
        if raises:
            raise raises
        return subprocess.CompletedProcess(argv, rc, out, err)
    run.calls = calls
    return run


def test_unit_cgroup_asks_systemctl():
    run = runner(out="/system.slice/job.scope\n")
    assert targets.unit_cgroup("job.scope", run) == "/system.slice/job.scope"
    assert run.calls == [["systemctl", "show", "--property=ControlGroup", "--value",
                          "job.scope"]]


@pytest.mark.parametrize("run,words", [
    (runner(out="\n"), "is not running"),
    (runner(rc=1, err="System has not been booted with systemd as init system (PID 1). "
                      "Can't operate.\nFailed to connect to bus"), "not been booted"),
    (runner(rc=1), "no reason given"),
    (runner(raises=FileNotFoundError()), "systemctl not found"),
    (runner(raises=subprocess.TimeoutExpired("systemctl", 10)), "did not answer"),
])
def test_unit_cgroup_failures(run, words):
    with pytest.raises(NetleakError) as e:
        targets.unit_cgroup("job.scope", run)
    assert words in e.value.message
    assert "\n" not in e.value.message


def reader(text: str | None):
    def read(path):
        if text is None:
            raise FileNotFoundError(path)
        return text
    return read


def test_pid_cgroup_hybrid_and_pure():
    hybrid = "12:cpu,cpuacct:/x\n1:name=systemd:/user.slice\n0::/user.slice/s.scope\n"
    assert targets.pid_cgroup(5, reader(hybrid)) == "/user.slice/s.scope"
    assert targets.pid_cgroup(5, reader("0::/\n")) == "/"


@pytest.mark.parametrize("pid,text,words", [(0, "0::/\n", "running process"),
                                            (-3, "0::/\n", "running process"),
                                            (7, None, "no process 7"),
                                            (7, "1:name=systemd:/a\n", "no cgroup v2")])
def test_pid_cgroup_failures(pid, text, words):
    with pytest.raises(NetleakError) as e:
        targets.pid_cgroup(pid, reader(text))
    assert words in e.value.message


def test_resolve_exactly_one():
    with pytest.raises(NetleakError):
        targets.resolve(MOUNT)
    with pytest.raises(NetleakError):
        targets.resolve(MOUNT, cgroup="a", pid=3)
    assert targets.resolve(MOUNT, pid=3, read=reader("0::/a/b\n")) == "a/b"
    assert targets.resolve(MOUNT, unit="j.scope", run=runner(out="/j.scope\n")) == "j.scope"
    assert targets.resolve(MOUNT, cgroup=f"{MOUNT}/c") == "c"
