"""netleak_hook.execcmd: command-line parsing and look-ups (pure parts), and
netleak-exec's refusals that happen before any root-only step."""
from __future__ import annotations

import os
import subprocess

import pytest

from netleak_hook import execcmd
from netleak_hook.core.errors import Exit, NetleakError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXE = os.path.join(ROOT, ".venv", "bin", "netleak-exec")


# ---------- parse ----------

def test_parse_minimal():
    a = execcmd.parse(["wg0", "curl", "https://example.org"])
    assert (a.action, a.iface, a.command, a.user, a.via) == (
        "run", "wg0", ["curl", "https://example.org"], None, [])


def test_parse_command_options_untouched():
    a = execcmd.parse(["wg0", "ls", "-l"])
    assert a.iface == "wg0" and a.command == ["ls", "-l"]
    a = execcmd.parse(["wg0", "grep", "-u", "--help", "--via", "x", "--version"])
    assert a.command == ["grep", "-u", "--help", "--via", "x", "--version"]
    assert a.action == "run" and a.user is None and a.via == []


def test_parse_double_dash_before_command_dropped():
    a = execcmd.parse(["wg0", "--", "ls", "-l"])
    assert a.command == ["ls", "-l"]


def test_parse_only_first_double_dash_dropped():
    a = execcmd.parse(["wg0", "--", "--", "x"])
    assert a.command == ["--", "x"]
    a = execcmd.parse(["wg0", "echo", "--", "y"])
    assert a.command == ["echo", "--", "y"]


def test_parse_double_dash_before_iface():
    a = execcmd.parse(["-u", "alice", "--", "wg0", "id"])
    assert a.user == "alice" and a.iface == "wg0" and a.command == ["id"]


@pytest.mark.parametrize("argv", [["-u", "alice", "tun0", "id"],
                                  ["--user=alice", "tun0", "id"],
                                  ["--user", "alice", "tun0", "id"],
                                  ["-ualice", "tun0", "id"]])
def test_parse_user(argv):
    a = execcmd.parse(argv)
    assert a.user == "alice" and a.iface == "tun0" and a.command == ["id"]


def test_parse_repeated_via_in_order():
    a = execcmd.parse(["--via", "192.0.2.1", "--via=2001:db8::1", "eth1", "ping", "x"])
    assert a.via == ["192.0.2.1", "2001:db8::1"]
    assert a.iface == "eth1" and a.command == ["ping", "x"]


def test_parse_options_after_iface_belong_to_command():
    a = execcmd.parse(["wg0", "-u", "alice"])
    assert a.user is None and a.command == ["-u", "alice"]


@pytest.mark.parametrize("argv,action", [
    (["--help"], "help"), (["-h"], "help"), (["--version"], "version"),
    (["--dump-bpf"], "dump-bpf"), (["--help", "wg0", "ls"], "help"),
    (["-u", "x", "--version"], "version"),
])
def test_parse_actions_need_no_iface(argv, action):
    assert execcmd.parse(argv).action == action


@pytest.mark.parametrize("argv", [[], ["-u", "alice"], ["--via", "192.0.2.1"]])
def test_parse_missing_iface(argv):
    with pytest.raises(NetleakError) as ei:
        execcmd.parse(argv)
    assert ei.value.exit_status == 125
    assert "IFACE" in ei.value.message and "\n" not in ei.value.message


@pytest.mark.parametrize("argv", [["wg0"], ["wg0", "--"], ["-u", "a", "wg0"]])
def test_parse_missing_command(argv):
    with pytest.raises(NetleakError) as ei:
        execcmd.parse(argv)
    assert ei.value.exit_status == 125
    assert "COMMAND" in ei.value.message and "\n" not in ei.value.message


@pytest.mark.parametrize("argv", [["-x", "wg0", "ls"], ["--bogus", "wg0", "ls"],
                                  ["-u"], ["--user"], ["--help=yes"]])
def test_parse_bad_option(argv):
    with pytest.raises(NetleakError) as ei:
        execcmd.parse(argv)
    assert ei.value.exit_status == 125
    assert "--help" in ei.value.message and "\n" not in ei.value.message


# ---------- resolve_command ----------

def _write(path, mode):
    with open(path, "w") as f:
        f.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, mode)
    return str(path)


