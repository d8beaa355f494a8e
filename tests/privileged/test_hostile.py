"""A hostile workload (as nobody, or as root where that is the threat) and
hostile neighbours, each attempt made for real in the lab and counted on
the path a leak would take, with a positive control that shows the same
attempt leaving without netleak.

- Forged sources: a socket with a source address that is not this
  machine's sends to loopback; whatever answers (the kernel's ICMP errors
  and resets, a local listener, netleak's DNS answerer) would answer that
  address by the main table, out of the default uplink.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import EXEC, Held
from tests.privileged.probes import COMPAT, FAMILIES, MPTCP, SPOOF, TAKE_OVER, VICTIM
from tests.privileged.test_proxy import PEER, PORT, PROXY4, Proxy, proxy_lab  # noqa: F401

pytestmark = pytest.mark.privileged

S4, S6 = labmod.SERVER4, labmod.SERVER6
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
PY = "/usr/bin/python3"
ECHO_PORT = 7007
RELAY_PORT = 1021     # NETLEAK_RELAY_PORT's default

# a local service outside any session: answers each datagram to its source
# (on loopback at PORT, and on every address at PORT + 1, so that it hears
# the local copy of a multicast datagram too, as mDNS or SSDP listeners do)
ECHO = r"""
import select, socket, sys
port = int(sys.argv[1])
socks = []
for fam, host, p in ((socket.AF_INET, "127.0.0.1", port), (socket.AF_INET6, "::1", port),
                     (socket.AF_INET6, "::", port + 1)):
    s = socket.socket(fam, socket.SOCK_DGRAM)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind((host, p)); socks.append(s)
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, peer = s.recvfrom(2048)
        try:
            s.sendto(data, peer)
        except OSError:
            pass
"""


def events(world) -> list[dict]:
    r = world.cli("events", "--json")
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def _hostile_lab(world) -> None:
    """Ping sockets for everyone (as many distributions allow), and a local
    echo service outside the session."""
    world.lab.sysctl(world.lab.host, "net.ipv4.ping_group_range", "0 2147483647")
    p = world.lab.spawn([sys.executable, "-c", ECHO, str(ECHO_PORT)], stdout=subprocess.PIPE,
                        text=True)
    assert p.stdout.readline().strip() == "ready"


def _nonlocal_bind(world, on: bool) -> None:
    for fam in ("ipv4", "ipv6"):
        world.lab.sysctl(world.lab.host, f"net.{fam}.ip_nonlocal_bind", "1" if on else "0")


OWN4, OWN6 = labmod.LINKS["up0"][0].split("/")[0], labmod.LINKS["up0"][2].split("/")[0]
# where the forged packets go: loopback, the host's own addresses, a local
# listener; UDP, TCP, ping sockets and DNS; IPv4, IPv6, v4-mapped
CASES = [f"{kind}{tag}={kind},{host},{port}"
         for tag, host in (("4", "127.0.0.1"), ("6", "::1"), ("4-mapped", "::ffff:127.0.0.1"),
                           ("4-own", OWN4), ("6-own", OWN6), ("4-own-mapped", f"::ffff:{OWN4}"))
         for kind, port in (("udp", 9), ("tcp", 9), ("ping", 0), ("dns", 53))] + \
    [f"echo4=udp,127.0.0.1,{ECHO_PORT}", f"echo6=udp,::1,{ECHO_PORT}",
     f"mcast6=udp,ff02::1%vpn0,{ECHO_PORT + 1}"]


def _attempt(world, how: str, session: list[str] | None) -> tuple[int, dict[str, str]]:
    """The attack HOW in SESSION (netleak-exec's options; None: outside
    netleak), as nobody (as root for IP_TRANSPARENT); the packets seen on
    up0 to or from the forged sources, and each case's outcome."""
    _nonlocal_bind(world, how == "plain")
    cases = list(CASES)
    if session and "--proxy" in session:     # the relay's own DNS answerer, directly
        cases += [f"relay4=dns,127.0.0.1,{RELAY_PORT}", f"relay6=dns,::1,{RELAY_PORT}"]
    probe = [PY, "-c", SPOOF, S4, S6, how, *cases]
    try:
        with world.lab.capture("up0") as cap:
            if session is None:
                r = world.lab.run((NOBODY if how != "transparent" else []) + probe)
            else:
                user = ["-u", "nobody"] if how != "transparent" else []
                r = world.netleak(*user, *session, *probe)
            leaked = cap.stop()
    finally:
        _nonlocal_bind(world, False)
    assert r.returncode == 0, r.stderr
    out = dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    assert len(out) == len(cases), r.stdout
    return leaked, out


def test_forged_sources_leave_without_netleak(world):
    """Positive control: each way of forging a source makes answers leave by
    up0 when netleak is not there (IPv6 as nobody; IPv4 and v4-mapped too
    as root with IP_TRANSPARENT)."""
    _hostile_lab(world)
    for how in ("freebind", "plain", "transparent"):
        leaked, out = _attempt(world, how, None)
        assert leaked >= 10, (how, out)
        assert out["udp6"].startswith("sent"), out
    with world.lab.capture("up0", flt=f"icmp and host {S4}") as cap:
        _, out = _attempt(world, "transparent", None)
        assert cap.stop() >= 10, out        # the IPv4 kernel errors, to the forged source
    assert out["udp4-own"].startswith("sent"), out


@pytest.mark.parametrize("mode", ["vpn0", "--block", "--proxy"])
def test_forged_sources_leave_nothing(world, mode):
    """In every mode: the options that forge a source are refused, and what
    carries one all the same (ip_nonlocal_bind) is dropped, on loopback and
    on the interface (where a multicast datagram's local copy would reach a
    listener outside the session)."""
    _hostile_lab(world)
    session = {"vpn0": ["vpn0"], "--block": ["--block"],
               "--proxy": ["--proxy", "socks5h://203.0.113.20:1080"]}[mode]
    for how in ("freebind", "transparent"):
        leaked, out = _attempt(world, how, session)
        assert leaked == 0, (how, out)
        assert all(v == "refused setsockopt: Operation not permitted" for v in out.values()), out
    leaked, out = _attempt(world, "plain", session)
    assert leaked == 0, out
    # nothing refused these: the kernel took the source, the egress program dropped
    assert out["tcp6"].startswith("sent") and out["ping6"].startswith("sent"), out
    seen = {(e["reason"], e["hook"]) for e in events(world)}
    assert {("source", "setsockopt"), ("source", "egress")} <= seen, seen
    world.control()


