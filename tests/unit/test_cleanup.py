"""What a package's removal runs (`netleak cleanup`), `netleak prepare`, the
hook's help, and the line a first start says while the programs compile."""
from __future__ import annotations

import io
import os
import subprocess
import sys

import pytest

from netleak_hook import cleanup, client, hook
from netleak_hook.core import plan
from netleak_hook.core.state import State
from netleak_hook.daemon.units import dropin
from netleak_hook.rundir.store import Store
from tests.helpers import make_session


def _store_with(tmp_path, name: str, sessions: int) -> Store:
    st = State().with_binding(plan.Binding(iface="wg0", slot=0, mark=0x6E6C0001, table=28200))
    for i in range(sessions):
        st = st.with_session(make_session(id=f"s{i}", cgroup=f"netleak/exec-s{i}-1",
                                          cgroup_id=50 + i, pid=100 + i))
    store = Store(str(tmp_path / name))
    store.save(st)
    return store


def test_run_dirs_are_every_namespaces_and_the_configured_one(tmp_path):
    for n in ("net-1", "net-2", "other"):
        (tmp_path / n).mkdir()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert cleanup.run_dirs(str(tmp_path), str(mine)) == [
        str(tmp_path / "net-1"), str(tmp_path / "net-2"), str(mine)]
    assert cleanup.run_dirs(str(tmp_path / "none"), None) == []


def test_sessions_of_names_the_busy_run_directories(tmp_path):
    idle, busy = _store_with(tmp_path, "a", 0), _store_with(tmp_path, "b", 2)
    assert cleanup.sessions_of([idle, busy]) == {busy.path: 2}
    line = cleanup.refusal({busy.path: 2})
    assert line.startswith("2 sessions still run (") and "netleak cleanup" in line
    assert "\n" not in line
    assert cleanup.refusal({busy.path: 1}).startswith("1 session still runs (")


def test_only_netleaks_own_drop_ins_go(tmp_path):
    ours = tmp_path / "web.service.d"
    theirs = tmp_path / "db.service.d"
    ours.mkdir()
    theirs.mkdir()
    (ours / "netleak.conf").write_text(dropin(["/usr/bin/netleak", "attach", "wg0", "%n"]))
    (theirs / "netleak.conf").write_text("[Service]\nExecStartPre=/bin/true\n")
    (theirs / "other.conf").write_text("[Service]\n")
    assert cleanup.remove_dropins(str(tmp_path)) == [str(ours / "netleak.conf")]
    assert not ours.exists()
    assert (theirs / "netleak.conf").exists()
    assert cleanup.remove_dropins(str(tmp_path / "missing")) == []


def test_cleanup_refused_while_a_session_runs_and_nothing_removed(tmp_path, monkeypatch):
    from netleak_hook.core.config import Config
    busy = _store_with(tmp_path, "net-9", 1)
    bpf = tmp_path / "bpf"
    bpf.mkdir()
    monkeypatch.setattr("netleak_hook.rundir.store.DEFAULT_RUN_ROOT", str(tmp_path))
    monkeypatch.setattr(cleanup, "service_state", lambda: "inactive")
    root = tmp_path / "cg"
    (root / "netleak" / "exec-s0-1").mkdir(parents=True)     # the session's cgroup stands
    monkeypatch.setattr(cleanup, "cgroup_root", lambda: str(root))
    cfg = Config(run_dir=busy.path, bpf_dir=str(bpf))
    with pytest.raises(cleanup.NetleakError, match="1 session still runs"):
        cleanup.cleanup(cfg, {})
    assert os.path.exists(busy.state_file) and bpf.is_dir()


@pytest.mark.parametrize("state", ["active", "activating", "reloading", "deactivating"])
def test_cleanup_refused_while_the_service_runs_or_is_about_to(monkeypatch, state):
    from netleak_hook.core.config import Config
    monkeypatch.setattr(cleanup, "service_state", lambda: state)
    with pytest.raises(cleanup.NetleakError,
                       match=f"is {state}: stop it first .systemctl stop netleak-daemon"):
        cleanup.cleanup(Config(), {})


def test_a_session_whose_cgroup_went_is_not_standing_a_pinned_service_is(tmp_path):
    root = tmp_path / "cg"
    (root / "netleak" / "exec-a").mkdir(parents=True)
    alive = make_session(id="a", cgroup="netleak/exec-a", cgroup_id=1)
    gone = make_session(id="b", cgroup="netleak/exec-b", cgroup_id=2)
    pinned = make_session(id="c", cgroup="system.slice/web.service", cgroup_id=3,
                          unit="web.service", pinned=True, owned=False)
    assert cleanup.standing(alive, str(root)) and not cleanup.standing(gone, str(root))
    assert cleanup.standing(pinned, str(root))
    assert cleanup.standing(gone, "")           # no cgroup2 found: every one counts


