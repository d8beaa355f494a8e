"""The pure parts of keeping hostile workloads and neighbours out: proxy
credentials off the command line, -u once, inherited sockets."""
from __future__ import annotations

import os
import socket
import stat

import pytest

from netleak_hook.kernel import confine
from netleak_hook import execcmd
from netleak_hook.core import proxyspec
from netleak_hook.core.errors import NetleakError


# ---------- proxy credentials ----------

def test_password_goes_into_a_url_with_a_user():
    url = proxyspec.with_password("socks5h://alice@192.0.2.8:1080", "p@ss:w/rd")
    spec = proxyspec.parse(url)
    assert (spec.user, spec.password, spec.host, spec.port) == \
        ("alice", "p@ss:w/rd", "192.0.2.8", 1080)


def test_no_password_leaves_the_url_alone():
    assert proxyspec.with_password("socks5://192.0.2.8:1080", "") == "socks5://192.0.2.8:1080"


@pytest.mark.parametrize("url,why", [
    ("socks5://192.0.2.8:1080", "names no user"),
    ("socks5://alice:x@192.0.2.8:1080", "keep one of them"),
])
def test_password_refusals(url, why):
    with pytest.raises(NetleakError, match=why):
        proxyspec.with_password(url, "secret")


def test_has_password():
    assert proxyspec.has_password("http://a:b@192.0.2.1:3128")
    assert not proxyspec.has_password("http://a@192.0.2.1:3128")
    assert not proxyspec.has_password("not a url")


@pytest.mark.parametrize("text,url", [
    ("socks5h://a:b@192.0.2.8:1080\n", "socks5h://a:b@192.0.2.8:1080"),
    ("# the VPN's proxy\n\n  http://192.0.2.8:3128  \nignored\n", "http://192.0.2.8:3128"),
])
def test_url_from_file_text(text, url):
    assert proxyspec.url_from_file_text(text, "f") == url


def test_empty_proxy_file_is_refused():
    with pytest.raises(NetleakError, match="no proxy URL"):
        proxyspec.url_from_file_text("# nothing\n\n", "/etc/netleak/proxy")


@pytest.mark.parametrize("mode,uid,regular,why", [
    (0o600, 0, True, None),
    (0o400, 0, True, None),
    (0o640, 0, True, "mode 0640"),
    (0o604, 0, True, "mode 0604"),
    (0o600, 1000, True, "uid 1000"),
    (0o600, 0, False, "not a regular file"),
])
def test_proxy_file_must_be_roots_alone(mode, uid, regular, why):
    got = proxyspec.file_problem(stat.S_IFREG | mode, uid, regular)
    assert (got is None) if why is None else (why in got)


def test_read_url_file(tmp_path):
    f = tmp_path / "proxy"
    f.write_text("socks5h://u:pw@192.0.2.8:1080\n")
    os.chmod(f, 0o644)
    if os.geteuid() == 0:
        with pytest.raises(NetleakError, match="chmod 600"):
            proxyspec.read_url_file(str(f))
        os.chmod(f, 0o600)
        assert proxyspec.read_url_file(str(f)) == "socks5h://u:pw@192.0.2.8:1080"
    else:
        with pytest.raises(NetleakError, match="not root"):
            proxyspec.read_url_file(str(f))
    with pytest.raises(NetleakError, match="No such file"):
        proxyspec.read_url_file(str(tmp_path / "none"))


# ---------- netleak-exec's options ----------

def test_user_given_twice_is_refused():
    with pytest.raises(NetleakError, match="-u given twice"):
        execcmd.parse(["-u", "alice", "--user=bob", "wg0", "true"])