def _packet(src: str, dst: str, proto: int = 17) -> bytes:
    """Ethernet, IP (v4 or v6) and a UDP header, as BPF_PROG_TEST_RUN takes it."""
    import ipaddress
    import struct
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    udp = struct.pack("!HHHH", 40000, 9, 16, 0) + b"x" * 8
    if s.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, proto, 0,
                         s.packed, d.packed)
        return b"\0" * 12 + b"\x08\x00" + ip + udp
    ip = struct.pack("!IHBB16s16s", 6 << 28, len(udp), proto, 64, s.packed, d.packed)
    return b"\0" * 12 + b"\x86\xdd" + ip + udp


def test_egress_program_verdicts_on_sources(test_pins):
    """The egress program itself, run by the kernel on crafted packets
    (BPF_PROG_TEST_RUN): a packet must come from a loopback address, one of
    the namespace's own (the map `locals`), or on loopback the very address
    it goes to; any other source is dropped, by the interface too (where a
    multicast or broadcast copy would loop back) and for IPv4 as well (which
    only root could forge, and netleak refuses root the options)."""
    import struct
    from netleak_hook.kernel import bpfsys, cgroupfs, programs
    from netleak_hook.core.policy import Policy, local_key, pack_key
    programs.ensure_bpffs(test_pins)
    pins = programs.ensure_pinned(test_pins)
    path = cgroupfs.abspath(cgroupfs.find_cgroup2(), f"netleak-test-verdicts-{os.getpid()}")
    cgroupfs.make(path)
    maps = programs.Maps(pins)
    key = pack_key(cgroupfs.cgroup_id(path))
    netns = 2**60 + os.getpid()         # a namespace of the test's own, in the map only
    own = [local_key(netns, a) for a in (OWN4, OWN6, "198.51.100.2")]
    prog = bpfsys.obj_get(pins.pin("prog_egress"))
    LO, DEV = 1, 2
    cases = {  # (source, destination, output device): passes
        (OWN4, OWN4, LO): 1, ("127.0.0.1", "127.0.0.1", LO): 1, ("127.0.0.1", OWN4, LO): 1,
        (S4, "127.0.0.1", LO): 0, (S4, OWN4, LO): 0, ("::1", "::1", LO): 1,
        (OWN6, OWN6, LO): 1, (S6, "::1", LO): 0, (S6, OWN6, LO): 0,
        ("198.51.100.2", OWN4, LO): 1,                  # both this machine's
        (S4, S4, LO): 0,                                # the same, but not this machine's
        ("198.51.100.2", S4, DEV): 1, (OWN6, S6, DEV): 1,
        (S4, "198.51.100.63", DEV): 0,                  # a forged broadcast
        (S6, "ff02::1", DEV): 0,                        # a forged multicast
        ("203.0.113.99", S4, DEV): 0,
    }
    try:
        bpfsys.map_update(maps.policy, key, Policy(ifindex=DEV, mark=0, killed=False,
                                                    netns=netns).pack())
        for k in own:
            bpfsys.map_update(maps.locals, k, (DEV).to_bytes(4, "little"))
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:        # the packet's socket is the caller's: inside the cgroup
            try:
                cgroupfs.join(path)
                got = [bpfsys.prog_test_run(prog, _packet(s, d),
                                            struct.pack("<11I", *([0] * 10 + [dev])), 1)[0]
                       for s, d, dev in cases]
                os.write(w, bytes(got))
            finally:
                os._exit(0)
        os.close(w)
        with os.fdopen(r, "rb") as f:
            got = f.read()
        os.waitpid(pid, 0)
        assert dict(zip(cases, got)) == cases
    finally:
        for k in own:
            bpfsys.map_delete(maps.locals, k)
        bpfsys.map_delete(maps.policy, key)
        bpfsys.map_delete(maps.stats, key)
        maps.close()
        os.close(prog)
        cgroupfs.remove_tree(path)


# ---------- the run directory, the daemon's socket, links ----------

FAKE_DAEMON = r"""
import json, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(8)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    data = c.recv(65536)
    print("asked", len(data), flush=True)
    c.sendall(json.dumps({"ok": True, "id": "f00d", "block": True, "dns": [], "allow": [],
                          "proxy": None, "killed": False}).encode() + b"\n")
    c.close()
"""


def _refused(r, *words: str) -> None:
    """One line on stderr saying WORDS, exit 125."""
    assert r.returncode == 125, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and all(w in lines[0] for w in words), r.stderr


def _untrusted_dirs(base: str) -> dict[str, str]:
    """Run directories netleak must refuse, made under BASE (root's)."""
    import os
    made = {}
    d = os.path.join(base, "users"); os.mkdir(d, 0o700); os.chown(d, 65534, 65534)
    made["another user's"] = d
    d = os.path.join(base, "open"); os.mkdir(d); os.chmod(d, 0o777)
    made["writable by others"] = d
    p = os.path.join(base, "open-parent"); os.mkdir(p); os.chmod(p, 0o777)
    d = os.path.join(p, "run"); os.mkdir(d, 0o700)
    made["under a parent others may write"] = d
    good = os.path.join(base, "good"); os.mkdir(good, 0o700)
    d = os.path.join(base, "link"); os.symlink(good, d)
    made["a link"] = d
    return made


def test_run_directory_others_may_write_is_refused(world, tmp_path):
    import os
    base = tmp_path / "dirs"
    base.mkdir(mode=0o755)
    marker = tmp_path / "ran"
    for what, d in _untrusted_dirs(str(base)).items():
        env = dict(world.env, NETLEAK_RUN_DIR=d)
        r = world.lab.run(EXEC + ["--block", "touch", str(marker)], env=env)
        _refused(r, "run directory")
        assert not marker.exists(), what
        assert world.cgroups() == [], what
        real = os.path.realpath(d)
        assert os.listdir(real) == [], (what, os.listdir(real))    # nothing written there
        r = world.cli("status", env=env)
        _refused(r, "run directory")
    # control: the world's own run directory (root's, 0700, under the sticky /tmp) works
    r = world.netleak("--block", "touch", str(marker))
    assert r.returncode == 0, r.stderr
    assert marker.exists()


