"""Shell completion: the data functions, netleak's click scripts, and
netleak-exec's bash script driven in a real bash (zsh's: syntax only)."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import click
import pytest
from click.shell_completion import BashComplete, CompletionItem

from netleak_hook import completion, execcmd
from netleak_hook.core.state import State
from netleak_hook.rundir.store import Store
from tests.helpers import make_session

ROOT = os.geteuid() == 0
BASH_COMPLETION = "/usr/share/bash-completion/bash_completion"


@pytest.fixture
def net(tmp_path, monkeypatch):
    """A fake /sys/class/net with lo, wg0, wg1 and eth9."""
    d = tmp_path / "net"
    d.mkdir()
    for name in ("lo", "wg0", "wg1", "eth9"):
        (d / name).mkdir()
    monkeypatch.setattr(completion, "SYS_CLASS_NET", str(d))
    return d


# ---------- interfaces ----------

def test_interfaces_are_sorted_filtered_and_without_lo(net):
    assert completion.interfaces() == ["eth9", "wg0", "wg1"]
    assert completion.interfaces("wg") == ["wg0", "wg1"]
    assert completion.interfaces("l") == []
    assert completion.interfaces("x") == []


def test_interfaces_without_the_directory(tmp_path, monkeypatch):
    monkeypatch.setattr(completion, "SYS_CLASS_NET", str(tmp_path / "none"))
    assert completion.interfaces("") == []


# ---------- session ids ----------

@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A run directory (NETLEAK_RUN_DIR) whose state holds an exec session
    (s1, s2) and an attached one (a1)."""
    if not ROOT:
        pytest.skip("the run directory must be root's")
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    state = State()
    for s in (make_session(id="s1"), make_session(id="s2", iface="wg1"),
              make_session(id="a1", owned=False, cgroup="system.slice/x.service")):
        state = state.with_session(s)
    store = Store(str(d))
    store.save(state)
    store.close()
    monkeypatch.setenv("NETLEAK_RUN_DIR", str(d))
    return d


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_session_ids_from_the_state_file(run_dir):
    before = _fds()
    assert completion.session_ids() == ["a1", "s1", "s2"]
    assert completion.session_ids("s") == ["s1", "s2"]
    assert completion.session_ids("x") == []
    assert completion.session_ids("", detachable=True) == ["a1"]
    assert _fds() == before         # the Store was closed


def test_session_ids_for_anyone_but_root_are_none(run_dir, monkeypatch):
    monkeypatch.setattr(completion.os, "geteuid", lambda: 1000)
    assert completion.session_ids() == []


@pytest.mark.parametrize("case", ["missing", "writable", "file", "bad-config", "bad-state"])
def test_session_ids_never_raise(tmp_path, monkeypatch, case):
    monkeypatch.setattr(completion.os, "geteuid", lambda: 0)
    d = tmp_path / "run"
    if case == "writable":          # untrusted: Store refuses it (NetleakError)
        d.mkdir()
        d.chmod(0o777)
    elif case == "file":
        d.write_text("")
    elif case == "bad-config":
        monkeypatch.setenv("NETLEAK_MARK_BASE", "many")
    elif case == "bad-state":
        d.mkdir(mode=0o700)
        (d / "state.json").write_bytes(b"\xff{")
    monkeypatch.setenv("NETLEAK_RUN_DIR", str(d))
    before = _fds()
    assert completion.session_ids() == []
    assert _fds() == before