def test_proxy_file_takes_the_place_of_proxy():
    a = execcmd.parse(["--proxy-file", "/etc/netleak/proxy", "curl", "x"],
                      is_interface=lambda n: False)
    assert (a.proxy, a.proxy_file, a.iface, a.command) == \
        (None, "/etc/netleak/proxy", "", ["curl", "x"])
    a = execcmd.parse(["wg0", "--proxy-file=/p", "curl"])
    assert (a.proxy_file, a.iface, a.command) == ("/p", "wg0", ["curl"])
    with pytest.raises(NetleakError, match="given twice"):
        execcmd.parse(["--proxy", "socks5://192.0.2.8:1", "--proxy-file", "/p", "curl"])


def test_keep_fds():
    assert execcmd.parse(["--keep-fds", "wg0", "x"]).keep_fds
    assert not execcmd.parse(["wg0", "x"]).keep_fds


def test_password_variable_never_reaches_the_command(monkeypatch):
    monkeypatch.setenv("NETLEAK_PROXY_PASSWORD", "hunter2")
    a = execcmd.parse(["--block", "true"])
    assert execcmd._proxy_url(a) is None
    assert "NETLEAK_PROXY_PASSWORD" not in os.environ


def test_password_on_the_command_line_is_warned_about_once(capsys, monkeypatch):
    monkeypatch.delenv("NETLEAK_PROXY_PASSWORD", raising=False)
    a = execcmd.parse(["--proxy", "socks5://u:pw@192.0.2.8:1080", "true"],
                      is_interface=lambda n: False)
    assert execcmd._proxy_url(a) == "socks5://u:pw@192.0.2.8:1080"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--proxy-file" in err and "pw" not in err


# ---------- inherited sockets ----------