@pytest.mark.parametrize("owner", ["nobody", "root"])
def test_a_daemon_that_is_not_root_is_not_believed(world, tmp_path, owner):
    """Another user's fake daemon in place of the real one: netleak-exec
    refuses it before telling it anything, and the command never runs. The
    control: the same fake run by root is believed (what the check stops)."""
    import os
    from netleak_hook.kernel import cgroupfs
    own = tempfile_dir(tmp_path, "fake", 65534 if owner == "nobody" else 0)
    sock = os.path.join(own, "sock")
    run = ([] if owner == "root" else NOBODY) + [PY, "-c", FAKE_DAEMON, sock]
    fake = world.lab.spawn(run, stdout=subprocess.PIPE, text=True)
    assert fake.stdout.readline().strip() == "ready"
    os.makedirs(world.run_dir, exist_ok=True)
    os.rename(sock, os.path.join(world.run_dir, "daemon.sock"))  # as if it got there
    marker = tmp_path / "ran"
    try:
        r = world.lab.run(EXEC + ["--block", "touch", str(marker)], env=world.env)
        if owner == "nobody":
            _refused(r, "uid 65534", "not as root")
            assert not marker.exists()
        else:
            assert r.returncode == 0 and marker.exists(), r.stderr
            assert fake.stdout.readline().startswith("asked")
    finally:
        fake.kill()
        fake.wait()
        os.unlink(os.path.join(world.run_dir, "daemon.sock"))
        os.rmdir(own)
        parent = world.parent_path()    # what netleak-exec made for the fake session
        cgroupfs.remove_tree(parent)
    if owner == "nobody":     # it was connected to, and told nothing
        heard = fake.stdout.read().split()
        assert heard and all(n == "0" for n in heard[1::2]), heard


def tempfile_dir(tmp_path, name: str, uid: int) -> str:
    """A directory of UID's that UID can reach (pytest's own are root's)."""
    import os
    import tempfile
    d = tempfile.mkdtemp(prefix=f"netleak-test-{name}-", dir="/tmp")
    os.chown(d, uid, uid)
    (tmp_path / f"{name}.dir").write_text(d)
    return d


@pytest.mark.parametrize("name", ["daemon.log", "state.json", "events.jsonl", "hook.log"])
def test_nothing_is_written_through_a_link(world, tmp_path, name):
    """A link in the run directory in place of one of netleak's files: root
    never writes (nor reads) through it. The control: without the link, the
    same run writes that file."""
    import os
    target = tmp_path / "precious"
    target.write_text("precious\n")
    os.chmod(target, 0o600)
    os.makedirs(world.run_dir, exist_ok=True)
    link = os.path.join(world.run_dir, name)
    state = json.dumps({"ociVersion": "1.0.0", "id": "c0ffee", "status": "stopped",
                        "pid": 0, "bundle": "/x",
                        "annotations": {"io.netleak.interface": "vpn0"}})
    connect = [PY, "-c", "import socket\ntry: socket.create_connection(('203.0.113.10', 80), 1)"
               "\nexcept OSError: pass"]

    def attempt():
        if name == "hook.log":      # the hook's poststop: nothing to do but log
            return subprocess.run([sys.executable, "-m", "netleak_hook.hook", "poststop"],
                                  input=state, env=world.env, capture_output=True, text=True,
                                  timeout=30)
        return world.netleak("--block", *connect)

    os.symlink(target, link)
    try:
        r = attempt()
        if name in ("daemon.log", "state.json"):
            _refused(r, "symbolic link")
        elif name == "events.jsonl":    # the daemon runs; the event it records is refused
            assert r.returncode == 0, r.stderr
            assert wait_until(lambda: "symbolic link" in _read(world.run_dir, "daemon.log"))
        assert target.read_text() == "precious\n"
        assert os.stat(target).st_mode & 0o777 == 0o600
    finally:
        os.unlink(link)
    r = attempt()
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: os.path.isfile(link) and os.path.getsize(link) > 0), name


def _read(run_dir: str, name: str) -> str:
    import os
    try:
        with open(os.path.join(run_dir, name)) as f:
            return f.read()
    except FileNotFoundError:
        return ""


def test_another_users_pin_folder_is_refused(world):
    import os
    from netleak_hook.kernel import programs
    evil = f"/sys/fs/bpf/netleak-test-evil-{os.getpid()}"
    os.mkdir(evil, 0o700)
    os.chown(evil, 65534, 65534)
    good = f"/sys/fs/bpf/netleak-test-evil2-{os.getpid()}"
    os.mkdir(good, 0o700)
    inner = os.path.join(good, programs.pinset_name())
    os.mkdir(inner, 0o700)
    os.chown(inner, 65534, 65534)
    try:
        for d in (evil, good):
            r = world.lab.run(EXEC + ["--block", "true"], env=dict(world.env, NETLEAK_BPF_DIR=d))
            _refused(r, "pin folder", "uid 65534")
            assert world.cgroups() == []
    finally:
        os.rmdir(inner)
        os.rmdir(good)
        os.rmdir(evil)


# ---------- sockets from outside the session ----------

# opens a UDP socket to the server (outside any session: the caller's), puts
# it at fd 7 as a shell or service manager passes one on, then execs ARGV[2:]
HAND_DOWN = r"""
import os, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], 8080))
os.dup2(s.fileno(), 7)
os.set_inheritable(7, True)
os.execv(sys.argv[2], sys.argv[2:])
"""
USE_FD7 = r"""
import socket
try:
    s = socket.socket(fileno=7)
    for _ in range(5):
        s.send(b"through an inherited socket")
    print("sent", flush=True)
except OSError as e:
    print("refused", e.strerror, flush=True)
"""