def test_resolve_command_found_in_path(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir(), d2.mkdir()
    exe = _write(d2 / "tool", 0o755)
    assert execcmd.resolve_command("tool", f"{d1}:{d2}") == exe


def test_resolve_command_first_in_path_wins(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir(), d2.mkdir()
    first = _write(d1 / "tool", 0o755)
    _write(d2 / "tool", 0o755)
    assert execcmd.resolve_command("tool", f"{d1}:{d2}") == first


def test_resolve_command_skips_non_executable_for_later_one(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir(), d2.mkdir()
    _write(d1 / "tool", 0o644)
    exe = _write(d2 / "tool", 0o755)
    assert execcmd.resolve_command("tool", f"{d1}:{d2}") == exe


def test_resolve_command_skips_directory_in_path(tmp_path):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    (d1 / "tool").mkdir(parents=True)
    d2.mkdir()
    exe = _write(d2 / "tool", 0o755)
    assert execcmd.resolve_command("tool", f"{d1}:{d2}") == exe


def test_resolve_command_not_found(tmp_path):
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_command("no-such-tool", str(tmp_path))
    assert ei.value.exit_status == Exit.NOT_FOUND == 127
    assert "no-such-tool" in ei.value.message and "\n" not in ei.value.message


def test_resolve_command_not_found_with_slash(tmp_path):
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_command(str(tmp_path / "missing"), "/usr/bin")
    assert ei.value.exit_status == 127


def test_resolve_command_not_executable(tmp_path):
    p = _write(tmp_path / "tool", 0o644)
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_command("tool", str(tmp_path))
    assert ei.value.exit_status == Exit.CANNOT_EXEC == 126
    assert p in ei.value.message


def test_resolve_command_not_executable_with_slash(tmp_path):
    p = _write(tmp_path / "tool", 0o600)
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_command(p, "")
    assert ei.value.exit_status == 126


def test_resolve_command_directory_with_slash(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_command(str(d), str(tmp_path))
    assert ei.value.exit_status == 126
    assert "directory" in ei.value.message


def test_resolve_command_with_slash_ignores_path(tmp_path):
    exe = _write(tmp_path / "tool", 0o755)
    assert execcmd.resolve_command(exe, "/nonexistent") == exe


def test_resolve_command_empty_path_entry_is_cwd(tmp_path, monkeypatch):
    _write(tmp_path / "tool", 0o755)
    monkeypatch.chdir(tmp_path)
    assert execcmd.resolve_command("tool", "/nonexistent:") == os.path.join(".", "tool")


# ---------- resolve_user ----------

def test_resolve_user_none():
    assert execcmd.resolve_user(None) is None


@pytest.mark.parametrize("spec", ["root", "0"])
def test_resolve_user_root(spec):
    pw = execcmd.resolve_user(spec)
    assert pw.pw_uid == 0 and pw.pw_name == "root"


@pytest.mark.parametrize("spec", ["no-such-user-netleak-xyz", "4000000000", "-1"])
def test_resolve_user_unknown(spec):
    with pytest.raises(NetleakError) as ei:
        execcmd.resolve_user(spec)
    assert ei.value.exit_status == 125
    assert spec in ei.value.message and "\n" not in ei.value.message


# ---------- the installed netleak-exec ----------

def _env() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("NETLEAK_")}
    env["PATH"] = os.environ.get("PATH", os.defpath)
    return env


def _run(*args):
    return subprocess.run([EXE, *args], capture_output=True, text=True, timeout=30,
                          env=_env())


def test_exec_script_exists():
    assert os.access(EXE, os.X_OK), EXE


def test_exec_help():
    r = _run("--help")
    assert r.returncode == 0
    assert r.stdout.startswith("usage:")
    assert r.stderr == ""


def test_exec_command_not_found():
    r = _run("wg0", "/nonexistent/cmd")
    assert r.returncode == 127
    assert r.stderr.count("\n") == 1 and r.stderr.endswith("\n")
    assert r.stderr.startswith("netleak-exec: ")
    assert "/nonexistent/cmd" in r.stderr
    assert r.stdout == ""


def test_exec_bad_interface_name():
    r = _run("bad/name", "true")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("netleak-exec: ")
    assert "bad/name" in r.stderr


def test_exec_unknown_option():
    r = _run("--bogus", "wg0", "true")
    assert r.returncode == 125
    assert r.stderr.count("\n") == 1


# ---------- getopt (netleak-exec's own: the module would import re) ----------

def _stdlib(argv, shorts, longs):
    import getopt
    try:
        opts, rest = getopt.getopt(argv, shorts, list(longs))
    except getopt.GetoptError as e:
        return ("error", e.msg)
    return (opts, rest)


def _ours(argv, shorts, longs):
    try:
        return execcmd.getopt(argv, shorts, longs)[:2]
    except NetleakError as e:
        return ("error", e.message)


@pytest.mark.parametrize("argv,ended", [
    (["--", "wg0"], True), (["-u", "x", "--", "wg0"], True), (["wg0", "--"], False),
    (["-u", "--", "wg0"], False), (["-u", "--", "--", "wg0"], True),
    (["--user", "--", "wg0"], False), (["--user=--", "--", "wg0"], True), ([], False)])
def test_getopt_says_whether_a_double_dash_ended_the_options(argv, ended):
    assert execcmd.getopt(argv, execcmd.SHORT_OPTIONS, execcmd.LONG_OPTIONS)[2] is ended


WORDS = ["-h", "-u", "-ualice", "-hu", "-hualice", "-x", "-", "--", "--help", "--he",
         "--user", "--user=bob", "--us=bob", "--via", "--via=", "--v", "--ver", "--version=1",
         "--block", "--block=yes", "--proxy", "--proxy=socks5://h:1", "--proxy-f=f",
         "--pro", "--nope", "--dump", "--keep-fds", "wg0", "curl", "-u:", "-:", "x=y"]


def test_getopt_parses_as_the_standard_module_does():
    from hypothesis import given, settings, strategies as st

    @settings(max_examples=600, deadline=None)
    @given(st.lists(st.sampled_from(WORDS), max_size=6))
    def check(argv):
        assert _ours(argv, execcmd.SHORT_OPTIONS, execcmd.LONG_OPTIONS) == \
            _stdlib(argv, execcmd.SHORT_OPTIONS, execcmd.LONG_OPTIONS), argv
    check()


def test_netleak_exec_does_not_import_getopt_or_re():
    code = ("import sys, netleak_hook.execcmd as e; e.parse(['-u', 'x', '--via=192.0.2.1', "
            "'wg0', 'true']); print(' '.join(m for m in ('getopt', 'gettext', 're') "
            "if m in sys.modules))")
    r = subprocess.run([os.path.join(ROOT, ".venv", "bin", "python"), "-c", code],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.strip() == "", r.stdout + r.stderr
