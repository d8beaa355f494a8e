"""make soak: the leak matrix.

Probes run inside netleak-exec sessions on vpn0 while tcpdump watches every
other link of HOST: up0 (the default uplink) and lan0 (a second link with
a worse default route). A probe is TCP, UDP, ICMP echo, DNS to the server
(UDP and TCP to port 53) or DNS to a loopback stub (127.0.0.53, ::1), each
over IPv4, IPv6 and v4-mapped IPv6 (an AF_INET6 socket to ::ffff:...);
ICMP has no v4-mapped form. Sessions are given `--dns` resolvers in NET:
loopback DNS must reach them through vpn0, never the stub, which forwards
by up0. Each state below is set up for real while the probes run; a cell
is one (state, probe): the packets each capture saw of that probe and what
the workload saw, phase by phase. Only packets to or from the servers
count: a real tunnel's own encrypted UDP on up0 goes to NET's end of up0,
and a TCP or UDP answer is the session's own (`ok`) only when the server
saw an address of the session's path (vpn0's, or the tunnel's).

States: the probe as the exec'd command (vpn0 up, then down); vpn0 down
and up; deleted and re-created; a session on a real WireGuard tunnel
(wireguard-go, tests/realvpn.py) while wireguard-go is SIGKILLed and
started again; a session on a real OpenVPN 2.6 TLS tunnel while the
client is SIGKILLed, started again and sent SIGUSR1 (a reconnect); a
session on vpn0 while a wg-quick full tunnel (its rules ahead of
netleak's) comes up, goes down and comes up again, answered by way of
vpn0 throughout; the peer silent (NET's side without its
addresses) and the peer down (no carrier); every socket bound to lan0; a
double-forked, setsid grandchild probing after the session's main process
exited; `unshare -n`; every netleak process SIGKILLed, then vpn0 down,
deleted, re-created, and `netleak gc`; the reaper ending sessions around a
live orphan; another tool's pass-everything egress program on the
session's cgroup; a hostile workload (as nobody) beside a probing session,
forging sources (IP_FREEBIND, ip_nonlocal_bind), taking its user's other
process's socket, making AF_VSOCK, AF_PACKET and MPTCP sockets. Then a churn of sessions created and reaped, after which
nothing may be left. --short runs every state and probe with fewer cycles
and rounds, a churn of 20 sessions instead of 200, and interfaces' set-ups
lingering 0.3 s after their last session instead of the default 5 s.

Before trusting a 0, each probe is run outside netleak and must show on
up0 (and, bound to lan0, on lan0); every capture must see its own end
marker. Probes use their own server port (DNS: its own client port; the
loopback stub forwards each to an upstream of its own; ICMP: its echo id),
so one capture per state is split into cells.

  python tests/soak.py [--short]

Prints one line per cell and `total leaked: N`; exits 1 when N > 0, a
control saw nothing, a state could not be set up, the workload did not see
what its state gives, or something was left behind.
"""
from __future__ import annotations

import collections
import dataclasses
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from netleak_hook import lab  # noqa: E402
from netleak_hook.kernel import bpfsys, cgroupfs  # noqa: E402
from tests.helpers import alive, wait_until  # noqa: E402
from tests.privileged.conftest import (  # noqa: E402
    EXEC, World, kill_cgroup_tree, netleak_pids, policy_keys)
from tests.privileged.probes import (  # noqa: E402
    FAMILIES, MPTCP, SPOOF, TAKE_OVER, THEIRS, VICTIM)
from tests.realvpn import OpenVPN, WireGuard  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DNSD_DIR = os.path.join(HERE, "privileged")

S4, S6 = lab.SERVER4, lab.SERVER6
M4 = "::ffff:" + S4
R4, R6 = "203.0.113.53", "2001:db8:ff::53"       # the sessions' resolvers (--dns)
VIA4 = lab.LINKS["vpn0"][1]


def _nets(*cidrs: str) -> tuple:
    return tuple(ipaddress.ip_network(c) for c in cidrs)


# a session's own path, by the address the server saw: vpn0's, the real
# WireGuard tunnel's HOST end, or what the OpenVPN server gives its client
VPN0_PATH = _nets("198.51.100.2/32", "2001:db8:2::2/128")
WG_PATH = _nets(f"{WireGuard.HOST4}/32", f"{WireGuard.HOST6}/128")
OVPN_PATH = _nets(f"{OpenVPN.NET}/27", OpenVPN.NET6)
UP_ADDRS = {"192.0.2.2", "2001:db8:1::2"}
UP_ADDRS_ORDERED = ("192.0.2.2", "2001:db8:1::2")
LAN = ("192.0.2.66/26", "192.0.2.65", "2001:db8:3::2/64", "2001:db8:3::1")
LAN_ADDRS = {"192.0.2.66", "2001:db8:3::2"}
WATCHED = {"up0": lab.LINKS["up0"][1], "lan0": LAN[1]}    # link -> peer (end marker)
SERVER_NETS = (ipaddress.ip_network("203.0.113.0/24"), ipaddress.ip_network("2001:db8:ff::/64"))
CAPTURE_FILTER = "net 203.0.113.0/24 or net 2001:db8:ff::/64"


@dataclasses.dataclass(frozen=True)
class Probe:
    name: str
    kind: str            # tcp, udp, icmp, dns-udp, dns-tcp
    fam: int             # the socket's family: 4 or 6
    host: str
    port: int = 0        # the server's port
    lport: int = 0       # DNS: the client's own port, which names it on the wire
    ident: int = 0       # ICMP: the echo id
    upstream: str = ""   # loopback DNS: where the stub forwards it


def _dns(name: str, kind: str, fam: int, host: str, lport: int, upstream: str = "") -> Probe:
    return Probe(name, kind, fam, host, 53, lport, upstream=upstream)


PROBES = (
    Probe("tcp4", "tcp", 4, S4, 8101),
    Probe("tcp6", "tcp", 6, S6, 8102),
    Probe("tcp4m", "tcp", 6, M4, 8103),
    Probe("udp4", "udp", 4, S4, 8201),
    Probe("udp6", "udp", 6, S6, 8202),
    Probe("udp4m", "udp", 6, M4, 8203),
    Probe("icmp4", "icmp", 4, S4, ident=0x5301),
    Probe("icmp6", "icmp", 6, S6, ident=0x5302),
    _dns("dns-udp4", "dns-udp", 4, S4, 41001),
    _dns("dns-udp6", "dns-udp", 6, S6, 41002),
    _dns("dns-udp4m", "dns-udp", 6, M4, 41003),
    _dns("dns-tcp4", "dns-tcp", 4, S4, 41004),
    _dns("dns-tcp6", "dns-tcp", 6, S6, 41005),
    _dns("dns-tcp4m", "dns-tcp", 6, M4, 41006),
    _dns("dnslo-udp4", "dns-udp", 4, "127.0.0.53", 41011, "203.0.113.61"),
    _dns("dnslo-udp6", "dns-udp", 6, "::1", 41012, "203.0.113.62"),
    _dns("dnslo-udp4m", "dns-udp", 6, "::ffff:127.0.0.53", 41013, "203.0.113.63"),
    _dns("dnslo-tcp4", "dns-tcp", 4, "127.0.0.53", 41014, "203.0.113.64"),
    _dns("dnslo-tcp6", "dns-tcp", 6, "::1", 41015, "203.0.113.65"),
    _dns("dnslo-tcp4m", "dns-tcp", 6, "::ffff:127.0.0.53", 41016, "203.0.113.66"),
)
BY_NAME = {p.name: p for p in PROBES}
# sessions of the churn run side by side: no fixed client port (a leak of
# the stub's query is still named by its upstream, others count unattributed)
CHURN_PROBES = (BY_NAME["tcp4"], BY_NAME["udp6"],
                dataclasses.replace(BY_NAME["dnslo-udp4"], lport=0))
# what can be bound to lan0 (SO_BINDTODEVICE): all but the loopback stub's
LAN_PROBES = tuple(p for p in PROBES if not p.upstream)