@pytest.mark.parametrize("mode", ["--block", "vpn0"])
def test_inherited_sockets_are_closed(world, mode):
    """A socket the caller opened belongs to the caller's cgroup: nothing of
    the session sees it. netleak-exec closes it (above fd 2) before COMMAND
    runs; the control, --keep-fds, shows what got out through it."""
    for keep, expect in (([], "refused Bad file descriptor"), (["--keep-fds"], "sent")):
        with world.lab.capture("up0") as cap:
            r = world.lab.run([sys.executable, "-c", HAND_DOWN, S4, *EXEC, *keep, "-u", "nobody",
                               mode, PY, "-c", USE_FD7], env=world.env)
            leaked = cap.stop()
        assert r.returncode == 0, r.stderr
        assert r.stdout.strip() == expect, (keep, r.stdout, r.stderr)
        assert (leaked == 0) if not keep else (leaked >= 5), (keep, leaked)


# ---------- proxy passwords ----------

# as nobody: every command line and environment it can read (but its own),
# searched for the line it reads first, until the file ARGV[1] exists;
# prints what it found
SCAN = r"""
import os, sys, time
secret, stop = sys.stdin.readline().strip().encode(), sys.argv[1]
seen, rounds, me = set(), 0, str(os.getpid())
print("ready", flush=True)
while not os.path.exists(stop) or rounds < 3:
    rounds += 1
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if pid == me:
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if secret in f.read():
                        seen.add(f"{pid}:{what}")
            except OSError:
                pass
    time.sleep(0.005)
print(rounds, *sorted(seen), flush=True)
"""
SECRET = "s3cret-Pw0rd"