def test_session_ids_of_an_unreadable_state_file(run_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(Store, "load", refuse)
    assert completion.session_ids() == []


# ---------- systemd units ----------

def _fake_systemctl(tmp_path, monkeypatch, body: str) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    exe = bindir / "systemctl"
    exe.write_text(f"#!/bin/sh\n{body}\n")
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")


def test_unit_names_from_systemctl(tmp_path, monkeypatch):
    args = tmp_path / "args"
    _fake_systemctl(tmp_path, monkeypatch, f"""echo "$@" > {args}
cat <<'EOF'
ssh.service            loaded active running OpenBSD Secure Shell server
cron.service           loaded active running Regular background program processing
session-3.scope        loaded active running Session 3 of User alice
sshd.socket            loaded active listening stray
EOF""")
    assert completion.unit_names() == ["cron.service", "session-3.scope", "ssh.service"]
    assert completion.unit_names("ss") == ["ssh.service"]
    assert args.read_text().split() == list(completion.SYSTEMCTL[1:])


@pytest.mark.parametrize("body", ["echo 'x.service loaded' ; exit 1", "exec sleep 5", None])
def test_unit_names_when_systemctl_fails_hangs_or_is_missing(tmp_path, monkeypatch, body):
    if body is None:
        monkeypatch.setenv("PATH", str(tmp_path))
    else:
        _fake_systemctl(tmp_path, monkeypatch, body)
    monkeypatch.setattr(completion, "SYSTEMCTL_TIMEOUT", 0.3)
    start = time.monotonic()
    assert completion.unit_names() == []
    assert time.monotonic() - start < 3


# ---------- click callbacks ----------

def test_callbacks_give_click_its_items(net, tmp_path, monkeypatch):
    _fake_systemctl(tmp_path, monkeypatch, "echo 'a.service loaded active running A'")

    @click.command()
    @click.argument("iface", shell_complete=completion.complete_iface)
    @click.option("--unit", shell_complete=completion.complete_unit)
    @click.option("--id", "sid", shell_complete=completion.complete_session)
    @click.option("--detach", shell_complete=completion.complete_detachable)
    def cmd(iface, unit, sid, detach):
        pass

    def values(args, incomplete):
        items = BashComplete(cmd, {}, "cmd", "_CMD_COMPLETE").get_completions(args, incomplete)
        assert all(isinstance(i, CompletionItem) for i in items)
        return [i.value for i in items]
    assert values([], "w") == ["wg0", "wg1"]
    assert values(["wg0", "--unit"], "") == ["a.service"]
    monkeypatch.setattr(completion.os, "geteuid", lambda: 1000)
    assert values(["wg0", "--id"], "") == [] == values(["wg0", "--detach"], "")


# ---------- netleak: click's own scripts ----------

def test_click_scripts():
    bash = completion.click_script("bash")
    assert "_NETLEAK_COMPLETE" in bash and "netleak" in bash
    subprocess.run(["bash", "-n"], input=bash, text=True, check=True)
    assert "#compdef netleak" in completion.click_script("zsh")
    with pytest.raises(ValueError):
        completion.click_script("fish")


def test_netleak_completes_its_commands(monkeypatch, capsys):
    from netleak_hook.cli import main
    monkeypatch.setenv("_NETLEAK_COMPLETE", "bash_complete")
    monkeypatch.setenv("COMP_WORDS", "netleak st")
    monkeypatch.setenv("COMP_CWORD", "1")
    with pytest.raises(SystemExit) as e:
        main(prog_name="netleak", args=[], standalone_mode=False)
    assert e.value.code == 0
    assert "plain,status" in capsys.readouterr().out.splitlines()


# ---------- netleak-exec: bash, for real ----------

@pytest.fixture(scope="module")
def bash_script(tmp_path_factory):
    path = tmp_path_factory.mktemp("completion") / "netleak-exec.bash"
    path.write_text(completion.exec_script("bash"))
    return path


def _bash(script, words: list[str], line: str | None = None, net_dir=None,
          preamble: str = "") -> list[str]:
    """COMPREPLY of _netleak_exec for WORDS (the last: the word at the
    cursor), as bash split them; LINE: COMP_LINE (none: not set)."""
    program = f"""{preamble}
source "$1"; shift
COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 ))
{'COMP_LINE=$LINE; COMP_POINT=${#LINE}' if line is not None else ''}
_netleak_exec
printf '%s\\n' "${{COMPREPLY[@]}}"
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BASH_ENV", "COMP_"))}
    env.update(LINE=line or "", NETLEAK_SYS_CLASS_NET=str(net_dir or "/nonexistent"))
    out = subprocess.run(["bash", "--norc", "--noprofile", "-c", program, "_", str(script),
                          *words], env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    return [w for w in out.stdout.splitlines() if w]


def test_bash_script_parses(bash_script):
    subprocess.run(["bash", "-n", str(bash_script)], check=True)
    assert "complete -F _netleak_exec netleak-exec" in bash_script.read_text()


@pytest.mark.parametrize("words,expected", [
    (["--u"], ["--user"]),
    (["--pro"], ["--proxy", "--proxy-file"]),
    (["--b"], ["--block"]),
    (["--d"], ["--dns", "--deny"]),   # --dump-bpf is hidden
    (["-"], ["-h", "-u", "--help", "--user", "--via", "--version", "--dns", "--allow",
             "--deny", "--block", "--proxy", "--proxy-file", "--keep-fds"]),
    (["--via", ""], []),              # addresses: nothing to offer
    (["--dns", "1.1.1.1", "--allow", ""], []),
    ([""], ["eth9", "wg0", "wg1"]),   # IFACE, not lo
    (["w"], ["wg0", "wg1"]),
    (["-u", "root", "--keep-fds", "e"], ["eth9"]),
    (["--", "w"], ["wg0", "wg1"]),
    (["wg0", "--"], ["--proxy", "--proxy-file", "--"]),
])
def test_bash_options_and_interfaces(bash_script, net, words, expected):
    assert _bash(bash_script, ["netleak-exec", *words], net_dir=net) == expected


@pytest.mark.parametrize("words", [["-u", ""], ["-u", "ro"], ["--user", "r"], ["--us", "ro"]])
def test_bash_users(bash_script, words):
    assert "root" in _bash(bash_script, ["netleak-exec", *words])


def test_bash_users_in_the_same_word(bash_script):
    assert _bash(bash_script, ["netleak-exec", "-uro"]) == ["-uroot"]
    assert _bash(bash_script, ["netleak-exec", "-huro"]) == ["-huroot"]
    # bash splits --user=ro at "=" and replaces only "ro": the reply is the user
    assert _bash(bash_script, ["netleak-exec", "--user", "=", "ro"],
                 line="netleak-exec --user=ro") == ["root"]
    assert "root" in _bash(bash_script, ["netleak-exec", "--user", "="],
                           line="netleak-exec --user=")


def test_bash_proxy_file_is_a_file(bash_script, tmp_path):
    (tmp_path / "proxy.url").write_text("")
    for words in (["--proxy-file", f"{tmp_path}/pr"], ["wg0", "--proxy-file", f"{tmp_path}/pr"]):
        assert _bash(bash_script, ["netleak-exec", *words]) == [f"{tmp_path}/proxy.url"]
    assert _bash(bash_script, ["netleak-exec", "wg0", "--proxy-file", "=", f"{tmp_path}/pr"],
                 line=f"netleak-exec wg0 --proxy-file={tmp_path}/pr") == [f"{tmp_path}/proxy.url"]


@pytest.mark.parametrize("words,iface_too", [
    (["lo", ""], False),
    (["wg0", "--", ""], False),
    (["--", "wg0", ""], False),
    (["wg0", "--proxy", "socks5h://127.0.0.1:9050", ""], False),
    (["--block", ""], False),
    (["--block", "--", ""], False),
    (["--proxy", "socks5h://127.0.0.1:9050", ""], True),   # IFACE optional
    (["--proxy", "socks5h://127.0.0.1:9050", "wg0", ""], False),
])
def test_bash_commands(bash_script, net, words, iface_too):
    replies = _bash(bash_script, ["netleak-exec", *words], net_dir=net)
    assert "ls" in replies
    assert ("wg0" in replies) is iface_too


def test_bash_commands_with_a_prefix(bash_script, net):
    replies = _bash(bash_script, ["netleak-exec", "--block", "l"], net_dir=net)
    assert "ls" in replies and all(r.startswith("l") for r in replies)
    replies = _bash(bash_script, ["netleak-exec", "--proxy", "x", "w"], net_dir=net)
    assert {"wg0", "wg1"} <= set(replies) and all(r.startswith("w") for r in replies)


def test_bash_a_proxy_url_split_at_colons_is_one_word(bash_script, net):
    words = ["netleak-exec", "--proxy", "=", "socks5", ":", "//127.0.0.1", ":", "9050", "w"]
    replies = _bash(bash_script, words, line="netleak-exec --proxy=socks5://127.0.0.1:9050 w",
                    net_dir=net)
    assert {"wg0", "wg1"} <= set(replies)
    words[-1:] = ["wg0", "l"]
    replies = _bash(bash_script, words, line="netleak-exec --proxy=socks5://127.0.0.1:9050 wg0 l",
                    net_dir=net)
    assert "ls" in replies and "wg0" not in replies


def test_bash_arguments_of_the_command(bash_script, net, tmp_path):
    """After COMMAND: filenames, or COMMAND's own completion (bash-completion)."""
    (tmp_path / "notes.txt").write_text("")
    assert _bash(bash_script, ["netleak-exec", "wg0", "cat", f"{tmp_path}/no"],
                 net_dir=net) == [f"{tmp_path}/notes.txt"]
    if not os.path.exists(BASH_COMPLETION):
        pytest.skip("no bash-completion")
    replies = _bash(bash_script, ["netleak-exec", "wg0", "fakecmd", "al"], net_dir=net,
                    line="netleak-exec wg0 fakecmd al",
                    preamble=f'source {BASH_COMPLETION}; complete -W "alpha beta" fakecmd')
    assert replies == ["alpha"]


# ---------- netleak-exec: zsh, and both scripts from execcmd's tables ----------

def test_zsh_script_parses(tmp_path):
    if not shutil.which("zsh"):
        pytest.skip("no zsh")
    text = completion.exec_script("zsh")
    assert text.startswith("#compdef netleak-exec\n") and "_arguments" in text
    path = tmp_path / "_netleak-exec"
    path.write_text(text)
    subprocess.run(["zsh", "-n", str(path)], check=True)


def test_scripts_follow_execcmds_tables(monkeypatch):
    bash, zsh = completion.exec_script("bash"), completion.exec_script("zsh")
    for spec in execcmd.LONG_OPTIONS:
        name = spec.rstrip("=")
        assert f" {spec} " in bash or f" {spec};" in bash      # what getopt takes
        assert re.search(rf"^        '[^']*--{name}\b", zsh, re.M)
        assert (f" --{name} " in bash or f" --{name}\"" in bash) is (name != "dump-bpf")
    monkeypatch.setattr(execcmd, "LONG_OPTIONS", execcmd.LONG_OPTIONS + ("frobnicate=",))
    assert " --frobnicate" in completion.exec_script("bash")
    assert "--frobnicate=[frobnicate]:value: " in completion.exec_script("zsh")
    with pytest.raises(ValueError):
        completion.exec_script("fish")


def test_options_read_from_the_help():
    options = {o.name: o for o in completion.exec_options()}
    assert [o.name for o in options.values()] == [s.rstrip("=") for s in execcmd.LONG_OPTIONS]
    user = options["user"]
    assert (user.short, user.takes_value, user.metavar, user.help) == \
        ("u", True, "USER", "run COMMAND as USER")
    assert options["block"].help == "no network at all" and not options["block"].takes_value


# ---------- the command line ----------

@pytest.mark.parametrize("args", [[], ["bash"], ["fish", "netleak"], ["bash", "ls"],
                                  ["bash", "netleak", "x"]])
def test_cli_refuses_bad_arguments(args, capsys):
    assert completion.main(args) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("usage: ") and err.count("\n") == 1


def test_cli_prints_scripts():
    run = [sys.executable, "-m", "netleak_hook.completion"]
    out = subprocess.run([*run, "bash", "netleak-exec"], capture_output=True, text=True,
                         check=True).stdout
    assert out == completion.exec_script("bash")
    out = subprocess.run([*run, "zsh", "netleak"], capture_output=True, text=True,
                         check=True).stdout
    assert "_NETLEAK_COMPLETE" in out
    bad = subprocess.run([*run, "tcsh", "netleak"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stdout == "" and len(bad.stderr.splitlines()) == 1


def test_netleaks_zsh_script_completes_from_the_first_tab_when_autoloaded():
    """Loaded from the fpath (vendor-completions), the script is the
    completion function's body: it must complete then, not only register
    itself (what click 8.1's script did)."""
    text = completion.click_script("zsh")
    assert "loadautofunc" in text and "_netleak_completion \"$@\"" in text
    assert completion.ZSH_REGISTER not in text