def test_every_inherited_descriptor_above_2_is_closed():
    """In a child: sockets, pipes and files above fd 2 all go."""
    import subprocess
    import sys
    code = ("import os, socket\n"
            "from netleak_hook.kernel import confine\n"
            "a, b = socket.socketpair(); r, w = os.pipe(); f = os.open('/dev/null', os.O_RDONLY)\n"
            "os.dup2(r, 900)\n"
            "confine.close_inherited()\n"
            "print(sorted(int(x) for x in os.listdir('/proc/self/fd')))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    left = eval(out)
    assert left[:3] == [0, 1, 2] and len(left) == 4      # and the listing's own



# ---------- attaching inside a delegated subtree ----------

def test_ancestors():
    from netleak_hook.core import plan
    assert plan.ancestors("a/b/c") == ["a/b", "a"]
    assert plan.ancestors("/a/") == []


def test_attach_inside_a_delegated_subtree_is_refused_and_its_top_named():
    from netleak_hook.core import plan
    u = "user.slice/user-1000.slice/user@1000.service"
    target = f"{u}/app.slice/job.scope"
    writers = {u: "uid 1000", f"{u}/app.slice": "uid 1000"}
    why = plan.delegation_refusal(target, writers)
    assert f"attach /{u} instead" in why and "uid 1000" in why and "\n" not in why
    assert plan.delegation_refusal(u, writers) is None     # the top itself
    assert plan.delegation_refusal("system.slice/x.service", writers) is None
    # a writable cgroup itself, with root's above it: its processes stay inside
    assert plan.delegation_refusal(f"{u}", {u: "uid 1000"}) is None


# ---------- what a workload names itself, shown to people ----------

def test_event_lines_escape_what_the_workload_named_itself():
    from netleak_hook.core import events
    ev = {"ts": 0, "session": "ab12", "pid": 42, "comm": "\x1b]0;owned\x07\x1b[2J",
          "reason": "no-network", "protocol": "tcp", "family": "ipv4",
          "daddr": "203.0.113.7", "dport": 443}
    text = events.line(ev)
    assert "\x1b" not in text and "\x07" not in text and "\\x1b" in text
    assert text.isprintable()


def test_status_rows_escape_cgroup_names():
    from netleak_hook import status
    row = {"id": "ab12", "iface": "wg0", "state": "routed", "procs": 1, "age": 5,
           "counters": None, "dropped": None, "cgroup": "/\x1b[31mred"}
    out = status.render([row])
    assert "\x1b" not in out and "\\x1b[31mred" in out


# ---------- the socket family filter (classic BPF, run here) ----------

X86_64, I386, AARCH64, ARM = 0xC000003E, 0x40000003, 0xC00000B7, 0x40000028
ALLOW = confine.RET_ALLOW
REFUSE = confine.RET_ERRNO | confine.EAFNOSUPPORT
NOSYS = confine.RET_ERRNO | confine.ENOSYS


@pytest.mark.parametrize("machine,arch,nr,args,want", [
    ("x86_64", X86_64, 41, (2,), ALLOW),            # socket(AF_INET)
    ("x86_64", X86_64, 41, (10,), ALLOW),
    ("x86_64", X86_64, 41, (1,), ALLOW),            # AF_UNIX
    ("x86_64", X86_64, 41, (16,), ALLOW),           # AF_NETLINK
    ("x86_64", X86_64, 41, (40,), REFUSE),          # AF_VSOCK
    ("x86_64", X86_64, 41, (17,), REFUSE),          # AF_PACKET
    ("x86_64", X86_64, 41, (44,), REFUSE),          # AF_XDP
    ("x86_64", X86_64, 41, (31,), REFUSE),          # AF_BLUETOOTH
    ("x86_64", X86_64, 41, (2 | 1 << 32,), ALLOW),  # the family is an int: low half
    ("x86_64", X86_64, 0, (), ALLOW),               # read(2)
    ("x86_64", X86_64, 102, (1,), ALLOW),           # getuid: no socketcall on x86_64
    ("x86_64", X86_64, 41 | 0x40000000, (2,), NOSYS),   # x32
    ("x86_64", I386, 359, (40,), REFUSE),
    ("x86_64", I386, 359, (2,), ALLOW),
    ("x86_64", I386, 102, (1,), REFUSE),            # socketcall(SYS_SOCKET, ...)
    ("x86_64", I386, 102, (3,), ALLOW),             # socketcall(SYS_CONNECT, ...)
    ("x86_64", I386, 41, (40,), ALLOW),             # i386's 41 is dup(2)
    ("x86_64", AARCH64, 198, (40,), NOSYS),         # an architecture it is not
    ("aarch64", AARCH64, 198, (40,), REFUSE),
    ("aarch64", AARCH64, 198, (10,), ALLOW),
    ("aarch64", ARM, 281, (40,), REFUSE),
    ("aarch64", AARCH64, 41, (40,), ALLOW),
    ("x86_64", X86_64, 425, (), NOSYS),             # io_uring_setup: IORING_OP_SOCKET
    ("x86_64", I386, 425, (), NOSYS),
    ("aarch64", AARCH64, 425, (), NOSYS),
    ("riscv64", 0xC00000F3, 425, (), NOSYS),
])
def test_family_filter(machine, arch, nr, args, want):
    prog = confine.family_filter(machine)
    assert confine.run_filter(prog, arch, nr, args) == want


def test_family_filter_unknown_machine():
    assert confine.family_filter("sparc64") is None


def test_family_filter_fits_seccomp():
    for machine in confine.ARCHES:
        prog = confine.family_filter(machine)
        assert 0 < len(prog) < 64
        assert all(0 <= jt < 256 and 0 <= jf < 256 for _, jt, jf, _ in prog)


def test_a_proxy_file_that_holds_no_url_is_not_shown(tmp_path, monkeypatch):
    """--proxy-file is read as root: pointed at another root-only file, the
    refusal must not show what that file says."""
    f = tmp_path / "key"
    f.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXk\n")
    os.chmod(f, 0o600)
    monkeypatch.setattr(proxyspec, "read_url_file",
                        lambda path, detail=True: f.read_text().splitlines()[0])
    a = execcmd.parse(["--proxy-file", str(f), "true"], is_interface=lambda n: False)
    with pytest.raises(NetleakError) as e:
        execcmd._proxy_url(a)
    assert "BEGIN" not in e.value.message and "no proxy URL" in e.value.message


@pytest.mark.parametrize("machine,arch,nr,args,want", [
    ("x86_64", X86_64, 16, (0, 0x5412), confine.RET_ERRNO | confine.EPERM),     # TIOCSTI
    ("x86_64", X86_64, 16, (0, 0x541C), confine.RET_ERRNO | confine.EPERM),     # TIOCLINUX
    ("x86_64", X86_64, 16, (0, 0x5401), ALLOW),                                 # TCGETS
    ("x86_64", I386, 54, (0, 0x5412), confine.RET_ERRNO | confine.EPERM),
    ("aarch64", AARCH64, 29, (0, 0x5412), confine.RET_ERRNO | confine.EPERM),
    ("x86_64", X86_64, 426, (), NOSYS),                                          # io_uring_enter
    ("x86_64", X86_64, 427, (), NOSYS),
    ("x86_64", I386, 366, (3, 41, 78), confine.RET_ERRNO | confine.EPERM),      # IPV6_FREEBIND
    ("x86_64", I386, 366, (3, 0, 19), confine.RET_ERRNO | confine.EPERM),       # IP_TRANSPARENT
    ("x86_64", I386, 366, (3, 0, 1), ALLOW),                                    # IP_TOS
    ("x86_64", I386, 366, (3, 1, 15), ALLOW),                                   # SOL_SOCKET 15
    ("x86_64", I386, 102, (14,), confine.RET_ERRNO | confine.EPERM),            # socketcall setsockopt
    ("x86_64", X86_64, 54, (3, 41, 78), ALLOW),     # native: the cgroup program refuses it
    ("aarch64", ARM, 294, (3, 0, 15), confine.RET_ERRNO | confine.EPERM),
])
def test_family_filter_closes_the_other_ways_around(machine, arch, nr, args, want):
    prog = confine.family_filter(machine)
    assert confine.run_filter(prog, arch, nr, args) == want


@pytest.mark.parametrize("mode,owner,group,uid,gids,want", [
    (0o660, 0, 999, 1000, [1000, 999], True),       # docker.sock, user in group docker
    (0o660, 0, 999, 1000, [1000], False),
    (0o600, 1000, 1000, 1000, [1000], True),
    (0o644, 1000, 1000, 1001, [1000], False),
    (0o666, 0, 0, 65534, [65534], True),
])
def test_writable_by(mode, owner, group, uid, gids, want):
    assert confine.writable_by(mode, owner, group, uid, gids) is want


def test_user_reach_names_login_sessions_and_service_sockets(tmp_path):
    (tmp_path / "run" / "1000").mkdir(parents=True)
    sock = tmp_path / "docker.sock"
    sock.write_text("")
    os.chmod(sock, 0o660)
    os.chown(sock, 0, 4242) if os.geteuid() == 0 else None
    got = confine.user_reach("alice", 1000, [1000, 4242], run_user=str(tmp_path / "run"),
                             sockets=(str(sock), str(tmp_path / "none")))
    assert any("login session" in w for w in got)
    if os.geteuid() == 0:
        assert any(str(sock) in w for w in got)
    assert confine.user_reach("bob", 1001, [1001], run_user=str(tmp_path / "run"),
                              sockets=()) == []


def test_through_sudo_a_proxy_file_refusal_says_nothing_of_the_file(tmp_path):
    f = tmp_path / "secret"
    f.write_text("x" * 5000)
    os.chmod(f, 0o644)
    msgs = set()
    for path in (f, tmp_path / "none"):
        with pytest.raises(NetleakError) as e:
            proxyspec.read_url_file(str(path), detail=False)
        msgs.add(e.value.message.replace(str(path), "F"))
    assert len(msgs) == 1, msgs