def test_the_daemon_is_told_by_its_command_line(tmp_path):
    assert not cleanup.is_daemon(os.getpid())   # pytest
    assert not cleanup.is_daemon(2 ** 22 + 12345)   # no such process


def test_prepare_and_cleanup_need_root_as_nobody():
    if os.geteuid() != 0:
        pytest.skip("run as root: drops to nobody")
    for command in ("prepare", "cleanup"):
        r = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-m", "netleak_hook.cli", command],
                           capture_output=True, text=True, timeout=60,
                           cwd=os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
        assert r.returncode == 125, r.stderr
        assert r.stderr.strip().splitlines() == [
            "netleak: needs root (cgroups, BPF, routing): run it with sudo"]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_start_that_compiles_says_so_on_a_terminal_only(tmp_path):
    env = {"NETLEAK_BPF_DIR": str(tmp_path)}
    err = Tty()
    assert client.compile_notice(err, env)
    assert err.getvalue() == ("netleak: compiling the BPF programs for this kernel "
                              "(once, a few seconds)\n")
    quiet = io.StringIO()
    assert not client.compile_notice(quiet, env) and quiet.getvalue() == ""


def test_no_notice_once_the_programs_are_pinned(tmp_path):
    from netleak_hook.kernel import programs
    pins = tmp_path / programs.pinset_name()
    pins.mkdir(mode=0o700)
    for name in programs.PINS:
        (pins / name).touch()
    err = Tty()
    assert not client.compile_notice(err, {"NETLEAK_BPF_DIR": str(tmp_path)})
    assert err.getvalue() == ""


def test_the_hooks_help_reads_no_state(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["netleak-hook", "--help"])
    monkeypatch.setattr(sys, "stdin", None)      # read, it would fail
    with pytest.raises(SystemExit) as e:
        hook.main()
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: netleak-hook [STAGE]\n")
    for word in ("createRuntime", "poststop", "io.netleak.interface", "io.netleak.proxy"):
        assert word in out


def test_a_run_directory_set_by_hand_loses_netleaks_files_only(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    for name in ("state.json", "daemon.sock", "daemon.lock", "daemon.pid", "daemon.log",
                 "daemon.log.1", "hook.log", "events.jsonl", "events.jsonl.1",
                 ".state.123.tmp"):
        (d / name).touch()
    (d / "notes.txt").write_text("the admin's")
    assert not cleanup.clear_run_dir(str(d), ours=False)
    assert sorted(os.listdir(d)) == ["notes.txt"]
    (d / "notes.txt").unlink()
    (d / "state.json").touch()
    assert cleanup.clear_run_dir(str(d), ours=False) and not d.exists()
    assert cleanup.clear_run_dir(str(d), ours=False)        # gone already


@pytest.mark.parametrize("name, mine", [("state.json", True), (".relay.77.tmp", True),
                                        ("state.json.2", False), ("passwd", False),
                                        (".state.x.tmp", False), ("state", False)])
def test_netleaks_files(name, mine):
    assert cleanup.netleaks_file(name) == mine


@pytest.mark.parametrize("name, mine", [("v1-252ecd1db236", True), ("v1-252ecd1db236-new", True),
                                        ("v12-0123456789ab", True), ("tc", False),
                                        ("v1-252ecd1db23", False), ("v1-252ECD1DB236", False),
                                        ("x1-252ecd1db236", False), ("globals", False)])
def test_pinsets_told_apart_from_other_tools_pins(name, mine):
    assert cleanup.is_pinset(name) == mine


def test_only_pin_sets_go_from_a_shared_folder(tmp_path):
    for n in ("v1-252ecd1db236", "v1-0123456789ab-new", "tc"):
        (tmp_path / n).mkdir()
    removed = []
    assert cleanup.remove_pinsets(str(tmp_path), removed.append) == 2
    assert sorted(os.path.basename(p) for p in removed) == ["v1-0123456789ab-new",
                                                            "v1-252ecd1db236"]
    assert (tmp_path / "tc").is_dir()
    assert cleanup.remove_pinsets(str(tmp_path / "none"), removed.append) == 0


def test_a_zombie_does_not_run_though_kill_finds_it():
    from netleak_hook.kernel.proc import running
    assert running(os.getpid())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    try:
        from tests.helpers import wait_until
        assert wait_until(lambda: not running(pid), timeout=5)
        os.kill(pid, 0)             # still there for kill(2): a zombie
    finally:
        os.waitpid(pid, 0)
    assert not running(pid) and not running(0) and not running(-1)