# One round: every probe at once, one thread each; a line per attempt
# ("ROUND PHASE PROBE OUTCOME"), then "ROUND PHASE done". PHASE is what the
# phase file says when the round starts. Until the stop file exists.
PROBE = r"""
import errno, json, os, socket, struct, sys, threading, time
cfg = json.loads(sys.argv[1])
T = cfg["timeout"]
A_ANSWER = socket.inet_aton("192.0.2.77")

def query(qid):
    return (struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + b"\x04soak\x04test\x00"
            + struct.pack("!HH", 1, 1))

def checksum(data):
    s = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    s = (s >> 16) + (s & 0xFFFF)
    return ~(s + (s >> 16)) & 0xFFFF

def echo(p, fam, s, seq):
    body = struct.pack("!HH", p["ident"], seq & 0xFFFF) + b"soak"
    if fam == socket.AF_INET:
        head, want = struct.pack("!BBH", 8, 0, checksum(b"\x08\x00\x00\x00" + body)), 0
    else:
        head, want = struct.pack("!BBH", 128, 0, 0), 129    # the kernel sums ICMPv6
    s.sendto(head + body, (p["host"], 0))
    deadline = time.monotonic() + T
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        s.settimeout(left)
        data, src = s.recvfrom(2048)
        if fam == socket.AF_INET:
            data = data[(data[0] & 15) * 4:]
        if len(data) >= 8 and data[0] == want and data[4:8] == body[:4]:
            return "ok " + src[0]

def attempt(p, seq):
    fam = socket.AF_INET6 if p["fam"] == 6 else socket.AF_INET
    kind, dest, s = p["kind"], (p["host"], p["port"]), None
    try:
        if kind == "icmp":
            proto = socket.IPPROTO_ICMP if fam == socket.AF_INET else socket.IPPROTO_ICMPV6
            s = socket.socket(fam, socket.SOCK_RAW, proto)
        elif kind in ("tcp", "dns-tcp"):
            s = socket.socket(fam, socket.SOCK_STREAM)
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM)
        s.settimeout(T)
        if cfg["dev"]:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, cfg["dev"].encode())
        if kind == "icmp":
            return echo(p, fam, s, seq)
        if kind.startswith("dns"):
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::" if fam == socket.AF_INET6 else "0.0.0.0", p["lport"]))
            q = query(seq & 0xFFFF)
            if kind == "dns-udp":
                s.sendto(q, dest)
            else:
                # closed with a reset: no TIME_WAIT of its fixed port, whose
                # four-tuple the next round's connect would find taken
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.connect(dest)
                s.sendall(struct.pack("!H", len(q)) + q)
            return "ok answer" if s.recv(512)[-4:] == A_ANSWER else "ok empty"
        if kind == "tcp":
            s.connect(dest)
        else:
            s.sendto(b"soak", dest)
        return "ok " + (s.recv(200).decode().strip() or "-")
    except socket.timeout:
        return "timeout"
    except OSError as e:
        return errno.errorcode.get(e.errno, "error")
    finally:
        if s is not None:
            s.close()

def phase():
    try:
        with open(cfg["phase"]) as f:
            return f.read().strip() or "-"
    except OSError:
        return "-"

out = open(cfg["out"], "a")
rnd = 0
while True:
    tag, probes = phase(), cfg["probes"]
    res = [None] * len(probes)
    def one(i, seq=rnd):
        res[i] = attempt(probes[i], seq)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(probes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    out.write("".join(f"{rnd} {tag} {p['name']} {r}\n" for p, r in zip(probes, res))
              + f"{rnd} {tag} done\n")
    out.flush()
    rnd += 1
    if cfg["once"] or os.path.exists(cfg["stop"]):
        break
    time.sleep(cfg["interval"])
"""

# NET's server: TCP and UDP echo of the client's address on every port of
# the probes, and DNS (dnsd's answers) on the resolvers' addresses. A reply
# that cannot be routed back is let go.
SERVER = r"""
import json, select, socket, struct, sys
sys.path.insert(0, sys.argv[2])
import dnsd
conf = json.loads(sys.argv[1])
echo, dns = [], []
def listen(addr, port, group):
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port)); t.listen(128)
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, port))
    group += [t, u]
for addr in conf["echo"]:
    for port in conf["ports"]:
        listen(addr, port, echo)
for addr in conf["dns"]:
    listen(addr, 53, dns)
print("ready", flush=True)
while True:
    for s in select.select(echo + dns, [], [])[0]:
        try:
            if s.type == socket.SOCK_DGRAM:
                data, peer = s.recvfrom(4096)
                reply = dnsd.answer(data) if s in dns else peer[0].encode() + b"\n"
                if reply:
                    s.sendto(reply, peer)
                continue
            c, peer = s.accept()
            with c:
                c.settimeout(1)
                if s in echo:
                    c.sendall(peer[0].encode() + b"\n")
                    continue
                size = struct.unpack("!H", dnsd.recv_exact(c, 2))[0]
                reply = dnsd.answer(dnsd.recv_exact(c, size))
                c.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, struct.error):
            pass
"""

# HOST's loopback resolver (127.0.0.53 and ::1, UDP and TCP), outside any
# session: it forwards each query by the main table, so a query that reaches
# it leaves by up0, to the upstream named by the client's port.
STUB = r"""
import json, select, socket, struct, sys
upstream = {int(k): v for k, v in json.loads(sys.argv[1]).items()}
socks = []
for fam, addr in ((socket.AF_INET, "127.0.0.53"), (socket.AF_INET6, "::1")):
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, 53))
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, 53)); t.listen(64)
    socks += [u, t]
def ask(data, port):
    if port not in upstream:
        return b""
    up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    up.settimeout(1)
    try:
        up.sendto(data, (upstream[port], 53))
        return up.recv(4096)
    except OSError:
        return b""
    finally:
        up.close()
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        try:
            if s.type == socket.SOCK_DGRAM:
                data, peer = s.recvfrom(4096)
                reply = ask(data, peer[1])
                if reply:
                    s.sendto(reply, peer)
                continue
            c, peer = s.accept()
            with c:
                c.settimeout(1)
                size = struct.unpack("!H", c.recv(2))[0]
                reply = ask(c.recv(size), peer[1])
                if reply:
                    c.sendall(struct.pack("!H", len(reply)) + reply)
        except (OSError, struct.error):
            pass
"""

# Double fork and setsid: the grandchild lets go of the terminal's files,
# waits until the session's main process has exited, writes "pid sid ppid
# main-sid" to ARGV[1], then execs ARGV[2:].
DAEMONIZE = r"""
import os, sys, time
top, top_sid = os.getpid(), os.getsid(0)
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        while os.path.exists(f"/proc/{top}"):
            time.sleep(0.01)
        with open(sys.argv[1], "w") as f:
            f.write(f"{os.getpid()} {os.getsid(0)} {os.getppid()} {top_sid}\n")
        os.execv(sys.executable, [sys.executable] + sys.argv[2:])
    os._exit(0)
os.wait()
"""


class SetupError(Exception):
    """A state could not be set up, or did not hold as it should."""


