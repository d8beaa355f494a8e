"""The hooks.d document, the hook as a zipapp, and `netleak install-hook`."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from click.testing import CliRunner

from netleak_hook import cli, hookspec
from netleak_hook.core import oci

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def test_the_shipped_file_is_the_default_spec():
    with open(os.path.join(ROOT, "hooks", "netleak.json")) as f:
        assert json.load(f) == hookspec.spec(hookspec.DEFAULT_PATH)


def test_spec_shape():
    doc = hookspec.spec("/opt/x/netleak-hook", env={"B": "2", "A": "1"})
    assert doc["version"] == "1.0.0"
    assert doc["hook"] == {"path": "/opt/x/netleak-hook", "args": ["netleak-hook"],
                           "timeout": 30, "env": ["A=1", "B=2"]}
    assert doc["stages"] == ["createRuntime", "poststop"]
    [(pattern, value)] = doc["when"]["annotations"].items()
    # the key pattern matches the annotation exactly, nothing near it
    assert re.search(pattern, oci.ANNOTATION_IFACE)
    for near in ("io.netleak.interfaces", "xio.netleak.interface", "ioXnetleak.interface"):
        assert not re.search(pattern, near)
    assert value == ".*"


def test_spec_without_env_has_no_env_key():
    assert "env" not in hookspec.spec("/p/netleak-hook")["hook"]


def test_passed_on_every_netleak_setting_and_nothing_else():
    env = {"NETLEAK_RUN_DIR": "/r", "NETLEAK_AUTOSTART": "0", "NETLEAK_MARK_BASE": "1",
           "NETLEAK_BPF_DIR": "", "NETLEAK_UNKNOWN": "x", "PATH": "/bin"}
    assert hookspec.passed_on(env) == {"NETLEAK_RUN_DIR": "/r", "NETLEAK_AUTOSTART": "0",
                                       "NETLEAK_MARK_BASE": "1"}


def test_write_is_atomic_and_readable(tmp_path):
    d = tmp_path / "hooks.d"
    target = hookspec.write(str(d), hookspec.spec("/p/netleak-hook"))
    assert target == str(d / "netleak.json")
    assert os.listdir(d) == ["netleak.json"]
    assert oct(os.stat(target).st_mode & 0o777) == "0o644"
    assert json.loads((d / "netleak.json").read_text())["hook"]["path"] == "/p/netleak-hook"


def test_zipapp_runs_with_the_standard_library_alone(tmp_path):
    """The host's python3 (no BCC, pyroute2 or click) runs the hook: an
    unannotated container gets 'nothing to do', a bad state a refusal."""
    pyz = str(tmp_path / "netleak-hook.pyz")
    hookspec.build_zipapp(pyz)
    env = {"PATH": "/usr/bin:/bin", "NETLEAK_RUN_DIR": str(tmp_path / "run")}
    state = {"ociVersion": "1.0.2", "id": "a" * 64, "status": "creating", "pid": 1,
             "bundle": "/b"}
    r = subprocess.run([sys.executable, "-S", "-I", pyz], input=json.dumps(state),
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    assert "nothing to do" in (tmp_path / "run" / "hook.log").read_text()
    r = subprocess.run([sys.executable, "-S", "-I", pyz], input="not json",
                       capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 125
    assert r.stderr.startswith("netleak-hook: ") and r.stderr.count("\n") == 1


def _install(tmp_path, *args, env=None):
    return CliRunner().invoke(cli.main, ["install-hook", *args],
                              obj=cli.Env(env or {}), catch_exceptions=False)


def test_install_hook_next_to_this_interpreter(tmp_path, monkeypatch):
    bindir = tmp_path / "venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "netleak-hook").write_text("#!/bin/sh\n")
    (bindir / "netleak-hook").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(bindir / "python"))
    r = _install(tmp_path, "--hooks-dir", str(tmp_path / "h"),
                 env={"NETLEAK_RUN_DIR": "/run/x"})
    assert r.exit_code == 0, r.output
    doc = json.loads((tmp_path / "h" / "netleak.json").read_text())
    assert doc == hookspec.spec(str(bindir / "netleak-hook"), None,
                                {"NETLEAK_RUN_DIR": "/run/x"})


def test_install_hook_zipapp_with_host_path(tmp_path):
    """The zipapp runs on a host without netleak: it never starts a daemon."""
    r = _install(tmp_path, "--hooks-dir", str(tmp_path / "h"), "--zipapp-dir",
                 str(tmp_path / "lib"), "--host-dir", "/opt/netleak",
                 env={"NETLEAK_AUTOSTART": "1"})
    assert r.exit_code == 0, r.output
    assert (tmp_path / "lib" / "netleak-hook.pyz").exists()
    doc = json.loads((tmp_path / "h" / "netleak.json").read_text())
    assert doc["hook"]["path"] == "/usr/bin/python3"
    assert doc["hook"]["args"] == ["python3", "/opt/netleak/netleak-hook.pyz"]
    assert doc["hook"]["env"] == ["NETLEAK_AUTOSTART=0"]


@pytest.mark.parametrize("args,env,needle", [
    (["--host-dir", "/opt/x"], {}, "--host-dir goes with --zipapp-dir"),
    ([], {"NETLEAK_AUTOSTART": "yes"}, "NETLEAK_AUTOSTART"),
])
def test_install_hook_refusals_write_nothing(tmp_path, monkeypatch, args, env, needle):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    r = CliRunner().invoke(cli.main, ["install-hook", "--hooks-dir", str(tmp_path / "h"),
                                      *args], obj=cli.Env(env))
    assert r.exit_code == 125
    assert needle in r.output
    assert not (tmp_path / "h").exists()


def test_install_hook_without_an_installed_hook(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    r = CliRunner().invoke(cli.main, ["install-hook", "--hooks-dir", str(tmp_path / "h")],
                           obj=cli.Env({}))
    assert r.exit_code == 125
    assert "make install" in r.output
    assert not (tmp_path / "h").exists()


def test_agent_refuses_while_another_daemon_runs(tmp_path):
    """Its hook would never start a daemon: the agent must run its own, not
    exit quietly behind one that may idle out; nothing is installed."""
    import fcntl
    run = tmp_path / "run"
    run.mkdir()
    (run / "daemon.pid").write_text(str(os.getpid()))
    fd = os.open(run / "daemon.lock", os.O_CREAT | os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        r = CliRunner().invoke(cli.main, ["agent", "--hooks-dir", str(tmp_path / "h"),
                                          "--zipapp-dir", str(tmp_path / "lib")],
                               obj=cli.Env({"NETLEAK_RUN_DIR": str(run)}))
    finally:
        os.close(fd)
    assert r.exit_code == 125
    assert f"pid {os.getpid()}" in r.output and "stop it" in r.output
    assert not (tmp_path / "h").exists() and not (tmp_path / "lib").exists()


def test_zipapp_mode_set_on_its_descriptor_never_through_a_link(tmp_path, monkeypatch):
    """The same attack as on any atomic replace: the temporary file swapped
    for a link to another file right after it is made."""
    import os
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    real_mkstemp = hookspec.tempfile.mkstemp

    def swapped(*a, **kw):
        fd, name = real_mkstemp(*a, **kw)
        if kw.get("dir") == str(tmp_path / "lib"):
            os.unlink(name)
            os.symlink(victim, name)
        return fd, name
    monkeypatch.setattr(hookspec.tempfile, "mkstemp", swapped)
    (tmp_path / "lib").mkdir()
    hookspec.build_zipapp(str(tmp_path / "lib" / "hook.pyz"))
    assert os.stat(victim).st_mode & 0o777 == 0o600 and victim.read_text() == "secret\n"