def _scan(world, tmp_path, run):
    """What nobody reads of SECRET while RUN() runs."""
    import os
    stop = tempfile_dir(tmp_path, "scan", 65534) + "/stop"
    scanner = world.lab.spawn(NOBODY + [PY, "-c", SCAN, stop], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        scanner.stdin.write(SECRET + "\n")
        scanner.stdin.close()
        assert scanner.stdout.readline().strip() == "ready"
        result = run()
    finally:
        open(stop, "w").close()
        found = scanner.stdout.readline().split()
        scanner.wait()
        os.unlink(stop)
        os.rmdir(os.path.dirname(stop))
    assert int(found[0]) >= 3, found       # it did look, while RUN ran
    return result, found[1:]


def test_proxy_password_stays_out_of_sight(proxy_lab, tmp_path):
    """Given in a root-only file, or in NETLEAK_PROXY_PASSWORD, the proxy's
    password is in no command line or environment another user (nobody,
    as the workload runs) can read, and it works. The control: nobody does
    read it on a root process's command line."""
    import os
    world = lab = proxy_lab
    lab = world.lab
    Proxy(world, "socks5", "--user", "alice", "--password", "env:PROXYD_PASSWORD",
          env=dict(os.environ, PROXYD_PASSWORD=SECRET))
    peer = [PY, "-c", PEER, S4, str(labmod.PORT)]
    # control: the scanner sees a command line with the secret on it
    shown = lab.spawn(["sh", "-c", "sleep 30", f"socks5://alice:{SECRET}@{PROXY4}:{PORT}"])
    _, found = _scan(world, tmp_path, lambda: None)
    shown.kill()
    shown.wait()
    assert any(f.endswith(":cmdline") for f in found), found
    f = tmp_path / "proxy"
    f.write_text(f"# the lab's proxy\nsocks5://alice:{SECRET}@{PROXY4}:{PORT}\n")
    os.chmod(f, 0o600)
    r, found = _scan(world, tmp_path, lambda: world.netleak(
        "-u", "nobody", "--proxy-file", str(f), *peer))
    assert r.returncode == 0 and r.stdout.split() == ["ok", PROXY4, S4], r.stderr
    assert found == [] and r.stderr == "", (found, r.stderr)
    env = dict(world.env, NETLEAK_PROXY_PASSWORD=SECRET)
    show_env = [PY, "-c", "import os, subprocess, sys; print(os.environ.get("
                "'NETLEAK_PROXY_PASSWORD', 'unset')); sys.stdout.flush(); "
                "os.execv(sys.argv[1], sys.argv[1:])", *peer]
    r, found = _scan(world, tmp_path, lambda: world.lab.run(
        EXEC + ["-u", "nobody", "--proxy", f"socks5://alice@{PROXY4}:{PORT}", *show_env],
        env=env))
    assert r.returncode == 0 and r.stdout.split() == ["unset", "ok", PROXY4, S4], r.stderr
    assert found == [], found
    # on the command line: it works, and says once where else to put it
    r = world.netleak("--proxy", f"socks5://alice:{SECRET}@{PROXY4}:{PORT}", *peer)
    assert r.returncode == 0 and r.stdout.split()[0] == "ok", r.stderr
    assert r.stderr.count("warning") == 1 and "--proxy-file" in r.stderr, r.stderr
    assert SECRET not in r.stderr
    # a file others may read is refused, and nothing is left
    os.chmod(f, 0o644)
    r = world.netleak("--proxy-file", str(f), *peer)
    _refused(r, "--proxy-file", "chmod 600")
    assert world.cgroups() == []


# ---------- attach inside a subtree a user may rearrange ----------

# as nobody, in cgroup ARGV[1]: waits for a line on stdin, then moves itself
# into ARGV[2] (a cgroup above it), and connects to the server
ESCAPE_CGROUP = r"""
import socket, sys
sys.stdin.readline()
try:
    with open(sys.argv[2] + "/cgroup.procs", "w") as f:
        f.write("0")
    print("moved", flush=True)
except OSError as e:
    print("stayed", e.strerror, flush=True)
try:
    s = socket.create_connection((sys.argv[3], 8080), timeout=2)
    print("ok", s.recv(100).decode().strip(), flush=True)
except OSError as e:
    print("refused", e.strerror, flush=True)
"""


def test_attach_inside_a_delegated_subtree(world):
    """A user's delegated subtree (as systemd gives user@UID.service): its
    processes may move between its cgroups. Attaching one inside it is
    refused (the control shows such a process does move out, and then
    reaches the server by up0); attaching the subtree's top is what holds."""
    import os
    from netleak_hook.kernel import cgroupfs
    root = cgroupfs.find_cgroup2()
    top = f"{world.parent}-user"
    inner = f"{top}/app/job"
    for rel in (top, f"{top}/app", inner):
        path = cgroupfs.abspath(root, rel)
        os.makedirs(path, exist_ok=True)
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):
            os.chown(os.path.join(path, name), 65534, 65534)

    def job():
        join = f'echo $$ > {cgroupfs.abspath(root, inner)}/cgroup.procs && exec "$@"'
        p = world.lab.spawn(["sh", "-c", join, "sh", *NOBODY, PY, "-c", ESCAPE_CGROUP,
                             cgroupfs.abspath(root, inner), cgroupfs.abspath(root, top), S4],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert wait_until(lambda: cgroupfs.procs(cgroupfs.abspath(root, inner)))
        return p

    # refused, one line, nothing made
    p = job()
    r = world.cli("attach", "vpn0", "--cgroup", f"/{inner}")
    _refused(r, f"attach /{top} instead", "uid 65534")
    assert world.sessions() == 0
    # the control: that process can leave for the top, and then goes by up0
    with world.lab.capture("up0") as cap:
        out, _ = p.communicate("go\n", timeout=30)
        assert cap.stop() > 0
    assert out.split()[:3] == ["moved", "ok", "192.0.2.2"], out
    # the top attached: the same process stays in it, and goes by vpn0 only
    p = job()
    r = world.cli("attach", "vpn0", "--cgroup", f"/{top}")
    assert r.returncode == 0, r.stderr
    with world.lab.capture("up0") as cap:
        out, _ = p.communicate("go\n", timeout=30)
        leaked = cap.stop()
    assert leaked == 0
    assert out.split()[0] == "moved" and "ok 198.51.100.2" in out, out   # moved within the top
    world.control()     # the session ends with its process: the reaper removes it


def test_a_workload_naming_itself_with_escapes_reaches_no_terminal(world):
    """The process name (16 bytes the workload sets itself) with terminal
    control sequences: `netleak events` shows them escaped; the JSON, the
    control, carries them as they came."""
    name = "\x1b]0;pwned\x07\x1b[2J"
    probe = (f"open('/proc/self/comm', 'w').write({name!r})\n"
             "import socket\ntry: socket.create_connection(('203.0.113.10', 80), 1)\n"
             "except OSError: pass")
    r = world.netleak("-u", "nobody", "--block", PY, "-c", probe)
    assert r.returncode == 0, r.stderr
    assert wait_until(lambda: any(e.get("comm") == name for e in events(world)))
    r = world.cli("events")
    assert r.returncode == 0 and "\x1b" not in r.stdout and "\x07" not in r.stdout
    assert "\\x1b]0;pwn" in r.stdout, r.stdout      # escaped, and cut to its column




def test_mptcp_is_refused_at_once_and_tcp_still_works(world):
    """MPTCP's subflows are the kernel's sockets, never marked: instead of
    timing out, an MPTCP socket is refused at once (programs fall back to
    TCP). The control: outside netleak, MPTCP works."""
    r = world.lab.run(NOBODY + [PY, "-c", MPTCP, S4])
    assert r.stdout.splitlines() == ["mptcp 192.0.2.2", "tcp 192.0.2.2"], r.stdout + r.stderr
    with world.lab.capture("up0") as cap:
        r = world.netleak("-u", "nobody", "vpn0", PY, "-c", MPTCP, S4)
        assert cap.stop() == 0
    assert r.stdout.splitlines() == ["mptcp refused Operation not permitted",
                                     "tcp 198.51.100.2"], r.stdout + r.stderr
    assert wait_until(lambda: any(e["reason"] == "mptcp" for e in events(world)))


def test_user_given_twice_is_refused(world, tmp_path):
    marker = tmp_path / "ran"
    r = world.netleak("-u", "nobody", "-u", "root", "vpn0", "touch", str(marker))
    _refused(r, "-u given twice")
    assert not marker.exists() and world.cgroups() == [] and world.sessions() == 0


# ---------- other socket families ----------



def test_other_socket_families_are_refused(world):
    """AF_VSOCK (this machine is a VM: it reaches the host), AF_PACKET and
    AF_XDP pass no program of the session: refused in it, as root too; so is
    io_uring, which makes sockets without socket(2). The control: outside
    netleak the same sockets (and an io_uring) are made, and never used."""
    def made(r):
        assert r.returncode == 0, r.stderr
        return dict(ln.split(" ", 1) for ln in r.stdout.splitlines())
    outside = made(world.lab.run([PY, "-c", FAMILIES]))
    assert outside["vsock"] == "made" and outside["packet"] == "made", outside
    assert outside["io_uring"] == "made", outside
    inside = made(world.netleak("vpn0", PY, "-c", FAMILIES))
    assert inside == {"vsock": "refused Address family not supported by protocol",
                      "packet": "refused Address family not supported by protocol",
                      "xdp": "refused Address family not supported by protocol",
                      "inet": "made", "inet6": "made", "unix": "made", "netlink": "made",
                      "io_uring": "refused Function not implemented"}, inside
    assert made(world.netleak("-u", "nobody", "--block", PY, "-c", FAMILIES))["vsock"] == \
        "refused Address family not supported by protocol"


# ---------- same-user take-over ----------



def test_a_workload_cannot_take_over_its_users_other_processes(world):
    """As nobody, in a session: another nobody process outside it holds a
    socket. Taking that socket (pidfd_getfd), writing its memory, tracing
    it: all refused (a Landlock domain of the session's own), nothing by
    up0. The control: the same attempt from outside the session takes the
    socket and sends by up0."""
    victim = world.lab.spawn(NOBODY + [PY, "-c", VICTIM, S4], stdout=subprocess.PIPE, text=True)
    assert victim.stdout.readline().strip() == "ready"
    attempt = [PY, "-c", TAKE_OVER, str(victim.pid)]
    try:
        with world.lab.capture("up0") as cap:
            r = world.lab.run(NOBODY + attempt)
            assert cap.stop() >= 5
        assert r.stdout.split("\n")[:3] == ["getfd sent", "mem opened", "ptrace attached"], \
            r.stdout + r.stderr
        with world.lab.capture("up0") as cap:
            r = world.netleak("-u", "nobody", "vpn0", *attempt)
            assert cap.stop() == 0
        assert r.returncode == 0, r.stderr
        assert r.stdout.splitlines() == ["getfd refused Operation not permitted",
                                         "mem refused Permission denied",
                                         "ptrace refused Operation not permitted"], r.stdout
    finally:
        victim.kill()
        victim.wait()


# ---------- stand-in names: each session's own ----------

# resolve ARGV[1] (the session's DNS goes to netleak's answerer), print the
# address, wait for a line, then connect to it on port ARGV[2]
RESOLVE_HOLD = r"""
import socket, sys
addr = socket.getaddrinfo(sys.argv[1], 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
print(addr, flush=True)
sys.stdin.readline()
try:
    s = socket.create_connection((addr, int(sys.argv[2])), timeout=5)
    print("ok", s.recv(100).decode().strip(), flush=True)
except OSError as e:
    print("refused", e.strerror or e, flush=True)
"""
# one DNS query for ARGV[1] to each HOST:PORT of ARGV[2:]: what came back
ASK = r"""
import socket, sys
q = (b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" +
     b"".join(bytes([len(x)]) + x.encode() for x in sys.argv[1].split(".")) + b"\0\0\x01\0\x01")
for target in sys.argv[2:]:
    host, port = target.rsplit(":", 1)
    host = host.strip("[]")
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    s.sendto(q, (host, int(port)))
    try:
        a = s.recv(512)
        print(target, "answered", socket.inet_ntoa(a[-4:]) if len(a) > len(q) else "empty",
              flush=True)
    except socket.timeout:
        print(target, "silent", flush=True)
"""


def test_stand_in_names_are_each_sessions_own(proxy_lab):
    """Session A looks a name up and gets a stand-in address. Another local
    user asking the relay's answerer directly gets no answer at all (no
    oracle of what was looked up); session B connecting to A's address gets
    a reset, and B's proxy is never asked for A's name; A's own connection
    goes through by name. The control: B's own query is answered."""
    from tests.privileged.test_proxy import NAME
    w = proxy_lab
    proxy = Proxy(w, "socks5")
    url = f"socks5h://{PROXY4}:{PORT}"
    a = w.lab.spawn(EXEC + ["--proxy", url, PY, "-c", RESOLVE_HOLD, NAME, str(labmod.PORT)],
                    env=w.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        addr = a.stdout.readline().strip()
        assert addr.startswith("198.1"), addr
        relay_ends = [f"127.0.0.1:{RELAY_PORT}", f"[::1]:{RELAY_PORT}"]
        r = w.lab.run(NOBODY + [PY, "-c", ASK, NAME, *relay_ends])
        assert r.stdout.split("\n")[:2] == [f"{t} silent" for t in relay_ends], r.stdout
        r = w.netleak("-u", "nobody", "--proxy", url, PY, "-c", ASK, NAME, "192.0.2.53:53")
        assert r.stdout.startswith("192.0.2.53:53 answered 198.1"), r.stdout + r.stderr
        asked = len(proxy.asked())
        r = w.netleak("-u", "nobody", "--proxy", url, PY, "-c", PEER, addr, str(labmod.PORT))
        assert r.stdout.split()[0] == "refused", r.stdout
        assert len(proxy.asked()) == asked        # B's proxy never heard of A's name
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.stdout.readline().split() == ["ok", PROXY4]
        assert proxy.asked()[-1] == f"{NAME} {labmod.PORT} ok"
    finally:
        a.kill()
        a.wait()
    assert any(e["reason"] == "proxy-failed" and addr in (e.get("detail") or "")
               for e in events(w))


# a DNS socket held across ARGV[1]'s signal: query before and after; what
# each reply says its source is
HOLD_DNS = r"""
import socket, sys
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04held\x04test\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(3)
s.connect(("192.0.2.53", 53))
for round in ("before", "after"):
    s.send(q)
    data, src = s.recvfrom(512)
    print(round, src[0], src[1], len(data) > len(q), flush=True)
    if round == "before":
        sys.stdin.readline()
"""
# as many DNS sockets held at once as it may, then a churn of many more
FLOOD = r"""
import resource, socket, sys
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 20000), hard))
held, refused = [], 0
for _ in range(int(sys.argv[1])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.53", 53))
        held.append(s)
    except PermissionError:
        refused += 1
        s.close()
print("held", len(held), "refused", refused, flush=True)
sys.stdin.readline()
for s in held:
    s.close()
for _ in range(int(sys.argv[2])):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect(("192.0.2.53", 53))
    s.close()
print("churned", flush=True)
"""


def _redirects() -> int:
    from tests.privileged.test_proxy import proxied_entries
    return proxied_entries()


def test_one_workload_cannot_crowd_out_anothers_redirects(proxy_lab):
    """Session B holds as many redirected sockets as it may (8,192: the rest
    are refused, with a 'limit' event), then churns 70,000 more; session A's
    DNS socket keeps its record all along, so its answers still show the
    address it asked (an evicted record shows the relay's). The control is
    the attempt itself: B's records are in the map while it holds them, and
    gone once it closes them."""
    w = proxy_lab
    Proxy(w, "socks5")
    url = f"socks5h://{PROXY4}:{PORT}"
    base = _redirects()
    a = w.lab.spawn(EXEC + ["--proxy", url, PY, "-c", HOLD_DNS], env=w.env,
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    b = w.lab.spawn(EXEC + ["-u", "nobody", "--proxy", url, PY, "-c", FLOOD, "9000", "70000"],
                    env=w.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert a.stdout.readline().split() == ["before", "192.0.2.53", "53", "True"]
        assert b.stdout.readline().split() == ["held", "8192", "refused", "808"]
        assert _redirects() == base + 1 + 8192
        b.stdin.write("\n")
        b.stdin.flush()
        assert b.stdout.readline().strip() == "churned"
        assert wait_until(lambda: _redirects() == base + 1)
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.stdout.readline().split() == ["after", "192.0.2.53", "53", "True"]
    finally:
        for p in (a, b):
            p.kill()
            p.wait()
    assert wait_until(lambda: _redirects() == base)
    assert any(e["reason"] == "limit" for e in events(w))


# ---------- floods: the logs stay small ----------

# for ARGV[1] seconds, DNS queries to each HOST:PORT of ARGV[3:] from a
# forged source ARGV[2] (IPV6_FREEBIND: this runs outside any session)
FLOOD_ANSWERER = r"""
import socket, sys, time
q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04leak\x04test\x00\x00\x01\x00\x01"
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(41, 78, 1)
s.bind((sys.argv[2], 0))
targets = [(t.rsplit(":", 1)[0].strip("[]"), int(t.rsplit(":", 1)[1])) for t in sys.argv[3:]]
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    for t in targets:
        try:
            s.sendto(q, t)
            n += 1
        except OSError:
            pass
print("sent", n, flush=True)
"""
# refused connects for ARGV[1] seconds
FLOOD_EVENTS = r"""
import socket, sys, time
end, n = time.monotonic() + float(sys.argv[1]), 0
while time.monotonic() < end:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("203.0.113.10", 8080 + n % 100))
    except OSError:
        n += 1
    s.close()
print("refused", n, flush=True)
"""


def _size(path: str) -> int:
    import os
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        return 0


def test_forged_queries_to_the_answerer_neither_answered_nor_logged(proxy_lab):
    """Another local user floods the relay's DNS answerers on ::1 from a
    forged source for 4 s: the relay's own ingress program drops it all in
    the kernel, so nothing answers it (up0 sees none of it), daemon.log does
    not grow, and a session's lookups meanwhile are all answered. The
    control: the capture on loopback sees the flood arrive."""
    import os
    import time
    from tests.privileged.test_proxy import NAME
    w = proxy_lab
    held = Held(w, "--proxy", f"socks5h://{PROXY4}:{PORT}")
    try:
        log = os.path.join(w.run_dir, "daemon.log")
        before = _size(log)
        ends = [f"[::1]:{RELAY_PORT}", f"[::1]:{RELAY_PORT + 1}"]
        flt = f"udp and (dst port {RELAY_PORT} or dst port {RELAY_PORT + 1})"
        with w.lab.capture("lo", flt=flt) as lo, w.lab.capture("up0") as up:
            flood = [w.lab.spawn(NOBODY + [PY, "-c", FLOOD_ANSWERER, "4", S6, *ends],
                                 stdout=subprocess.PIPE, text=True) for _ in range(4)]
            time.sleep(0.5)
            answered = [held.run(PY, "-c", ASK, NAME, "192.0.2.53:53").stdout
                        for _ in range(20)]
            sent = [p.communicate(timeout=30)[0] for p in flood]
            arrived, leaked = lo.stop(), up.stop()
        assert all(s.startswith("sent") for s in sent), sent
        assert arrived >= 1000, arrived
        assert leaked == 0
        assert all(a.startswith("192.0.2.53:53 answered 198.1") for a in answered), answered
        assert _size(log) - before < 16 << 10, _size(log) - before
    finally:
        held.close()


def test_event_floods_stay_within_the_logs_cap(world):
    """A --block workload refused as fast as it can, with no rate limit on
    events (NETLEAK_EVENT_RATE=100000): events.jsonl turns over at its cap
    (the control: it did fill, there is an events.jsonl.1) and stays within
    it, and so does daemon.log."""
    import os
    from netleak_hook.rundir.eventlog import LOG_MAX_BYTES
    from netleak_hook.rundir.logfile import DAEMON_LOG_MAX
    w = world
    w.env["NETLEAK_EVENT_RATE"] = "100000"
    r = w.netleak("-u", "nobody", "--block", PY, "-c", FLOOD_EVENTS, "6", timeout=120)
    assert r.stdout.startswith("refused"), r.stdout + r.stderr
    ev = os.path.join(w.run_dir, "events.jsonl")
    assert wait_until(lambda: _size(ev + ".1") > 0, timeout=20), (r.stdout, _size(ev))
    for path, cap in ((ev, LOG_MAX_BYTES), (ev + ".1", LOG_MAX_BYTES),
                      (os.path.join(w.run_dir, "daemon.log"), DAEMON_LOG_MAX)):
        assert _size(path) <= cap, (path, _size(path))
    assert not os.path.exists(ev + ".2")


# ---------- atomic replaces in a directory another user may write ----------

# as nobody, in directory ARGV[1] (theirs): whenever a file appears whose
# name starts with .netleak-, put a link to ARGV[2] in its place (a rename,
# atomic); until ARGV[3] exists. Prints how many times it got one in.
SWAPPER = r"""
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
d, victim, stop = sys.argv[1], sys.argv[2], sys.argv[3]
fd = libc.inotify_init1(os.O_NONBLOCK)
libc.inotify_add_watch(fd, d.encode(), 0x100)       # IN_CREATE
link = os.path.join(d, "link")
swapped = 0
print("ready", flush=True)
import select
while not os.path.exists(stop):
    if not select.select([fd], [], [], 0.05)[0]:
        continue
    buf = os.read(fd, 65536)
    off = 0
    while off < len(buf):
        _, _, _, n = struct.unpack_from("iIII", buf, off)
        name = buf[off + 16:off + 16 + n].split(b"\0", 1)[0].decode()
        off += 16 + n
        if not name.startswith(".netleak-"):
            continue
        try:
            os.symlink(victim, link)
        except FileExistsError:
            pass
        try:
            os.rename(link, os.path.join(d, name))
            swapped += 1
        except OSError:
            pass
print("swapped", swapped, flush=True)
"""


def test_an_atomic_replace_never_changes_a_file_through_a_link(world, tmp_path):
    """node-exporter's textfile directory may be another user's: while root
    replaces a .prom file there (netleak metrics -o) over and over, that
    user swaps each new temporary file for a link to a root-only file. Its
    mode and content stay; the control is that the swaps did happen."""
    import os
    from netleak_hook import metrics
    victim = tmp_path / "victim"
    victim.write_text("secret\n")
    os.chmod(victim, 0o600)
    prom = tempfile_dir(tmp_path, "prom", 65534)
    stop = os.path.join(tempfile_dir(tmp_path, "stop", 65534), "stop")
    p = world.lab.spawn(NOBODY + [PY, "-c", SWAPPER, prom, str(victim), stop],
                        stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "ready"
        text = "netleak_sessions 1\n" * 2000
        for _ in range(400):
            metrics.write(os.path.join(prom, "netleak.prom"), text)
    finally:
        open(stop, "w").close()
        out = p.stdout.readline().split()
        p.wait()
    assert out[0] == "swapped" and int(out[1]) > 0, out
    assert os.stat(victim).st_mode & 0o777 == 0o600
    assert victim.read_text() == "secret\n"
    import shutil
    shutil.rmtree(prom)
    shutil.rmtree(os.path.dirname(stop))



# ---------- forged sources by a door no cgroup program watches ----------

COMPAT_TARGETS = ["[::1]:9", f"[{OWN6}]:9", f"[ff02::1%vpn0]:{ECHO_PORT + 1}"]


def _compat(world, runner) -> tuple[int, dict[str, str]]:
    with world.lab.capture("up0") as cap:
        r = runner([PY, "-c", COMPAT, "6", S6, "freebind", *COMPAT_TARGETS])
        leaked = cap.stop()
    assert r.returncode == 0, r.stderr
    return leaked, dict(ln.split(" ", 1) for ln in r.stdout.splitlines())


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="int 0x80 is x86_64's")
def test_a_32_bit_setsockopt_forges_nothing(world):
    """The kernel runs no cgroup setsockopt program for a 32-bit call (int
    0x80 from a 64-bit program): netleak-exec's filter refuses it; in a
    cgroup netleak attached (no filter) the option takes, and the egress
    program drops every packet that carries the forged source, the local
    copy of a multicast one included. The control: outside netleak, the
    answers to the forged source leave by up0."""
    _hostile_lab(world)
    leaked, out = _compat(world, lambda argv: world.lab.run(NOBODY + argv))
    assert out["compat"] == "ok" and leaked > 0, (leaked, out)
    leaked, out = _compat(world, lambda argv: world.netleak("-u", "nobody", "vpn0", *argv))
    assert out == {"compat": "refused 1", "bind": "refused Cannot assign requested address"} \
        and leaked == 0, (leaked, out)
    from netleak_hook.kernel import cgroupfs
    rel = f"{world.parent}-compat/job"
    path = cgroupfs.abspath(cgroupfs.find_cgroup2(), rel)
    cgroupfs.make(path)
    r = world.cli("attach", "vpn0", "--cgroup", f"/{rel}")
    assert r.returncode == 0, r.stderr
    join = f'echo $$ > {path}/cgroup.procs && exec "$@"'
    leaked, out = _compat(world, lambda argv: world.lab.run(["sh", "-c", join, "sh", *NOBODY,
                                                            *argv]))
    assert out["compat"] == "ok" and out["bind"] == "ok", out
    assert leaked == 0, out
    assert wait_until(lambda: world.sessions() == 0)
    world.control()


# ---------- typing into the caller's terminal ----------

# on its terminal (stdin): type "echo pwned" and a newline, one byte at a time
TIOCSTI = r"""
import fcntl, termios
try:
    for c in b"echo pwned\n":
        fcntl.ioctl(0, termios.TIOCSTI, bytes([c]))
    print("typed", flush=True)
except OSError as e:
    print("refused", e.strerror, flush=True)
"""


def test_a_workload_cannot_type_into_its_callers_terminal(world):
    """TIOCSTI pushes bytes into the terminal's input, which the shell that
    started netleak-exec reads and runs once COMMAND exits: outside the
    session, with the caller's rights. Refused in netleak-exec; the control
    (the same as nobody outside) does type, and the terminal reads it."""
    import fcntl
    import termios
    results = []
    for inside in (False, True):
        master, slave = os.openpty()

        def ctty():
            os.setsid()
            fcntl.ioctl(0, termios.TIOCSCTTY, 0)
        argv = (EXEC + ["-u", "nobody", "--block"] if inside else NOBODY) + [PY, "-c", TIOCSTI]
        r = subprocess.run(world.lab.nsenter(world.lab.host) + argv, env=world.env,
                           stdin=slave, capture_output=True, text=True, timeout=60,
                           preexec_fn=ctty)
        os.set_blocking(slave, False)
        try:
            typed = os.read(slave, 100)
        except BlockingIOError:
            typed = b""
        os.close(slave)
        os.close(master)
        results.append((r.stdout.strip(), typed))
    assert results[0] == ("typed", b"echo pwned\n"), results
    assert results[1] == ("refused Operation not permitted", b""), results



def test_a_gc_in_another_namespace_leaves_this_ones_records(proxy_lab, tmp_path):
    """Pins (and so the redirect map) are shared by every network
    namespace's daemon: `netleak gc` in another namespace (the lab's NET)
    leaves the records of this one's live sockets alone, so a DNS socket
    held across it still gets answers that show the address it asked. The
    control: it does remove a record whose cgroup is gone."""
    import shutil
    from netleak_hook.kernel import bpfsys, programs
    from tests.privileged.conftest import CLI
    from tests.privileged.test_proxy import proxied_entries
    w = proxy_lab
    Proxy(w, "socks5")
    a = w.lab.spawn(EXEC + ["--proxy", f"socks5h://{PROXY4}:{PORT}", PY, "-c", HOLD_DNS],
                    env=w.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    other_run = tempfile_dir(tmp_path, "other", 0)
    pins = programs.Pinset(os.path.join(os.environ["NETLEAK_BPF_DIR"], programs.pinset_name()))
    try:
        assert a.stdout.readline().split()[:2] == ["before", "192.0.2.53"]
        fd = bpfsys.obj_get(pins.pin("map_redirect"))
        try:
            stale = (2**62 + 12345).to_bytes(8, "little")     # no socket has this cookie
            bpfsys.map_update(fd, stale, b"\0" * 40 + (2**62).to_bytes(8, "little") + b"\0" * 8)
            n = proxied_entries()
            r = w.lab.run(CLI + ["gc"], env=dict(w.env, NETLEAK_RUN_DIR=other_run), ns=w.lab.net)
            assert r.returncode == 0, r.stderr
            assert proxied_entries() == n - 1                  # the stale one only
            assert bpfsys.map_lookup(fd, stale, 56) is None
        finally:
            os.close(fd)
        a.stdin.write("\n")
        a.stdin.flush()
        assert a.stdout.readline().split()[:2] == ["after", "192.0.2.53"]
    finally:
        a.kill()
        a.wait()
        labmod.stop_daemon(other_run)
        shutil.rmtree(other_run, ignore_errors=True)