def need(*commands: str) -> None:
    """A state that needs COMMANDS fails without them (it is never skipped)."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        raise SetupError(f"needs {', '.join(missing)} (make test installs them)")


# ---------- what the captures and the probes saw ----------

LINE = re.compile(r"\b(IP6?) (\S+) > (\S+?): (.*)$")
BY_PORT = {p.port: p.name for p in PROBES if p.kind in ("tcp", "udp")}
BY_LPORT = {p.lport: p.name for p in PROBES if p.lport}
BY_ICMP = {(p.fam, p.ident): p.name for p in PROBES if p.kind == "icmp"}
BY_UPSTREAM = {p.upstream: p.name for p in PROBES if p.upstream}


def _endpoint(text: str, v6: bool) -> tuple[str, int | None]:
    if v6:
        addr, _, port = text.rpartition(".") if "." in text else (text, "", "")
    else:
        parts = text.split(".")
        addr, port = (".".join(parts[:4]), parts[4]) if len(parts) == 5 else (text, "")
    return addr, int(port) if port.isdigit() else None


def _server_side(addr: str) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(a in net for net in SERVER_NETS)


def attribute(line: str) -> str:
    """The probe a tcpdump line belongs to, or "other"."""
    m = LINE.search(line)
    if not m:
        return "other"
    v6 = m.group(1) == "IP6"
    src, dst, rest = _endpoint(m.group(2), v6), _endpoint(m.group(3), v6), m.group(4)
    for addr, _ in (src, dst):
        if addr in BY_UPSTREAM:
            return BY_UPSTREAM[addr]
    server, client = (src, dst) if _server_side(src[0]) else (dst, src)
    if rest.startswith("ICMP"):
        e = re.search(r"echo (?:request|reply), id (\d+)", rest)
        if e:
            return BY_ICMP.get((6 if v6 else 4, int(e.group(1))), "other")
        inner = re.search(r"(?:udp|tcp) port (\d+)", rest)
        return BY_PORT.get(int(inner.group(1)), "other") if inner else "other"
    if server[1] == 53:
        return BY_LPORT.get(client[1], "other")
    return BY_PORT.get(server[1], "other")


def _within(addr: str, nets) -> bool:
    try:
        a = ipaddress.ip_address(addr)
    except ValueError:
        return False
    return any(a in net for net in nets)


def normalize(probe: Probe, outcome: str, own=VPN0_PATH) -> str:
    """ok (by OWN, the session's path), ok@up0, ok@lan0, ok@ADDR, ok-empty,
    timeout, or an errno name."""
    if not outcome.startswith("ok"):
        return outcome
    if probe.kind.startswith("dns"):
        return "ok" if outcome == "ok answer" else "ok-empty"
    if probe.kind == "icmp":
        return "ok"
    addr = outcome[3:]
    if _within(addr, own):
        return "ok"
    for where, addrs in (("@up0", UP_ADDRS), ("@lan0", LAN_ADDRS)):
        if addr in addrs:
            return "ok" + where
    return f"ok@{addr}"


def replied(outcome: str) -> bool:
    return outcome.startswith("ok")


class Run:
    """One probe process: its output file, read as rounds, each tagged with
    the phase the runner had set when the round started; an answer is `ok`
    when the server saw an address of OWN (the session's path)."""

    def __init__(self, tmp: str, tag: str, probes=PROBES, once: bool = False,
                 phase: str = "-", dev: str = "", timeout: float = 1.0,
                 own=VPN0_PATH) -> None:
        base = os.path.join(tmp, tag)
        self.own = own
        self.out, self.stop_file, self.phase_file = base + ".out", base + ".stop", base + ".phase"
        self.probes = tuple(probes)
        self.cfg = {"probes": [dataclasses.asdict(p) for p in self.probes], "out": self.out,
                    "stop": self.stop_file, "phase": self.phase_file, "once": once,
                    "dev": dev, "timeout": timeout, "interval": 0.1}
        self.proc: subprocess.Popen | None = None
        self.pid = 0        # a process not ours to wait for (an orphan)
        self.since = 0      # rounds complete when the phase was last set
        self.set_phase(phase)

    def argv(self) -> list[str]:
        return [sys.executable, "-c", PROBE, json.dumps(self.cfg)]

    def set_phase(self, name: str) -> None:
        """Rounds starting from now are tagged NAME; the waits below count
        only those (a phase name comes back in each cycle of a state)."""
        self.since = len(self.rounds())
        with open(self.phase_file + ".new", "w") as f:
            f.write(name)
        os.rename(self.phase_file + ".new", self.phase_file)

    def rounds(self) -> list[tuple[str, dict[str, str]]]:
        """Complete rounds: (phase, {probe: normalized outcome})."""
        try:
            with open(self.out) as f:
                text = f.read()
        except FileNotFoundError:
            return []
        done, cur = [], {}
        for line in text.splitlines(keepends=True):
            if not line.endswith("\n"):
                break
            parts = line.rstrip("\n").split(" ", 3)
            if len(parts) == 3 and parts[2] == "done":
                done.append((parts[1], cur))
                cur = {}
            elif len(parts) == 4 and parts[2] in BY_NAME:
                cur[parts[2]] = normalize(BY_NAME[parts[2]], parts[3], self.own)
        return done

    def tagged(self, phase: str) -> list[dict[str, str]]:
        """Rounds of PHASE since it was last set."""
        return [r for p, r in self.rounds()[self.since:] if p == phase]

    def last(self) -> str:
        rounds = self.rounds()
        if not rounds:
            return "no round yet"
        phase, r = rounds[-1]
        return f"last round ({phase}): " + " ".join(f"{k}={v}" for k, v in r.items())

    def wait(self, pred, what: str, timeout: float = 20.0) -> None:
        if not wait_until(lambda: pred(self), timeout=timeout, step=0.05):
            raise SetupError(f"{what}; {self.last()}")

    def enter(self, phase: str) -> None:
        """Set the phase; return once a round of it is complete (every round
        of the phase before has ended)."""
        self.set_phase(phase)
        self.wait(lambda r: bool(r.tagged(phase)), f"no round in phase {phase}")

    def all_ok(self, phase: str) -> bool:
        return any(all(v == "ok" for v in r.values()) for r in self.tagged(phase))

    def wait_all_ok(self, phase: str, what: str, timeout: float = 20.0) -> None:
        self.wait(lambda r: r.all_ok(phase), what, timeout)

    def wait_rounds(self, phase: str, n: int) -> None:
        self.wait(lambda r: len(r.tagged(phase)) >= n, f"fewer than {n} rounds in {phase}")

    def finish(self, timeout: float = 20.0) -> None:
        """Stop after the current round; wait for the process to end."""
        open(self.stop_file, "w").close()
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                raise SetupError("the probe did not stop") from None
        elif self.pid and not wait_until(lambda: not alive(self.pid), timeout=timeout):
            raise SetupError("the probe did not stop")


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return ""


class Captures:
    """tcpdump on every watched link of HOST at once; after stop(), the
    lines of each and the links that did not see their end marker."""

    def __init__(self, the_lab: lab.Lab) -> None:
        self.caps = {link: the_lab.capture(link, peer=peer, flt=CAPTURE_FILTER)
                     for link, peer in WATCHED.items()}
        self.lines: dict[str, list[str]] = {link: [] for link in WATCHED}
        self.blind: list[str] = []

    def __enter__(self) -> "Captures":
        started = []
        try:
            for cap in self.caps.values():
                cap.__enter__()
                started.append(cap)
        except BaseException:
            for cap in started:
                cap.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        for link, cap in self.caps.items():
            if cap.proc is None:
                continue
            cap.stop()
            self.lines[link] = list(cap.lines)
            if not any(f"> {cap.peer}.{cap.MARKER_PORT}:" in ln for ln in cap.raw):
                self.blind.append(link)

    def counts(self) -> dict[str, collections.Counter]:
        return {link: collections.Counter(attribute(ln) for ln in lines)
                for link, lines in self.lines.items()}


SHORT_LINGER = "0.3"     # NETLEAK_LINGER_SECONDS of --short (the suite's)


# ---------- results ----------

@dataclasses.dataclass
class Cell:
    state: str
    probe: str
    packets: dict[str, int]      # watched link -> packets
    saw: str
    verdict: str                 # pass, LEAK, UNEXPECTED, NOT RUN (controls: seen, BLIND)
    attempts: int = 0

    def line(self) -> str:
        pk = " ".join(f"{link}={n}" for link, n in self.packets.items())
        return f"{self.state:<15} {self.probe:<12} {pk:<16} saw: {self.saw:<48} {self.verdict}"


@dataclasses.dataclass
class Results:
    cells: list[Cell] = dataclasses.field(default_factory=list)
    controls: list[Cell] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    churn_sessions: int = 0
    churn_left: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[str] = dataclasses.field(default_factory=list)
    expected: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    seconds: float = 0.0

    @property
    def total_leaked(self) -> int:
        return sum(sum(c.packets.values()) for c in self.cells)

    def missing(self) -> list[tuple[str, str]]:
        have = {(c.state, c.probe) for c in self.cells if c.attempts > 0}
        return [k for k in self.expected if k not in have]

    @property
    def ok(self) -> bool:
        return (self.total_leaked == 0 and not self.failures and not self.missing()
                and all(c.verdict == "seen" for c in self.controls) and bool(self.controls)
                and all(c.verdict == "pass" for c in self.cells)
                and not self.churn_left and not self.leftovers)


def _saw(outcomes: list[tuple[str, str]]) -> str:
    """'routed ok×3; down EHOSTUNREACH×2,timeout×1; ...': outcomes by phase
    (transition phases, named ~..., left out)."""
    by_phase: dict[str, collections.Counter] = {}
    for phase, o in outcomes:
        if not phase.startswith("~"):
            by_phase.setdefault(phase, collections.Counter())[o] += 1
    return "; ".join(f"{ph} " + ",".join(f"{o}×{n}" for o, n in c.most_common())
                     for ph, c in by_phase.items()) or "-"


EXPECTATIONS = {
    "ok": lambda outs: all(o == "ok" for o in outs),
    "blocked": lambda outs: not any(replied(o) for o in outs),
    "eperm": lambda outs: all(o == "EPERM" for o in outs),
    "resume": lambda outs: any(o == "ok" for o in outs),
}


class State:
    """What one state's runs saw, and what each phase should give."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.runs: list[Run] = []
        self.expect: dict[str, str] = {}
        self.failure = ""
        self.notes: list[str] = []

    def add(self, run: Run) -> Run:
        self.runs.append(run)
        return run

    def cells(self, caps: Captures, probes) -> list[Cell]:
        counts = caps.counts()
        out = []
        for p in probes:
            outcomes = [(ph, r[p.name]) for run in self.runs for ph, r in run.rounds()
                        if p.name in r]
            packets = {link: counts[link][p.name] for link in WATCHED}
            if sum(packets.values()):
                verdict = "LEAK"
            elif not outcomes:
                verdict = "NOT RUN"
            else:
                bad = [ph for ph, want in self.expect.items()
                       if not EXPECTATIONS[want]([o for q, o in outcomes if q == ph])]
                verdict = f"UNEXPECTED ({','.join(bad)})" if bad else "pass"
            out.append(Cell(self.name, p.name, packets, _saw(outcomes), verdict, len(outcomes)))
        # lines of probes this state did not run (or could not be told
        # apart) are leaks too
        names = {p.name for p in probes}
        other = {link: sum(n for name, n in counts[link].items() if name not in names)
                 for link in WATCHED}
        if sum(other.values()):
            out.append(Cell(self.name, "(unattributed)", other, "-", "LEAK"))
        return out


# ---------- the lab and netleak's environment ----------

class Soak:
    """The lab (HOST with up0, vpn0, lan0; NET with the servers), a stub
    resolver on HOST's loopback, and netleak with a run directory, cgroup
    parent and pins of its own. Leaving removes all of it."""

    def __init__(self, short: bool, say=print) -> None:
        self.short = short
        self.say = say
        self.tag = f"nlsoak{os.getpid() % 100000}"
        self.lab = lab.Lab(self.tag)
        self.own = lab.Isolated("soak")
        self.tmp = ""
        self.world: World | None = None
        self.rules0 = ""
        self.netns_inodes: set[int] = set()
        self.servers: list[subprocess.Popen] = []
        self.res = Results(expected=[(name, p.name) for name, _, probes in STATES
                                     for p in probes])

    # ----- building and tearing down -----

    def __enter__(self) -> "Soak":
        try:
            self.own.__enter__()
            self.tmp = tempfile.mkdtemp(prefix="netleak-soak-")
            self.build()
        except BaseException:
            self.__exit__()
            raise
        return self

    def build(self) -> None:
        L = self.lab
        L.build()
        for ns in (L.host, L.net):
            self.netns_inodes.add(os.stat(f"/run/netns/{ns}").st_ino)
        self.add_lan()
        upstreams = [p.upstream for p in PROBES if p.upstream]
        for addr in [R4] + upstreams:
            L.ip(L.net, "addr", "add", f"{addr}/32", "dev", "lo")
        L.ip(L.net, "addr", "add", f"{R6}/128", "dev", "lo", "nodad")
        conf = {"echo": [S4, S6], "ports": sorted(BY_PORT), "dns": [S4, S6, R4, R6] + upstreams}
        self.start([sys.executable, "-c", SERVER, json.dumps(conf), DNSD_DIR], L.net)
        stub = {p.lport: p.upstream for p in PROBES if p.upstream}
        self.start([sys.executable, "-c", STUB, json.dumps(stub)], L.host)
        self.world = World(L, self.own.run_dir, self.own.parent)
        self.world.env = dict(self.own.env)
        if self.short:
            # an interface's set-up lingers the suite's bound after its last
            # session (not the default 5 s, which every state's "nothing
            # left" would wait out); the full matrix keeps the default
            self.world.env["NETLEAK_LINGER_SECONDS"] = SHORT_LINGER
        self.rules0 = self.world.rules()

    def add_lan(self) -> None:
        """lan0: a third link of HOST, with a default route worse than vpn0's."""
        L, (a4, p4, a6, p6) = self.lab, LAN
        lab.sh("ip", "link", "add", "lan0", "netns", L.host, "type", "veth",
               "peer", "name", "lan0p", "netns", L.net)
        L.ip(L.host, "addr", "add", a4, "dev", "lan0")
        L.ip(L.host, "addr", "add", a6, "dev", "lan0", "nodad")
        L.ip(L.net, "addr", "add", f"{p4}/26", "dev", "lan0p")
        L.ip(L.net, "addr", "add", f"{p6}/64", "dev", "lan0p", "nodad")
        L.ip(L.host, "link", "set", "lan0", "up")
        L.ip(L.net, "link", "set", "lan0p", "up")
        L.ip(L.host, "route", "add", "default", "via", p4, "dev", "lan0", "metric", "600")
        L.ip(L.host, "-6", "route", "add", "default", "via", p6, "dev", "lan0", "metric", "600")

    def start(self, argv: list[str], ns: str) -> None:
        p = self.lab.spawn(argv, ns=ns, stdout=subprocess.PIPE, text=True)
        self.servers.append(p)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError(f"soak: {argv[:3]} did not start")

    def __exit__(self, *exc) -> None:
        steps = [lambda: lab.stop_daemon(self.own.run_dir), self.kill_workloads,
                 self.lab.close, lambda: self.own.__exit__(None, None, None),
                 self.remove_v1_leftovers,
                 lambda: shutil.rmtree(self.tmp, ignore_errors=True) if self.tmp else None]
        for step in steps:      # each runs, whatever the others did
            try:
                step()
            except Exception as e:   # noqa: BLE001
                self.say(f"cleanup: {e}")

    def kill_workloads(self, keep_daemon: bool = False) -> None:
        """SIGKILL what runs in our cgroups (the daemon's too, unless kept)."""
        root = cgroupfs.abspath(cgroupfs.find_cgroup2(), self.own.parent)
        if not os.path.isdir(root):
            return
        for name in os.listdir(root):
            path = os.path.join(root, name)
            if os.path.isdir(path) and not (keep_daemon and name == "daemon"):
                kill_cgroup_tree(path)

    def remove_v1_leftovers(self) -> None:
        """Cgroups named for our parent in the v1 hierarchies (none expected)."""
        v2 = cgroupfs.find_cgroup2()
        for top in (os.path.join("/sys/fs/cgroup", d) for d in os.listdir("/sys/fs/cgroup")):
            if top == v2 or not os.path.isdir(top):
                continue
            path = os.path.join(top, self.own.parent)
            if os.path.isdir(path):
                kill_cgroup_tree(path)
                cgroupfs.remove_tree(path)

    def leftovers(self) -> list[str]:
        """What is still on the machine of this run (checked after leaving)."""
        left = []
        names = lab.sh("ip", "netns", "list").stdout
        left += [f"netns {ln.split()[0]}" for ln in names.splitlines()
                 if ln.split()[0] in (self.lab.host, self.lab.net)]
        if os.path.exists(self.own.bpf_dir):
            left.append(f"pins {self.own.bpf_dir}")
        for d in (self.own.run_dir, self.tmp):
            if d and os.path.exists(d):
                left.append(f"folder {d}")
        for top, dirs, _ in os.walk("/sys/fs/cgroup"):
            for d in dirs:
                if d == self.own.parent:
                    left.append(f"cgroup {os.path.join(top, d)}")
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                ino = os.stat(f"/proc/{pid}/ns/net").st_ino
                with open(f"/proc/{pid}/environ", "rb") as f:
                    env = f.read()
            except OSError:
                continue
            if ino in self.netns_inodes or self.own.run_dir.encode() in env:
                left.append(f"process {pid}")
        return left

    # ----- helpers -----

    def reps(self, short: int, full: int) -> int:
        return short if self.short else full

    def session_argv(self, cmd: list[str], iface: str = "vpn0", via: bool = False) -> list[str]:
        opts = ["--via", VIA4] if via else []
        return EXEC + opts + ["--dns", R4, "--dns", R6, iface] + cmd

    def exec_run(self, cmd: list[str], **kw) -> subprocess.CompletedProcess:
        return self.lab.run(self.session_argv(cmd, **kw), env=self.world.env, timeout=120)

    def exec_spawn(self, cmd: list[str], **kw) -> subprocess.Popen:
        return self.lab.spawn(self.session_argv(cmd, **kw), env=self.world.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def states(self) -> list[str]:
        try:
            return self.world.states()
        except AssertionError:
            return []

    def wait_status(self, state: str, timeout: float = 15.0) -> None:
        if not wait_until(lambda: self.states() == [state], timeout=timeout, step=0.1):
            raise SetupError(f"netleak status never said {state}: {self.states()}")

    def link(self, *args: str, ns: str | None = None) -> None:
        self.lab.ip(ns or self.lab.host, "link", *args)

    def restore_vpn(self) -> None:
        """vpn0 as built: both ends up, with their addresses and the backup
        default routes (a link going down loses its IPv6 addresses)."""
        L = self.lab
        if L.ip(L.host, "link", "show", "vpn0", check=False).returncode != 0:
            L.recreate("vpn0")
            return
        a4, p4, a6, p6 = lab.LINKS["vpn0"]
        self.link("set", "vpn0", "up")
        self.link("set", "vpn0p", "up", ns=L.net)
        L.ip(L.host, "addr", "replace", a4, "dev", "vpn0")
        L.ip(L.host, "addr", "replace", a6, "dev", "vpn0", "nodad")
        L.ip(L.net, "addr", "replace", f"{p4}/26", "dev", "vpn0p")
        L.ip(L.net, "addr", "replace", f"{p6}/64", "dev", "vpn0p", "nodad")
        L.add_backup_default("vpn0")

    def netleak_pids(self) -> list[int]:
        return netleak_pids(self.own.run_dir)

    def flap(self, st: State, run: Run, blocked_rounds: int) -> None:
        """vpn0 down until the workload is blocked, then back up until every
        probe answers again."""
        run.enter("~down")
        self.link("set", "vpn0", "down")
        self.wait_status("kill-switch")
        st.expect["down"] = "blocked"
        run.enter("down")
        run.wait_rounds("down", blocked_rounds)
        self.resume(st, run, "up", self.restore_vpn, "after vpn0 came back")

    def resume(self, st: State, run: Run, phase: str, bring_back, when: str) -> None:
        """BRING_BACK the path, then every probe must answer again in PHASE."""
        run.enter("~" + phase)
        bring_back()
        st.expect[phase] = "resume"
        run.set_phase(phase)
        run.wait_all_ok(phase, f"the workload did not resume {when}")

    def routed(self, st: State, run: Run, phase: str = "routed") -> None:
        st.expect[phase] = "ok"
        run.wait_all_ok(phase, f"the session never answered by vpn0 ({phase})")

    # ----- running the matrix -----

    def warm_up(self) -> None:
        """Every probe answers outside netleak; the first session compiles
        and pins the programs."""
        r = Run(self.tmp, "ready", once=True)
        for _ in range(50):
            if os.path.exists(r.out):
                os.unlink(r.out)
            self.lab.run(r.argv(), timeout=30)
            rounds = r.rounds()
            if rounds and all(replied(v) and v != "ok-empty" for v in rounds[0][1].values()):
                break
            time.sleep(0.1)
        else:
            raise RuntimeError(f"soak: the lab does not answer every probe: {r.last()}")
        res = self.exec_run(["true"])
        if res.returncode != 0:
            raise RuntimeError(f"soak: netleak-exec failed: {res.stderr.strip()}")

    def controls(self) -> None:
        """Each probe outside netleak: by the main table it leaves by up0;
        bound to lan0 (all but the loopback stub's) it leaves by lan0."""
        for name, link, probes, dev in (("control", "up0", PROBES, ""),
                                        ("control-lan0", "lan0", LAN_PROBES, "lan0")):
            run = Run(self.tmp, name, probes=probes, once=True, phase=name, dev=dev)
            with Captures(self.lab) as caps:
                self.lab.run(run.argv(), timeout=30)
                caps.stop()
            counts = caps.counts()
            rounds = run.rounds()
            saw = rounds[0][1] if rounds else {}
            for p in probes:
                packets = {lk: counts[lk][p.name] for lk in WATCHED}
                verdict = "seen" if packets[link] > 0 and link not in caps.blind else "BLIND"
                cell = Cell(name, p.name, packets, saw.get(p.name, "-"), verdict, 1)
                self.res.controls.append(cell)
                self.say(cell.line())
        self.control_hostile()

    def control_hostile(self) -> None:
        """The hostile state's forged sources, outside netleak (as nobody,
        with ip_nonlocal_bind on): their answers do leave by up0."""
        L = self.lab
        cases = [f"udp6=udp,::1,9", f"ping6=ping,::1,0", f"udp6-own=udp,{UP_ADDRS_ORDERED[1]},9"]
        L.sysctl(L.host, "net.ipv4.ping_group_range", "0 2147483647")
        for fam in ("ipv4", "ipv6"):
            L.sysctl(L.host, f"net.{fam}.ip_nonlocal_bind", "1")
        try:
            with Captures(self.lab) as caps:
                L.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       "/usr/bin/python3", "-c", SPOOF, S4, S6, "plain", *cases], timeout=60)
                caps.stop()
        finally:
            for fam in ("ipv4", "ipv6"):
                L.sysctl(L.host, f"net.{fam}.ip_nonlocal_bind", "0")
        counts = caps.counts()
        packets = {lk: sum(counts[lk].values()) for lk in WATCHED}
        verdict = "seen" if packets["up0"] > 0 and "up0" not in caps.blind else "BLIND"
        cell = Cell("control-hostile", "forged", packets, "-", verdict, 1)
        self.res.controls.append(cell)
        self.say(cell.line())

    def state(self, name: str, fn, probes=PROBES) -> None:
        st = State(name)
        t0 = time.monotonic()
        caps = Captures(self.lab)
        try:
            with caps:
                fn(st)
        except SetupError as e:
            st.failure = str(e)
        except subprocess.TimeoutExpired as e:
            st.failure = f"timed out after {e.timeout:.0f} s: {shlex.join(e.cmd[:8])} ..."
        except Exception as e:   # noqa: BLE001 - a state that breaks is reported, the rest run
            st.failure = f"{type(e).__name__}: {e}"
        finally:
            self.end_state(st)
        for link in caps.blind:
            st.failure = st.failure or f"the capture on {link} did not see its end marker"
        for cell in st.cells(caps, probes):
            self.res.cells.append(cell)
            self.say(cell.line())
        for note in st.notes:
            self.say(f"{name:<15} note: {note}")
        if st.failure:
            self.res.failures.append(f"{name}: {st.failure}")
            self.say(f"{name:<15} FAILED: {st.failure}")
        self.say(f"{name:<15} ({time.monotonic() - t0:.1f} s)")

    def end_state(self, st: State) -> None:
        """The state's workloads gone, vpn0 as built, every session reaped
        with its cgroup and rules."""
        w = self.world
        try:
            for run in st.runs:
                open(run.stop_file, "w").close()
            self.kill_workloads(keep_daemon=True)
            for p in self.lab.procs:
                if p not in self.servers and p.poll() is None:
                    p.kill()
                    p.wait()
            self.restore_vpn()
            if not wait_until(lambda: w.sessions() == 0 and w.cgroups() == []
                              and not w.our_rules(), timeout=30):
                st.failure = st.failure or (f"not reaped: {w.sessions()} sessions, cgroups "
                                            f"{w.cgroups()}, rules {w.our_rules()}")
        except (OSError, subprocess.SubprocessError) as e:
            st.failure = st.failure or f"cannot end the state: {e}"

    # ----- the states -----

    def st_first(self, st: State) -> None:
        """The probe is the exec'd command: it sends at once, from its first
        instruction; with vpn0 down (--via), nothing answers."""
        for i in range(self.reps(2, 10)):
            run = st.add(Run(self.tmp, f"first{i}", once=True, phase="start"))
            st.expect["start"] = "ok"
            r = self.exec_run(run.argv())
            if r.returncode != 0 or not run.rounds():
                raise SetupError(f"the session did not run: {r.stderr.strip()}")
        self.link("set", "vpn0", "down")
        for i in range(self.reps(1, 5)):
            run = st.add(Run(self.tmp, f"firstdown{i}", once=True, phase="start-down"))
            st.expect["start-down"] = "blocked"
            r = self.exec_run(run.argv(), via=True)
            if r.returncode != 0 or not run.rounds():
                raise SetupError(f"the session did not run (vpn0 down): {r.stderr.strip()}")

    def continuous(self, st: State, tag: str) -> Run:
        """A session whose command probes round after round; once routed."""
        run = st.add(Run(self.tmp, tag, phase="routed"))
        run.proc = self.exec_spawn(run.argv())
        self.routed(st, run)
        return run

    def st_down(self, st: State) -> None:
        """vpn0 goes down and comes back, probing throughout."""
        run = self.continuous(st, "down")
        for _ in range(self.reps(1, 5)):
            self.flap(st, run, self.reps(2, 5))
        run.finish()

    def st_recreate(self, st: State) -> None:
        """vpn0 deleted and made again (a new ifindex), probing throughout."""
        run = self.continuous(st, "recreate")
        for _ in range(self.reps(1, 5)):
            run.enter("~gone")
            self.link("del", "vpn0")
            self.wait_status("waiting")
            st.expect["gone"] = "blocked"
            run.enter("gone")
            run.wait_rounds("gone", self.reps(2, 5))
            self.resume(st, run, "back", lambda: self.lab.recreate("vpn0"), "on the new vpn0")
        run.finish()

    def st_wireguard(self, st: State) -> None:
        """A real WireGuard tunnel (wireguard-go configured with wg, its
        encrypted UDP by up0): a session on it probes while wireguard-go is
        SIGKILLed (its interface goes, its control socket stays) and started
        again (a new ifindex)."""
        need("wireguard-go", "wg")
        wg = WireGuard(self.lab, self.tmp)
        try:
            wg.start()
            run = st.add(Run(self.tmp, "wireguard", phase="routed", own=WG_PATH))
            run.proc = self.exec_spawn(run.argv(), iface=wg.iface)
            self.routed(st, run)
            for _ in range(self.reps(1, 5)):
                run.enter("~crash")
                before = wg.ifindex()
                wg.crash_host()
                self.wait_status("waiting")
                st.expect["crashed"] = "blocked"
                run.enter("crashed")
                run.wait_rounds("crashed", self.reps(2, 5))
                self.resume(st, run, "restarted", wg.start_host,
                            "after wireguard-go was started again")
                if wg.ifindex() == before:
                    raise SetupError("wireguard-go's new interface has the old ifindex")
            run.finish()
        finally:
            wg.close()

    def st_openvpn(self, st: State) -> None:
        """A real OpenVPN 2.6 tunnel with TLS (the server in NET, the client
        in HOST, its encrypted UDP by up0): a session on it probes while the
        client is SIGKILLed (its tun goes) and started again (a new
        ifindex), then sent SIGUSR1 (a reconnect: its tun closed and opened
        again, another new ifindex)."""
        need("openvpn", "openssl")
        folder = os.path.join(self.tmp, "openvpn")
        os.mkdir(folder)
        ovpn = OpenVPN(self.lab, folder)
        try:
            ovpn.start()
            run = st.add(Run(self.tmp, "openvpn", phase="routed", own=OVPN_PATH))
            run.proc = self.exec_spawn(run.argv(), iface=ovpn.iface)
            self.routed(st, run)
            for _ in range(self.reps(1, 5)):
                run.enter("~crash")
                before = ovpn.ifindex()
                ovpn.crash_client()
                self.wait_status("waiting")
                st.expect["crashed"] = "blocked"
                run.enter("crashed")
                run.wait_rounds("crashed", self.reps(2, 5))
                self.resume(st, run, "restarted", ovpn.start_client,
                            "after the OpenVPN client was started again")
                again = ovpn.ifindex()
                if again == before:
                    raise SetupError("the OpenVPN client's new tun has the old ifindex")
                self.resume(st, run, "reconnected", ovpn.reconnect,
                            "after the OpenVPN client's SIGUSR1 reconnect")
                if ovpn.ifindex() in (None, again):
                    raise SetupError("SIGUSR1 did not give the OpenVPN client a new tun")
            run.finish()
        finally:
            ovpn.close()

    def st_wg_quick_full(self, st: State) -> None:
        """A session on vpn0 while a wg-quick full tunnel (AllowedIPs
        0.0.0.0/0, ::/0) comes up, goes down and comes up again. wg-quick's
        rules, added with no priority, land ahead of netleak's, which move
        ahead again: after each step, once a round is answered by way of
        vpn0 (the rounds before are counted, not judged; they may go
        sealed through the tunnel, never in clear), every round must be,
        and status must say routed."""
        need("wireguard-go", "wg", "wg-quick")
        wg = WireGuard(self.lab, self.tmp)
        try:
            wg.start_net()
            wg.quick("0.0.0.0/0, ::/0")
            run = self.continuous(st, "wgquick")
            steps = [("quick-up", "up", wg.quick_up)]
            steps += [("quick-down", "down", wg.quick_down),
                      ("quick-up-again", "up", wg.quick_up)] * self.reps(1, 3)
            late = []
            for phase, verb, step in steps:
                run.enter("~" + phase)
                step()
                settle = f"~{phase}-settle"
                run.set_phase(settle)
                run.wait_all_ok(settle, f"the session's probes were not answered by way of "
                                        f"vpn0 after wg-quick {verb}")
                late.append(sum(not all(v == "ok" for v in r.values())
                                for r in run.tagged(settle)))
                st.expect[phase] = "ok"
                run.enter(phase)
                run.wait_rounds(phase, self.reps(3, 5))
                if self.states() != ["routed"]:
                    raise SetupError(f"status after wg-quick {verb}: {self.states()}")
                self.check_wg_quick(wg, verb == "up")
            st.notes.append("rounds not all answered by way of vpn0 just after each "
                            "wg-quick step: " + ", ".join(
                                f"{ph} {n}" for (ph, _, _), n in zip(steps, late)))
            run.finish()
        finally:
            wg.close()     # wg-quick down first if it is up: the captures' end markers

    def check_wg_quick(self, wg: WireGuard, up: bool) -> None:
        """With wg-quick's full tunnel UP, what is not a session's goes by
        it (v4 and v6), and netleak's rules come before wg-quick's; down,
        none of wg-quick's rules are left."""
        L = self.lab
        ours = set(self.world.our_rules())
        for fam, server in (("-4", S4), ("-6", S6)):
            dev = L.ip(L.host, fam, "route", "get", server).stdout
            if (f"dev {wg.iface} " in dev) != up:
                raise SetupError(f"wg-quick {'up' if up else 'down'}, yet the route to "
                                 f"{server} is {dev.strip()}")
            rules = L.ip(L.host, fam, "rule").stdout.splitlines()
            theirs = [int(ln.split(":")[0]) for ln in rules if "lookup 51820" in ln]
            mine = [int(ln.split(":")[0]) for ln in rules if ln in ours]
            if up and not (theirs and mine and max(mine) < min(theirs)):
                raise SetupError(f"netleak's rules are not ahead of wg-quick's ({fam}):\n"
                                 + "\n".join(rules))
            if not up and theirs:
                raise SetupError(f"wg-quick down left its rules ({fam}): {theirs}")

    def st_peer_silent(self, st: State) -> None:
        """vpn0 up, the far end without its addresses (the link-local stays,
        as on a real peer): what is sent by vpn0 gets no answer, and nothing
        may fall back to another link."""
        run = self.continuous(st, "silent")
        L = self.lab
        _, p4, _, p6 = lab.LINKS["vpn0"]
        for _ in range(self.reps(1, 2)):
            run.enter("~silent")
            L.ip(L.net, "addr", "del", f"{p4}/26", "dev", "vpn0p")
            L.ip(L.net, "addr", "del", f"{p6}/64", "dev", "vpn0p")
            st.expect["silent"] = "blocked"
            run.enter("silent")
            run.wait_rounds("silent", self.reps(2, 4))
            if self.states() != ["routed"]:
                raise SetupError(f"vpn0 is up: the session should stay routed: {self.states()}")
            self.resume(st, run, "back", self.restore_vpn, "once the peer answered")
        run.finish()

    def st_peer_down(self, st: State) -> None:
        """The far end of vpn0 down: vpn0 loses its carrier."""
        run = self.continuous(st, "peerdown")
        for _ in range(self.reps(1, 3)):
            run.enter("~peerdown")
            self.link("set", "vpn0p", "down", ns=self.lab.net)
            self.wait_status("kill-switch")
            st.expect["peerdown"] = "blocked"
            run.enter("peerdown")
            run.wait_rounds("peerdown", self.reps(2, 4))
            self.resume(st, run, "back", self.restore_vpn, "once the peer came back")
        run.finish()

    def st_escape(self, st: State) -> None:
        """Every socket bound to lan0 (SO_BINDTODEVICE) inside the session,
        as the exec'd command: dropped, never sent by lan0."""
        for i in range(self.reps(1, 3)):
            run = st.add(Run(self.tmp, f"escape{i}", probes=LAN_PROBES, once=True,
                             phase="bound", dev="lan0"))
            st.expect["bound"] = "blocked"
            r = self.exec_run(run.argv())
            if r.returncode != 0 or not run.rounds():
                raise SetupError(f"the session did not run: {r.stderr.strip()}")

    def st_daemonized(self, st: State) -> None:
        """A grandchild, double-forked into a session of its own, probes
        after the session's main process has exited; vpn0 then flaps."""
        run = st.add(Run(self.tmp, "daemon", phase="routed"))
        info = os.path.join(self.tmp, "daemon.info")
        r = self.exec_run([sys.executable, "-c", DAEMONIZE, info] + run.argv()[1:])
        if r.returncode != 0:
            raise SetupError(f"the session did not run: {r.stderr.strip()}")
        if not wait_until(lambda: _read(info).endswith("\n")):
            raise SetupError("the grandchild never started")
        pid, sid, ppid, main_sid = (int(x) for x in _read(info).split())
        run.pid = pid
        if sid == main_sid or sid == pid:
            raise SetupError(f"the grandchild is not daemonized: sid {sid}, main's {main_sid}")
        st.notes.append(f"grandchild {pid}: session {sid} (main's {main_sid}), parent {ppid}, "
                        f"main process gone")
        self.routed(st, run)
        rows = self.world.status()
        if [(x["state"], x["procs"]) for x in rows] != [("routed", 1)]:
            raise SetupError(f"the session does not hold the grandchild: {rows}")
        for _ in range(self.reps(1, 2)):
            self.flap(st, run, self.reps(2, 4))
        run.finish()

    def st_unshare(self, st: State) -> None:
        """Sockets opened after `unshare -n` inside the session: refused."""
        for i in range(self.reps(1, 3)):
            run = st.add(Run(self.tmp, f"unshare{i}", once=True, phase="unshare"))
            st.expect["unshare"] = "eperm"
            r = self.exec_run(["unshare", "-n"] + run.argv())
            if r.returncode != 0 or not run.rounds():
                raise SetupError(f"the session did not run: {r.stderr.strip()}")

    def st_sigkill(self, st: State) -> None:
        """Every netleak process SIGKILLed (the daemon, netleak-exec runs
        killed at random points of their set-up, whatever daemon those
        started); then vpn0 goes down, is deleted and made again with no
        netleak process alive. `netleak gc` brings netleak back."""
        run = self.continuous(st, "sigkill")
        rnd = random.Random(7)

        def kill_all() -> bool:
            for pid in self.netleak_pids():
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return self.netleak_pids() == []
        kill_all()      # the daemon: the runs below start another, killed too
        procs = []
        for _ in range(self.reps(3, 8)):
            p = self.exec_spawn(["sleep", "30"])
            procs.append(p)
            time.sleep(rnd.uniform(0.0, 0.25))
            p.kill()
            p.wait()
        if not wait_until(kill_all, timeout=10, step=0.2):
            raise SetupError(f"netleak processes survive SIGKILL: {self.netleak_pids()}")
        st.notes.append(f"{len(procs)} netleak-exec runs and every daemon SIGKILLed")
        st.expect["dead-up"] = "ok"
        run.enter("~dead-up")
        run.enter("dead-up")
        run.wait_rounds("dead-up", 2)
        steps = (("dead-down", ("set", "vpn0", "down")), ("dead-gone", ("del", "vpn0")),
                 ("dead-back", None))
        for phase, args in steps:
            run.enter("~" + phase)
            if args:
                self.link(*args)
            else:
                self.lab.recreate("vpn0")
            st.expect[phase] = "blocked"
            run.enter(phase)
            run.wait_rounds(phase, self.reps(2, 4))
            if self.netleak_pids():
                raise SetupError(f"a netleak process came back: {self.netleak_pids()}")
        run.enter("~repair")
        r = self.world.cli("gc", "--json")
        if r.returncode != 0:
            raise SetupError(f"netleak gc failed: {r.stderr.strip()}")
        st.expect["repaired"] = "resume"
        run.set_phase("repaired")
        run.wait_all_ok("repaired", "the workload did not resume after netleak gc")
        run.finish()

    def st_reaper(self, st: State) -> None:
        """netleak-exec's main command exits at once, leaving an orphan that
        probes; sessions on vpn0 and lan0 start and end around it (some
        killed mid-set-up), and the reaper ends each but the orphan's."""
        run = st.add(Run(self.tmp, "reaper", phase="orphan"))
        pidfile = os.path.join(self.tmp, "orphan.pid")
        cmd = f"{shlex.join(run.argv())} >/dev/null 2>&1 & echo $! > {pidfile}"
        r = self.exec_run(["sh", "-c", cmd])
        if r.returncode != 0:
            raise SetupError(f"the session did not run: {r.stderr.strip()}")
        run.pid = int(_read(pidfile))
        if not alive(run.pid):
            raise SetupError("the orphan ended before netleak-exec returned")
        self.routed(st, run, "orphan")
        ours = self.world.status()
        st.expect["around"] = "ok"
        run.enter("around")
        rnd = random.Random(11)
        kinds = (("vpn0", ["true"]), ("lan0", ["true"]), ("vpn0", ["sleep", "0.3"]),
                 ("lan0", ["sleep", "30"]))
        n = self.reps(8, 40)
        for _ in range(0, n, 4):
            batch = []
            for iface, cmd in kinds:
                batch.append((self.exec_spawn(cmd, iface=iface), cmd[-1] == "30"))
            for p, kill in batch:
                if kill:
                    time.sleep(rnd.uniform(0.0, 0.3))
                    p.kill()
                p.wait(timeout=60)
        if not wait_until(lambda: self.world.sessions() == 1, timeout=30):
            raise SetupError(f"sessions around the orphan not reaped: {self.world.sessions()}")
        st.notes.append(f"{n} sessions reaped around the orphan's")
        st.expect["after"] = "ok"
        run.enter("after")
        run.wait_rounds("after", 2)
        rows = self.world.status()
        if [(x["id"], x["state"], x["procs"]) for x in rows] != \
                [(ours[0]["id"], "routed", 1)]:
            raise SetupError(f"the orphan's session changed: {ours} -> {rows}")
        run.finish()

    def st_other_tool(self, st: State) -> None:
        """Another tool's egress program that passes everything, attached
        with BPF_F_ALLOW_MULTI to the session's cgroup: ours still drop."""
        from bcc import BPF
        holder = self.exec_spawn(["sleep", "300"])
        if not wait_until(lambda: [x["procs"] for x in self.world.status()] == [1], timeout=20):
            raise SetupError("the holding session did not start")
        path = cgroupfs.abspath(cgroupfs.find_cgroup2(), self.world.status()[0]["cgroup"])
        b = BPF(text=THEIRS)
        cfd = -1
        try:
            fn = b.load_func(b"theirs", BPF.CGROUP_SKB)
            cfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
            bpfsys.prog_attach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
            ids = bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
            if bpfsys.prog_id(fn.fd) not in ids or len(ids) != 2:
                raise SetupError(f"not both programs on the cgroup: {ids}")
            run = st.add(Run(self.tmp, "other", phase="routed"))
            join = f'echo $$ > {path}/cgroup.procs && exec "$@"'
            run.proc = self.lab.spawn(["sh", "-c", join, "sh"] + run.argv(),
                                      stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.routed(st, run)
            seen = b[b"seen"][0].value
            for _ in range(self.reps(1, 3)):
                self.flap(st, run, self.reps(2, 4))
            run.finish()
            if b[b"seen"][0].value <= seen:
                raise SetupError("their program saw none of the packets")
            st.notes.append(f"their program counted {b[b'seen'][0].value} packets, "
                            f"ours enforced beside it")
            bpfsys.prog_detach(fn.fd, cfd, bpfsys.BPF_CGROUP_INET_EGRESS)
        finally:
            if cfd >= 0:
                os.close(cfd)
            b.cleanup()
            holder.kill()
            holder.wait()

    def st_hostile(self, st: State) -> None:
        """A hostile workload, as nobody, beside a routed session probing:
        forged sources sent to loopback and the host's own addresses (with
        the ip_nonlocal_bind sysctl on, and by IP_FREEBIND), a socket of its
        user's other process taken (pidfd_getfd), AF_VSOCK and AF_PACKET,
        MPTCP. Whatever of it got out shows on the captures: answers to the
        forged sources are no probe's, so any is an unattributed leak."""
        L = self.lab
        run = self.continuous(st, "hostile")
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        py = "/usr/bin/python3"
        own4, own6 = UP_ADDRS_ORDERED
        cases = [f"{k}{t}={k},{h},{port}" for t, h in (("4", "127.0.0.1"), ("6", "::1"),
                                                       ("4-own", own4), ("6-own", own6))
                 for k, port in (("udp", 9), ("tcp", 9), ("ping", 0), ("dns", 53))]
        victim = L.spawn(nobody + [py, "-c", VICTIM, S4], stdout=subprocess.PIPE, text=True)
        try:
            if victim.stdout.readline().strip() != "ready":
                raise SetupError("the victim process did not start")
            L.sysctl(L.host, "net.ipv4.ping_group_range", "0 2147483647")
            attempts = {"freebind": [py, "-c", SPOOF, S4, S6, "freebind", *cases],
                        "take-over": [py, "-c", TAKE_OVER, str(victim.pid)],
                        "families": [py, "-c", FAMILIES], "mptcp": [py, "-c", MPTCP, S4]}
            for fam in ("ipv4", "ipv6"):
                L.sysctl(L.host, f"net.{fam}.ip_nonlocal_bind", "1")
            attempts["nonlocal"] = [py, "-c", SPOOF, S4, S6, "plain", *cases]
            st.expect["routed"] = "ok"
            for _ in range(self.reps(1, 3)):
                for what, argv in attempts.items():
                    r = self.lab.run(EXEC + ["-u", "nobody", "vpn0", *argv], env=self.world.env,
                                     timeout=120)
                    self.judge_hostile(what, r)
        finally:
            for fam in ("ipv4", "ipv6"):
                L.sysctl(L.host, f"net.{fam}.ip_nonlocal_bind", "0")
            victim.kill()
            victim.wait()
        run.wait_rounds("routed", 1)
        run.finish()

    @staticmethod
    def judge_hostile(what: str, r: subprocess.CompletedProcess) -> None:
        """What the workload saw of each attempt, against what must be."""
        out = dict(ln.split(" ", 1) for ln in r.stdout.splitlines() if " " in ln)
        bad = []
        if what == "freebind":
            bad = [k for k, v in out.items() if not v.startswith("refused setsockopt")]
        elif what == "take-over":
            bad = [k for k, v in out.items() if not v.startswith("refused")]
        elif what == "families":
            bad = [k for k in ("vsock", "packet") if not out.get(k, "").startswith("refused")]
        elif what == "mptcp":
            bad = [] if out.get("mptcp", "").startswith("refused") else ["mptcp"]
        # the MPTCP probe's TCP fallback finds no server on its port here
        if (r.returncode != 0 and what != "mptcp") or bad or not out:
            raise SetupError(f"hostile {what}: {', '.join(bad) or 'no run'}: "
                             f"{r.stdout.strip()[-300:]} {r.stderr.strip()[-200:]}")

    def st_churn(self, st: State) -> None:
        """Sessions created and reaped in a loop, a few at a time: most on
        vpn0 probing once, some on lan0, one in ten killed mid-set-up.
        Afterwards nothing of them may be left."""
        w = self.world
        routes0 = self.routes()
        n = self.reps(20, 200)
        rnd = random.Random(3)
        active: list[subprocess.Popen] = []
        st.expect["churn"] = "ok"
        for i in range(n):
            while len(active) >= 6:
                active.pop(0).wait(timeout=120)
            if i % 4 == 3:
                p = self.exec_spawn(["true"], iface="lan0")
            else:
                run = st.add(Run(self.tmp, f"churn{i}", probes=CHURN_PROBES, once=True,
                                 phase="churn"))
                p = self.exec_spawn(run.argv())
            if i % 10 == 9:
                time.sleep(rnd.uniform(0.0, 0.2))
                p.kill()
            active.append(p)
        for p in active:
            p.wait(timeout=120)
        self.res.churn_sessions = n
        wait_until(lambda: w.sessions() == 0 and w.cgroups() == [] and not w.our_rules(),
                   timeout=30)
        left = []
        if w.sessions():
            left.append(f"{w.sessions()} sessions in the state file")
        if w.cgroups():
            left.append(f"session cgroups {w.cgroups()}")
        if w.rules() != self.rules0:
            left.append(f"ip rules differ:\n{w.rules()}")
        if w.our_routes():
            left.append(f"routes in netleak's tables:\n{w.our_routes()}")
        if self.routes() != routes0:
            left.append("the routes differ from before")
        keys = self.policy_keys()
        if keys:
            left.append(f"{len(keys)} policy map entries")
        self.res.churn_left = left

    def routes(self) -> str:
        L = self.lab
        return "".join(L.ip(L.host, fam, "route", "show", "table", "all").stdout
                       for fam in ("-4", "-6"))

    def policy_keys(self) -> set[int]:
        return policy_keys(self.own.bpf_dir)

    def run_all(self) -> None:
        self.warm_up()
        self.controls()
        for name, method, probes in STATES:
            self.state(name, getattr(self, method), probes)


# the matrix: (state, Soak method, probes)
STATES = (
    ("first-instr", "st_first", PROBES),
    ("down", "st_down", PROBES),
    ("recreate", "st_recreate", PROBES),
    ("wireguard-go", "st_wireguard", PROBES),
    ("openvpn", "st_openvpn", PROBES),
    ("wg-quick-full", "st_wg_quick_full", PROBES),
    ("peer-silent", "st_peer_silent", PROBES),
    ("peer-down", "st_peer_down", PROBES),
    ("escape-lan0", "st_escape", LAN_PROBES),
    ("daemonized", "st_daemonized", PROBES),
    ("unshare-n", "st_unshare", PROBES),
    ("sigkill-all", "st_sigkill", PROBES),
    ("reaper", "st_reaper", PROBES),
    ("other-tool", "st_other_tool", PROBES),
    ("hostile", "st_hostile", PROBES),
    ("churn", "st_churn", CHURN_PROBES),
)


def run_matrix(short: bool = False, say=print) -> Results:
    """Build the lab, run every state, tear it all down; the results."""
    t0 = time.monotonic()
    soak = Soak(short, say)
    with soak:
        try:
            soak.run_all()
        except (RuntimeError, SetupError, subprocess.SubprocessError, OSError) as e:
            soak.res.failures.append(f"setup: {type(e).__name__}: {e}")
    res = soak.res
    res.leftovers = soak.leftovers()
    res.seconds = time.monotonic() - t0
    return res


def report(res: Results, say=print) -> None:
    """The summary after the cells."""
    blind = [c.probe for c in res.controls if c.verdict != "seen"]
    say(f"controls: {len(res.controls)}, blind: {', '.join(blind) or 'none'}")
    for state, probe in res.missing():
        say(f"missing cell: {state} {probe}")
    for f in res.failures:
        say(f"FAILED {f}")
    say(f"churn: {res.churn_sessions} sessions; left behind: "
        + ("; ".join(res.churn_left) or "nothing"))
    say("cleanup: " + ("; ".join(res.leftovers) or "nothing left"))
    say(f"duration: {res.seconds:.0f} s")
    say(f"total leaked: {res.total_leaked}")


def main(argv: list[str]) -> int:
    short = "--short" in argv
    if os.geteuid() != 0:
        print("soak: needs root (network namespaces, cgroups, BPF)", file=sys.stderr)
        return 2
    # SIGTERM ends the run like Ctrl-C: everything made is removed first
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    res = run_matrix(short)
    report(res)
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
