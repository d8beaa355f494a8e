"""make bench: what users feel, measured side by side in one run inside
throwaway labs (lab.Lab: HOST with up0 and vpn0, NET with the servers).

Every figure is the median of repeated runs, interleaved with its baseline
so that drift hits both alike, and is reported as a ratio against it:
start time, TCP and 64-byte UDP throughput and the connect() rate inside a
session next to outside one on the same path (with what each netleak
program spent in the runs inside, as the kernel counts it with
kernel.bpf_stats_enabled on for them, and then back as it was), the egress
program's own time per packet, a scale run of many concurrent sessions,
proxy mode next to proxychains4 and to the client's own SOCKS5 through one
microsocks (netleak once per relay forwarding mode), and systemd's own
IPAddressDeny/Allow scope as a peer on a real systemd host. Writes
bench/results.json, bench/scale.png and the table in README.md."""
from __future__ import annotations

import argparse
import compileall
import contextlib
import datetime
import functools
import json
import os
import platform
import queue
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench import report  # noqa: E402
from netleak_hook import lab  # noqa: E402

FULL = dict(start_rounds=40, cold_rounds=5, lone_rounds=20, paused_rounds=10,
            traffic_rounds=25, traffic_seconds=2, connects=3000, sessions=1000,
            scale_rounds=15, reap_rounds=5, test_runs=15,
            proxy_rounds=10, proxy_seconds=1, proxy_connects=200,
            systemd_rounds=15, systemd_packets=10000, systemd_bursts=5)
QUICK = dict(start_rounds=3, cold_rounds=1, lone_rounds=3, paused_rounds=2,
             traffic_rounds=2, traffic_seconds=1, connects=200, sessions=20,
             scale_rounds=2, reap_rounds=1, test_runs=2,
             proxy_rounds=2, proxy_seconds=1, proxy_connects=200,
             systemd_rounds=3, systemd_packets=2000, systemd_bursts=1)
PARTS = ("start", "traffic", "proxy", "program", "scale", "systemd")
# the traffic figures whose runs inside a session have the programs' costs
TRAFFIC_LABELS = {"tcp_throughput": "TCP throughput", "udp_64b_rate": "UDP 64-byte",
                  "connect_rate": "TCP connect() + close"}

# proxy mode: microsocks on an address of its own in NET, a source by the
# server's address; bench/bulk.py is the source, the fetcher and the connect loop
PROXY4, PROXY_PORT, SOURCE_PORT = "203.0.113.20", 1080, 8083
BULK = os.path.join(ROOT, "bench", "bulk.py")
# the relay's forwarding modes, each measured with the daemon started with
# NETLEAK_RELAY_FORWARD set to it: splice alone, as the relay does not
# forward in the kernel (sockmap; README: Limits), whose row says so
RELAY_MODES = ("splice",)
# the paths through the proxy, in a round's order (reversed every other round)
PROXY_PATHS = (*(f"netleak:{m}" for m in RELAY_MODES), "proxychains4", "own")
PROXY_STARTS = 3        # starts of the one-connection client per path and round

# the warm start's baseline, and the command under netleak-exec beside it:
# the system's interpreter, not the venv's
SYSTEM_PYTHON = ["/usr/bin/python3", "-c", "pass"]
# the least pause before a lone start "after a pause"; longer when netleak
# says how long an interface's set-up lingers after its last session
LONE_PAUSE_SECONDS = 3.0

# the systemd part (its scope allows the lab's server alone, by the default
# route; netleak's session goes by vpn0): the start loop (runs each of two
# prefixes of `python3 -c pass` in turn: their ms) and the burst (says its
# cgroup, waits for GO, sends N datagrams to the lab's server, reading each
# echo, says "done", waits for END)
SD_START = r"""
import json, subprocess, sys, time
prefixes, rounds = json.loads(sys.argv[1]), int(sys.argv[2])
out = [[] for _ in prefixes]
for r in range(rounds):
    order = list(range(len(prefixes)))
    if r % 2:
        order.reverse()
    for i in order:
        t0 = time.perf_counter()
        subprocess.run(prefixes[i] + ["/usr/bin/python3", "-c", "pass"], check=True)
        out[i].append((time.perf_counter() - t0) * 1000)
print(json.dumps(out))
"""
SD_BURST = r"""
import os, socket, sys, time
host, port, n, go, end = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
print(open("/proc/self/cgroup").read().split("::", 1)[1].strip(), flush=True)
def wait(path):
    deadline = time.monotonic() + 60
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            sys.exit("no " + path)
        time.sleep(0.01)
wait(go)
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.connect((host, port))
for _ in range(n):
    s.send(b"x" * 18)
    s.recv(2048)
print("done", flush=True)
wait(end)
"""

CONNECT_PORT = 8081
# connect() and close, N times; prints connects per second. SO_LINGER 0
# closes with a reset: no TIME_WAIT piling up over the rounds.
CONNECT_CLIENT = r"""
import socket, struct, sys, time
host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
linger = struct.pack("ii", 1, 0)
t0 = time.perf_counter()
for _ in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
    s.connect((host, port))
    s.close()
print(n / (time.perf_counter() - t0))
"""
CONNECT_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(4096)
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.close()
"""


BPF_STATS = "/proc/sys/kernel/bpf_stats_enabled"


@contextlib.contextmanager
def bpf_stats():
    """kernel.bpf_stats_enabled on for the block (the kernel then counts
    each program's runs and time), its old value back after it, whatever
    ends the block. The sysctl is the machine's, not a namespace's. Yields
    whether the kernel has it."""
    try:
        with open(BPF_STATS) as f:
            old = f.read().strip()
    except FileNotFoundError:
        old = ""
    if not old:
        yield False
        return
    try:
        with open(BPF_STATS, "w") as f:
            f.write("1")
        yield True
    finally:
        with open(BPF_STATS, "w") as f:
            f.write(old)


def prog_snapshot(bpf_dir: str) -> dict[str, tuple[int, int]]:
    """(run_time_ns, run_cnt) of each program of the current pin set under
    BPF_DIR, by name (none before the first session pins them)."""
    from netleak_hook.kernel import bpfsys, pinning
    path = os.path.join(bpf_dir, pinning.pinset_name())
    out = {}
    for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
        if name.startswith("prog_"):
            fd = bpfsys.obj_get(os.path.join(path, name))
            try:
                out[name[len("prog_"):]] = bpfsys.prog_run_stats(fd)
            finally:
                os.close(fd)
    return out


def linger_seconds(env: dict) -> float | None:
    """How long netleak keeps an interface's set-up after its last session,
    when it says so (NETLEAK_LINGER_SECONDS, or a config attribute named
    for it); None when it does not."""
    raw = env.get("NETLEAK_LINGER_SECONDS")
    if raw is None:
        try:
            from netleak_hook.core.config import Config
            cfg = Config.from_env(env)
            raw = next((getattr(cfg, a) for a in dir(cfg) if "linger" in a), None)
        except Exception:       # any version of the config: not ours to judge here
            raw = None
    try:
        return float(raw) if raw is not None else None
    except (TypeError, ValueError):
        return None


def machine() -> dict:
    def first(path: str, key: str, default: str = "?") -> str:
        try:
            with open(path) as f:
                for line in f:
                    if line.startswith(key):
                        return line.split(":", 1)[1].strip() if ":" in line \
                            else line.split("=", 1)[1].strip().strip('"')
        except OSError:
            pass
        return default
    try:
        import bcc
        bcc_version = getattr(bcc, "__version__", "?")
    except ImportError:
        bcc_version = "absent"
    iperf = subprocess.run(["iperf3", "--version"], capture_output=True, text=True)
    return {
        "date": datetime.date.today().isoformat(),
        "cpu": first("/proc/cpuinfo", "model name"),
        "cpus": os.cpu_count(),
        "memory_gb": int(first("/proc/meminfo", "MemTotal", "0 kB").split()[0]) / 2**20,
        "os": first("/etc/os-release", "PRETTY_NAME="),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "bcc": bcc_version,
        "iperf3": (iperf.stdout.split() or ["?", "?"])[1],
    }


class Bench:
    """One lab and one netleak environment for the whole run."""

    def __init__(self, plan: dict) -> None:
        self.plan = plan
        self.exec_bin = os.path.join(os.path.dirname(sys.executable), "netleak-exec")
        self.own = lab.Isolated("bench")
        self.world = lab.Lab(f"nlbench{os.getpid() % 1000}")
        self.figures: list[report.Figure] = []
        self.rows: list[report.Figure | report.Missing] = []     # the table's, in order
        self.series: dict[str, list] = {}
        self.failures: dict[str, str] = {}      # part -> why it has no figures
        # (workload, {program: (ns, runs)}) of each traffic run inside a
        # session, counted by the kernel; None while its counting is off
        self.prog_runs: list[tuple[str, dict]] | None = None
        self._proxy_pid: int | None = None
        self._pc_dir = ""                       # proxychains4's configuration
        self._relay_mode = ""                   # that the running daemon was started with
        self.proxy_peers: list[dict] = []
        self.program_costs: list[dict] = []

    def __enter__(self) -> "Bench":
        self.own.__enter__()
        try:
            self.world.__enter__()
            self.idle_rules = self.rules()      # no session yet: the lab's own
        except BaseException:
            self.own.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.world.__exit__(*exc)
        finally:
            self.own.__exit__(*exc)

    @property
    def env(self) -> dict:
        return self.own.env

    def add(self, *args, **kw) -> report.Figure:
        f = report.figure(*args, **kw)
        self.figures.append(f)
        self.rows.append(f)
        print(f"  {f.label}: {f.value:,.3f} {f.unit} vs {f.baseline:,.3f} "
              f"({f.baseline_label}), ratio {f.ratio:.3f}", flush=True)
        return f

    def missing(self, key: str, label: str, why: str, goal: str = "") -> None:
        """A row of the table that has no figure: not measured, and why."""
        self.rows.append(report.Missing(key, label, why, goal))
        print(f"  {label}: not measured ({why})", flush=True)

    def timed(self, argv: list[str], pythonpath: str = "") -> float:
        env = dict(self.env, PYTHONPATH=pythonpath) if pythonpath else self.env
        t0 = time.perf_counter()
        r = self.world.run(argv, env=env)
        dt = time.perf_counter() - t0
        if r.returncode != 0:
            raise SystemExit(f"bench: {' '.join(argv[:3])} failed: {r.stderr.strip()}")
        return dt

    def hold(self, iface: str = "vpn0") -> tuple[object, float]:
        """A session that stays: (its process, seconds until its command ran)."""
        t0 = time.perf_counter()
        p = self.world.spawn([self.exec_bin, iface, "sh", "-c", "echo up; exec sleep 86400"],
                             env=self.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
        line = p.stdout.readline()
        dt = time.perf_counter() - t0
        p.stdout.close()
        if line.strip() != "up":
            raise SystemExit(f"bench: a session did not start: {p.stderr.read().strip()}")
        p.stderr.close()
        return p, dt

    def wait_sessions(self, n: int, timeout: float = 600) -> float:
        """Seconds until the state file holds N sessions."""
        t0 = time.perf_counter()
        while self.own.sessions() != n:
            if time.perf_counter() - t0 > timeout:
                raise SystemExit(f"bench: {self.own.sessions()} sessions, expected {n}")
            time.sleep(0.005)
        return time.perf_counter() - t0

    # ----- start time -----

    def start(self) -> None:
        from netleak_hook.kernel import programs
        p = self.plan
        print("start time", flush=True)
        # cold: no pins (programs compiled), no daemon: the first start after boot
        cold = []
        for _ in range(p["cold_rounds"]):
            self.wait_sessions(0)           # the last round's, reaped by its daemon
            lab.stop_daemon(self.own.run_dir)
            programs.remove_pins(self.own.bpf_dir)
            cold.append(self.timed([self.exec_bin, "vpn0", "true"]))
        other = self.plan.get("compare")
        # byte code written first, so neither tree is timed compiling
        for tree in (ROOT, other) if other else (ROOT,):
            compileall.compile_dir(os.path.join(tree, "netleak_hook"), quiet=1)
        self._start_lone()
        holder, _ = self.hold()      # warm: the daemon is up and vpn0 bound
        warm, py, before, held, held_py = [], [], [], [], []
        for r in range(p["start_rounds"]):
            warm.append(self.timed([self.exec_bin, "vpn0", "true"]))
            py.append(self.timed([sys.executable, "-c", "pass"]))
            for mine in ((True, False) if r % 2 == 0 else (False, True)):
                (held if mine else held_py).append(
                    self.timed(([self.exec_bin, "vpn0"] if mine else []) + SYSTEM_PYTHON))
            if other:
                before.append(self.timed([sys.executable, os.path.join(
                    other, "bin", "netleak-exec"), "vpn0", "true"], pythonpath=other))
        holder.kill()
        holder.wait()
        ms = [x * 1000 for x in warm]
        self.add("warm_start_held", "warm start beside a holder session on vpn0: "
                 "`netleak-exec vpn0 python3 -c pass`", "ms", [x * 1000 for x in held],
                 [x * 1000 for x in held_py], "`python3 -c pass`", goal="ratio <= 3",
                 paired=True)
        self.add("warm_start", "warm start, the kinder case (a holder session on vpn0, "
                 "`true` against a Python): `netleak-exec vpn0 true`", "ms", ms,
                 [x * 1000 for x in py], "`python3 -c pass`", paired=True)
        if other:
            self.add("warm_start_compare", "warm start beside a holder, this tree vs "
                     "--compare's", "ms", ms, [x * 1000 for x in before],
                     os.path.basename(other.rstrip("/")), paired=True)
        self.add("cold_start", "cold start (no pins, no daemon)", "ms",
                 [x * 1000 for x in cold], ms, "warm start beside a holder")
        self.wait_sessions(0)

    def _start_lone(self) -> None:
        """Warm start alone on vpn0: the daemon up and the pins there, no
        other session on the interface. Back to back: each round once the
        last one's session is reaped (a linger may still hold vpn0's set-up).
        After a pause: also once its rules are gone, and a pause longer than
        any linger (as one command at a time meets it)."""
        p = self.plan
        pause = report.lone_pause(linger_seconds(self.env), LONE_PAUSE_SECONDS)
        print(f"  lone starts: back to back, and after a {pause:.1f} s pause", flush=True)
        b2b, b2b_py, paused, paused_py = [], [], [], []
        for paused_round, rounds in ((False, p["lone_rounds"]), (True, p["paused_rounds"])):
            mine_runs, base_runs = (paused, paused_py) if paused_round else (b2b, b2b_py)
            for r in range(rounds):
                self.wait_sessions(0, timeout=60)
                self.ensure_daemon_up()         # before the pause: its session is reaped too
                if paused_round:
                    time.sleep(pause)
                    self.wait_rules(self.idle_rules, timeout=60)
                for mine in ((True, False) if r % 2 == 0 else (False, True)):
                    (mine_runs if mine else base_runs).append(1000 * self.timed(
                        ([self.exec_bin, "vpn0"] if mine else []) + SYSTEM_PYTHON))
        self.wait_sessions(0, timeout=60)
        self.add("warm_start_lone_paused", f"warm start alone on vpn0, after a {pause:.0f} s "
                 "pause (no session, no rules): `netleak-exec vpn0 python3 -c pass`", "ms",
                 paused, paused_py, "`python3 -c pass`", goal="ratio <= 3", paired=True)
        self.add("warm_start_lone", "warm start alone on vpn0, back to back (the last "
                 "session just reaped)", "ms", b2b, b2b_py, "`python3 -c pass`", paired=True)
        self.series["lone_pause_seconds"] = pause

    def ensure_daemon_up(self) -> None:
        """The daemon running (it leaves after a minute without sessions):
        started by an untimed session if it is not."""
        from netleak_hook.rundir.store import Store
        if Store(self.own.run_dir).daemon_pid() is None:
            print("  (the daemon was not running: started by an untimed session)", flush=True)
            self.timed([self.exec_bin, "vpn0", "true"])
            self.wait_sessions(0, timeout=60)

    def wait_rules(self, n: int, timeout: float) -> None:
        """Until HOST has N routing rules (netleak's of the last session gone)."""
        deadline = time.monotonic() + timeout
        while self.rules() != n:
            if time.monotonic() > deadline:
                raise SystemExit(f"bench: {self.rules()} routing rules {timeout:.0f} s after "
                                 f"the last session, expected {n}")
            time.sleep(0.02)

    # ----- traffic on one path, inside a session and outside -----

    def _iperf(self, inside: bool, udp: bool) -> float:
        """One iperf3 run by up0: bits/s sent (TCP) or 64-byte datagrams/s (UDP)."""
        args = ["iperf3", "-c", lab.SERVER4, "-t", str(self.plan["traffic_seconds"]), "-J"]
        if (os.cpu_count() or 1) >= 2:      # client and server on CPUs of their own
            args += ["-A", "0,1"]
        if udp:
            args += ["-u", "-l", "64", "-b", "0"]
        argv = [self.exec_bin, "up0", *args] if inside else args
        for _ in range(3):      # the server takes one test at a time: a busy one refuses
            r = self.world.run(argv, env=self.env, timeout=60)
            try:
                out = json.loads(r.stdout)
            except ValueError:
                out = {"error": r.stderr.strip()}
            if r.returncode == 0 and "error" not in out:
                break
            time.sleep(0.5)
        else:
            raise SystemExit(f"bench: iperf3 failed: {out.get('error')}")
        end = out["end"]
        if udp:
            return end["sum"]["packets"] / end["sum"]["seconds"]
        return end["sum_sent"]["bits_per_second"]

    def _connects(self, inside: bool) -> float:
        args = [sys.executable, "-c", CONNECT_CLIENT, lab.SERVER4, str(CONNECT_PORT),
                str(self.plan["connects"])]
        argv = [self.exec_bin, "up0", *args] if inside else args
        r = self.world.run(argv, env=self.env, timeout=120)
        if r.returncode != 0:
            raise SystemExit(f"bench: connect loop failed: {r.stderr.strip()}")
        return float(r.stdout)

    def servers(self) -> None:
        self.world.spawn(["iperf3", "-s", "-B", lab.SERVER4], ns=self.world.net,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        srv = self.world.spawn([sys.executable, "-c", CONNECT_SERVER, lab.SERVER4,
                                str(CONNECT_PORT)], ns=self.world.net,
                               stdout=subprocess.PIPE, text=True)
        if srv.stdout.readline().strip() != "ready":
            raise SystemExit("bench: the connect server did not start")
        probe = ("import socket, sys; socket.create_connection((sys.argv[1], 5201), 1)")
        deadline = time.monotonic() + 10
        while self.world.run([sys.executable, "-c", probe, lab.SERVER4]).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("bench: the iperf3 server does not answer")
            time.sleep(0.1)

    def udp_pair(self, rounds: int) -> tuple[list[float], list[float]]:
        inside, outside = [], []
        for i in range(rounds):
            for where in ((True, False) if i % 2 == 0 else (False, True)):
                (inside if where else outside).append(self._iperf(where, True) / 1e3)
        return inside, outside

    def _counted(self, workload: str, inside: bool, run) -> float:
        """RUN(inside); one inside a session has what netleak's programs
        spent in it added to prog_runs, as the kernel counted it."""
        if not inside or self.prog_runs is None:
            return run(inside)
        before = prog_snapshot(self.own.bpf_dir)
        x = run(inside)
        self.prog_runs.append((workload, report.run_delta(
            before, prog_snapshot(self.own.bpf_dir))))
        return x

    def traffic(self) -> None:
        print("traffic by up0, inside a session and outside", flush=True)
        with bpf_stats() as counting:
            if counting:
                self.prog_runs = []
            else:
                print("  no kernel.bpf_stats_enabled: no program costs", flush=True)
            try:
                self._traffic()
            finally:
                runs, self.prog_runs = self.prog_runs, None
        if runs:
            self.series["program_runs"] = [{"workload": w, **{p: list(v) for p, v in d.items()}}
                                           for w, d in runs]
            self.program_costs = report.program_costs(runs)
            print(report.program_table(self.program_costs, TRAFFIC_LABELS), flush=True)

    def _traffic(self) -> None:
        p = self.plan
        tcp_in, tcp_out, conn_in, conn_out = [], [], [], []
        udp_in, udp_out = [], []
        tcp, udp = (functools.partial(self._iperf, udp=u) for u in (False, True))
        for r in range(p["traffic_rounds"]):
            # in and out alternate which goes first, so that drift hits both alike
            order = (True, False) if r % 2 == 0 else (False, True)
            for inside in order:
                (tcp_in if inside else tcp_out).append(
                    self._counted("tcp_throughput", inside, tcp) / 1e9)
            for inside in order:
                (udp_in if inside else udp_out).append(
                    self._counted("udp_64b_rate", inside, udp) / 1e3)
            for inside in order:
                (conn_in if inside else conn_out).append(
                    self._counted("connect_rate", inside, self._connects))
        self.add("tcp_throughput", "TCP throughput (iperf3)", "Gbit/s", tcp_in, tcp_out,
                 "outside", goal="ratio >= 0.97", paired=True)
        self.add("udp_64b_rate", "UDP 64-byte datagrams (iperf3)", "kpps", udp_in, udp_out,
                 "outside", goal="ratio >= 0.97", paired=True)
        self.add("connect_rate", "TCP connect() + close", "conn/s", conn_in, conn_out,
                 "outside", goal="ratio >= 0.95", paired=True)
        self._connect_share(conn_out)

    def _connect_share(self, conn_out: list[float]) -> None:
        """netleak's programs' ns per connect in each connect loop inside
        (the kernel's count, all programs summed) against the ns a connect
        takes outside in the same round."""
        label = "connect share: netleak's programs' time per connect (bpf_stats)"
        goal = "ratio <= 0.05"
        if self.prog_runs is None:
            self.missing("connect_share", label, "kernel.bpf_stats_enabled absent", goal)
            return
        ns = [report.ns_per(d, self.plan["connects"]) for w, d in self.prog_runs
              if w == "connect_rate"]
        self.add("connect_share", label, "ns", ns, [1e9 / x for x in conn_out],
                 "a connect() + close outside", goal=goal, paired=True)

    # ----- proxy mode against its peers, through the same proxy -----

    def proxy(self) -> None:
        """The same programs of bench/bulk.py (a trivial client, a connect
        loop, a bulk download) through the same microsocks, four ways:
        under `netleak-exec --proxy` with the daemon started in each relay
        forwarding mode, under proxychains4, and doing the SOCKS5 handshake
        themselves. Each round runs every path once, the order reversed
        every other round (one daemon restart a round). A failure is
        reported (and the part left out of the table), never waited on."""
        p = self.plan
        print("proxy mode: netleak by relay mode, proxychains4 and the client's own "
              "SOCKS5, through one microsocks", flush=True)
        started: list[Proc] = []
        runs: dict[str, list[dict]] = {path: [] for path in PROXY_PATHS}
        status: dict[str, str] = {}
        try:
            for tool in ("microsocks", "proxychains4"):
                if shutil.which(tool) is None:
                    raise ProxyFailed(f"{tool} is missing: 'make bench' installs it")
            self._proxy_servers(started)
            for path in PROXY_PATHS:
                self._path_ready(path, status)
            order = list(PROXY_PATHS)
            for r in range(p["proxy_rounds"]):
                for path in order:
                    self._path_ready(path, status)
                    runs[path].append(self._proxy_round(path))
                order.reverse()
        except (ProxyFailed, OSError, subprocess.SubprocessError, ValueError) as e:
            return self._proxy_failed(e)
        except SystemExit as e:
            if not isinstance(e.code, str):     # SIGTERM, or an exit of ours: go on out
                raise
            return self._proxy_failed(e.code)
        finally:
            self._proxy_cleanup(started)
        self._proxy_figures(runs, status)

    def _proxy_figures(self, runs: dict[str, list[dict]], status: dict[str, str]) -> None:
        p = self.plan

        def col(path: str, what: str) -> list[float]:
            return [x[what] for x in runs[path]]

        own, pc = "own", "proxychains4"
        for mode in RELAY_MODES:
            path = f"netleak:{mode}"
            name = f"`netleak-exec --proxy` ({mode})"
            self.add(f"proxy_bulk_{mode}", f"proxy download: {name}", "MB/s",
                     col(path, "mbps"), col(own, "mbps"), "client's own SOCKS5",
                     goal="ratio >= 0.97", paired=True)
            self.add(f"proxy_connect_{mode}", f"proxy connect + first byte, median of "
                     f"{p['proxy_connects']}: {name}", "ms", col(path, "connect_ms"),
                     col(pc, "connect_ms"), "proxychains4", goal="ratio <= 1.2", paired=True)
            self.add(f"proxy_start_{mode}", f"proxy start, a one-connection client: {name}",
                     "ms", col(path, "start_ms"), col(pc, "start_ms"), "proxychains4",
                     paired=True)
            self.add(f"proxy_machine_cpu_{mode}", f"proxy download, machine CPU per GB: "
                     f"{name}", "s/GB", col(path, "machine_s_per_gb"),
                     col(own, "machine_s_per_gb"), "client's own SOCKS5", paired=True)
        self.add("proxy_bulk_proxychains4", "proxy download: proxychains4", "MB/s",
                 col(pc, "mbps"), col(own, "mbps"), "client's own SOCKS5", paired=True)
        if "sockmap" in RELAY_MODES and "splice" in RELAY_MODES:
            self.add("relay_cpu_sockmap", "relay (daemon) CPU per GB: sockmap mode", "s/GB",
                     col("netleak:sockmap", "relay_s_per_gb"),
                     col("netleak:splice", "relay_s_per_gb"), "splice mode",
                     goal="ratio <= 0.1", paired=True)
        else:
            self.missing("relay_cpu_sockmap", "relay (daemon) CPU per GB: sockmap mode",
                         "the relay does not forward in the kernel (README: Limits)", goal="ratio <= 0.1")
        self.proxy_peers = report.peer_columns(
            {path: runs[path] for path in PROXY_PATHS}, status)
        print(report.peer_table(self.proxy_peers), flush=True)
        self.series["proxy_runs"] = [dict(x, path=path) for path in PROXY_PATHS
                                     for x in runs[path]]
        self.series["relay_forward"] = status

    def _proxy_failed(self, why: object) -> None:
        why = " ".join(str(why).split()) or "failed"
        self.failures["proxy"] = why
        print(f"  proxy mode: FAILED, not measured: {why}", flush=True)

    def _proxy_servers(self, started: list) -> None:
        w = self.world
        w.ip(w.net, "addr", "add", f"{PROXY4}/32", "dev", "lo")
        self._pc_dir = tempfile.mkdtemp(prefix="netleak-bench-pc-")
        with open(os.path.join(self._pc_dir, "proxychains.conf"), "w") as f:
            f.write(report.proxychains_conf(PROXY4, PROXY_PORT))
        source = Proc("source", w.nsenter(w.net) + [
            sys.executable, BULK, "source", lab.SERVER4, str(SOURCE_PORT)])
        started.append(source)
        if not source.line(10).startswith("ready"):
            raise ProxyFailed(f"the source did not start: {source.tail()}")
        # microsocks says nothing when ready (a line per client on stderr,
        # kept by Proc): ready once the client's own SOCKS5 gets through
        proxy = Proc("microsocks", w.nsenter(w.net) + [
            "microsocks", "-i", PROXY4, "-p", str(PROXY_PORT), "-b", PROXY4])
        started.append(proxy)
        self._proxy_pid = proxy.pid
        deadline = time.monotonic() + 10
        while True:
            try:
                self._connect_ms("own", 1)
                break
            except ProxyFailed:
                if proxy.p.poll() is not None or time.monotonic() > deadline:
                    raise ProxyFailed(f"microsocks did not start: {proxy.tail()}") from None
                time.sleep(0.1)

    def _path_ready(self, path: str, status: dict[str, str]) -> None:
        """For netleak's paths, the daemon running in the path's relay mode
        (restarted when it runs another), the relay warmed up by a few
        untimed connections, and the mode the daemon reports kept."""
        mode = path.partition(":")[2]
        if not mode or self._relay_mode == mode:
            return
        self.wait_sessions(0, timeout=30)
        lab.stop_daemon(self.own.run_dir)
        self._relay_mode = mode
        self._connect_ms(path, 5)       # starts the daemon with the mode's env
        from netleak_hook.rundir.store import Store
        pid = Store(self.own.run_dir).daemon_pid()
        if pid is None or daemon_env(pid).get("NETLEAK_RELAY_FORWARD") != mode:
            raise ProxyFailed(f"the daemon (pid {pid}) was not started with "
                              f"NETLEAK_RELAY_FORWARD={mode}")
        if mode not in status:
            status[mode] = self._reported_forward()

    def _reported_forward(self) -> str:
        """The forwarding mode `netleak status --json` reports ("?" if none)."""
        netleak = os.path.join(os.path.dirname(self.exec_bin), "netleak")
        r = self.world.run([netleak, "status", "--json"], env=self.env, timeout=30)
        try:
            return report.relay_forward(json.loads(r.stdout))
        except ValueError:
            return "?"

    def _proxy_cleanup(self, started: list) -> None:
        for proc in started:
            proc.stop()
        self._proxy_pid = None
        if self._pc_dir:
            shutil.rmtree(self._pc_dir, ignore_errors=True)
            self._pc_dir = ""
        self.world.ip(self.world.net, "addr", "del", f"{PROXY4}/32", "dev", "lo",
                      check=False)
        try:
            self.wait_sessions(0, timeout=30)
        except SystemExit as e:
            print(f"  proxy mode: {e.code}", flush=True)
        if self._relay_mode:        # later parts start a daemon of the default mode
            lab.stop_daemon(self.own.run_dir)
            self._relay_mode = ""

    def _client(self, path: str, args: list[str]) -> tuple[list[str], dict]:
        """(argv, env) of bench/bulk.py ARGS on PATH, in HOST."""
        py = [sys.executable, BULK, *args]
        env = self.env
        if path.startswith("netleak:"):
            argv = [self.exec_bin, "--proxy", f"socks5://{PROXY4}:{PROXY_PORT}", *py]
            env = dict(env, NETLEAK_RELAY_FORWARD=path.partition(":")[2])
        elif path == "proxychains4":
            argv = ["proxychains4", "-q", "-f",
                    os.path.join(self._pc_dir, "proxychains.conf"), *py]
        else:
            argv = [*py, "--socks", f"{PROXY4}:{PROXY_PORT}"]
        return self.world.nsenter(self.world.host) + argv, env

    def _proxy_round(self, path: str) -> dict:
        """One round of PATH: starts of a one-connection client, the
        connect loop, a download."""
        p = self.plan
        starts = []
        for _ in range(PROXY_STARTS):
            t0 = time.perf_counter()
            self._connect_ms(path, 1)
            starts.append((time.perf_counter() - t0) * 1000)
        setup = self._connect_ms(path, p["proxy_connects"])
        out = self._fetch(path, p["proxy_seconds"])
        gb = out["bytes"] / 1e9
        return {"start_ms": statistics.median(starts), "connect_ms": setup["median_ms"],
                "mbps": out["mbps"], "relay_s_per_gb": out["cpu"].get("relay", 0.0) / gb,
                "machine_s_per_gb": out["cpu"]["machine"] / gb, "connect": setup,
                "fetch": out}

    def _cpu(self) -> dict[str, float]:
        """CPU seconds so far of the daemon (its relay), of the proxy and
        of the whole machine (softirq, kernel threads and all)."""
        from netleak_hook.rundir.store import Store
        out = {"machine": machine_busy(), "wall": time.perf_counter()}
        for part, pid in (("relay", Store(self.own.run_dir).daemon_pid()),
                          ("proxy", self._proxy_pid)):
            if pid is not None:
                with contextlib.suppress(OSError):
                    out[part] = cpu_seconds(pid)
        return out

    def _fetch(self, path: str, seconds: float) -> dict:
        """One download: MB/s, bytes and seconds, and CPU seconds of each
        part over it (fetcher, relay, proxy, the machine)."""
        argv, env = self._client(path, ["fetch", lab.SERVER4, str(SOURCE_PORT),
                                        "--seconds", str(seconds)])
        name = f"download ({path})"
        proc = Proc(name, argv, env=env)
        try:
            line = proc.line(30)        # the session's start and the tunnel
            if line != "start":
                raise ProxyFailed(f"{name}: {line or 'no start'}: {proc.tail()}")
            before = self._cpu()
            line = proc.line(seconds + 60)
            after = self._cpu()
            if proc.wait(10) != 0 or not line.startswith("{"):
                raise ProxyFailed(f"{name}: {line or 'no result'}: {proc.tail()}")
        finally:
            proc.stop()
        out = json.loads(line)
        out["cpu"] = {"fetcher": out.pop("cpu"),
                      **{k: after[k] - before[k] for k in after if k in before}}
        # how busy the machine was over the transfer (1.0: every CPU all along)
        out["busy"] = out["cpu"]["machine"] / (after["wall"] - before["wall"]) \
            / (os.cpu_count() or 1)
        del out["cpu"]["wall"]
        return out

    def _connect_ms(self, path: str, n: int) -> dict:
        """N connections in a row, each timed from connect() to the first
        byte back: their median ms (and quartiles, min, max)."""
        argv, env = self._client(path, ["connects", lab.SERVER4, str(SOURCE_PORT), str(n)])
        name = f"connect loop ({path})"
        proc = Proc(name, argv, env=env)
        try:
            line = proc.line(30 + n * 0.5)
            if proc.wait(10) != 0 or not line.startswith("{"):
                raise ProxyFailed(f"{name}: {line or 'no result'}: {proc.tail()}")
        finally:
            proc.stop()
        return json.loads(line)

    # ----- systemd's own cgroup restrictions as a peer -----

    def systemd(self) -> None:
        """A real systemd as PID 1 (tests/privileged/systemd_machine.py)
        with the lab's links: a scope with IPAddressDeny=any and
        IPAddressAllow= the lab's server next to a netleak session on vpn0.
        Start: `systemd-run --scope` against `netleak-exec vpn0`, each of
        `python3 -c pass`, timed inside the machine. Per packet: the kernel's
        count (bpf_stats) of the programs attached to each one's cgroup over
        the same burst of UDP datagrams to the server by vpn0. Anything in
        the way is said in the table's rows, never a made-up figure."""
        print("systemd's IPAddressDeny/Allow next to netleak, on a systemd host", flush=True)
        start = ("systemd_start", "systemd peer: start, `netleak-exec vpn0 python3 -c pass` "
                 "in a systemd machine")
        cost = ("systemd_packet", "systemd peer: BPF time per UDP datagram sent and echoed "
                "(every program of the cgroup, bpf_stats): netleak's session on vpn0")
        ifaces = ("systemd_packet_ifaces", "systemd peer: BPF time per UDP datagram, "
                  "netleak vs a RestrictNetworkInterfaces=up0 scope")
        try:
            self._systemd(start, cost, ifaces)
        except (SystemdFailed, OSError, subprocess.SubprocessError, AssertionError,
                ValueError) as e:
            why = " ".join(str(e).split())[:200] or type(e).__name__
            done = {f.key for f in self.figures}
            for key, label in (start, cost, ifaces):
                if key not in done and not any(r.key == key for r in self.rows):
                    self.missing(key, label, why)

    def _systemd(self, start: tuple[str, str], cost: tuple[str, str],
                 ifaces: tuple[str, str]) -> None:
        sys.path.insert(0, ROOT)
        from tests.privileged.podman import Podman, have_podman
        from tests.privileged.systemd_machine import SystemdMachine
        missing = have_podman()
        if missing:
            raise SystemdFailed(f"needs {missing} ('make test' installs it)")
        base = tempfile.mkdtemp(prefix="netleak-bench-podman-", dir="/var/tmp")
        try:
            pm = Podman(base, f"netleak-bench-podman-{os.getpid()}")
            name = f"nlb-sd{os.getpid() % 10000}"
            with SystemdMachine(pm, name, ROOT) as m:
                world = lab.Lab(name, host=name)
                try:
                    world.build()
                    world.start_server()
                    self._systemd_measure(m, start, cost, ifaces)
                finally:
                    world.close()
        finally:
            with contextlib.suppress(Exception):
                Podman(base, f"netleak-bench-podman-{os.getpid()}").reset()
            shutil.rmtree(base, ignore_errors=True)

    def _systemd_measure(self, m, start: tuple[str, str], cost: tuple[str, str],
                         ifaces: tuple[str, str]) -> None:
        gateway = lab.LINKS["vpn0"][1]
        scope = ["systemd-run", "--scope", "--quiet", "-p", "IPAddressDeny=any",
                 "-p", f"IPAddressAllow={lab.SERVER4}"]
        mine = [self.exec_bin, "--via", gateway, "vpn0"]
        r = m.exec(*mine, "true")           # the daemon up, the pins made: warm from here
        if r.returncode != 0:
            raise SystemdFailed(f"netleak-exec in the machine: {r.stderr.strip()}")
        r = m.exec(sys.executable, "-c", SD_START, json.dumps([scope, mine]),
                   str(self.plan["systemd_rounds"]), timeout=300)
        if r.returncode != 0:
            raise SystemdFailed(f"the start loop: {r.stderr.strip()[-200:]}")
        sd_ms, nl_ms = json.loads(r.stdout)
        self.add(start[0], start[1], "ms", nl_ms, sd_ms,
                 "`systemd-run --scope -p IPAddressDeny=any -p IPAddressAllow=…` of the same",
                 paired=True)
        n = self.plan["systemd_packets"]
        whos = {"systemd": scope, "netleak": mine}
        # RestrictNetworkInterfaces= needs systemd built with its BPF framework
        version = m.exec("systemctl", "--version").stdout
        ifaces_why = "" if "+BPF_FRAMEWORK" in version else \
            "this systemd is built without BPF_FRAMEWORK (`systemctl --version`)"
        if not ifaces_why:
            whos["systemd_ifaces"] = ["systemd-run", "--scope", "--quiet",
                                      "-p", "RestrictNetworkInterfaces=up0"]
        per: dict[str, list[float]] = {who: [] for who in whos}
        with bpf_stats() as counting:
            if not counting:
                raise SystemdFailed("kernel.bpf_stats_enabled absent")
            order = list(whos)
            for _ in range(self.plan["systemd_bursts"]):
                for who in order:
                    per[who].append(self._burst_cost(m, who, whos[who], n))
                order.reverse()
        self.add(cost[0], cost[1], "ns", per["netleak"], per["systemd"],
                 "systemd's IPAddressDeny/Allow scope", paired=True)
        key, label = ifaces
        if ifaces_why:
            self.missing(key, label, ifaces_why)
        else:
            self.add(key, label, "ns", per["netleak"], per["systemd_ifaces"],
                     "systemd's RestrictNetworkInterfaces= scope", paired=True)

    def _burst_cost(self, m, who: str, prefix: list[str], n: int) -> float:
        """ns per datagram of the programs attached to the cgroup of a burst
        of N datagrams (echoed back) run under PREFIX in the machine."""
        go, end = f"/tmp/nlb-go-{who}", f"/tmp/nlb-end-{who}"
        m.exec("rm", "-f", go, end)
        p = m.popen(*prefix, sys.executable, "-c", SD_BURST, lab.SERVER4, str(lab.PORT),
                    str(n), go, end, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            cgroup = p.stdout.readline().strip()
            if not cgroup.startswith("/"):
                raise SystemdFailed(f"the {who} burst did not start: {p.stderr.read()[-200:]}")
            root = machine_cgroup_ns_root(m)
            progs = attached_programs(root + cgroup)
            if not progs:
                raise SystemdFailed(f"no program attached to {who}'s cgroup {cgroup}")
            before = {i: prog_stats_by_id(i) for i in progs}
            m.exec("touch", go)
            if p.stdout.readline().strip() != "done":
                raise SystemdFailed(f"the {who} burst failed: {p.stderr.read()[-200:]}")
            after = {i: prog_stats_by_id(i) for i in progs}
            m.exec("touch", end)
            p.wait(30)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()
            p.stderr.close()
        delta = report.run_delta({str(k): v for k, v in before.items()},
                                 {str(k): v for k, v in after.items()})
        self.series.setdefault("systemd_programs", []).append({
            "who": who, "programs": progs, "delta": {k: list(v) for k, v in delta.items()},
            "datagrams": n})
        return report.ns_per(delta, n)

    # ----- the egress program alone -----

    def program_cost(self) -> None:
        """The egress program's own time per packet, with and without its
        counters: the kernel runs it on a 64-byte UDP packet a million times
        in a row (BPF_PROG_TEST_RUN), from a process inside a cgroup with a
        policy, on the path of a packet leaving by its interface."""
        from netleak_hook.kernel import bpfsys, cgroupfs, programs
        from netleak_hook.core.policy import Policy, local_key, pack_key
        print("egress program time per packet", flush=True)
        # "the interface": any device but loopback (the kernel wants one that
        # exists); nothing is sent
        ifindex = next((i for i, name in socket.if_nameindex() if name != "lo"), None)
        if ifindex is None:
            raise SystemExit("bench: no network device but lo to run the program with")
        ctx = struct.pack("<11I", *([0] * 10 + [ifindex]))   # __sk_buff up to ifindex
        own = self.own
        programs.ensure_bpffs(own.bpf_dir)
        variants = {"counters": programs.ensure_pinned(own.bpf_dir),
                    "no counters": programs.ensure_pinned(own.bpf_dir, ("-DNL_NO_STATS",)),
                    "no flows": programs.ensure_pinned(own.bpf_dir, ("-DNL_NO_FLOWS",))}
        # what each variant runs on: a UDP packet (counted per connection by
        # netleak) and a TCP one (whose figures are the kernel's own)
        runs = (("counters", "udp"), ("no counters", "udp"), ("no flows", "udp"),
                ("counters", "tcp"), ("no flows", "tcp"))
        packets = {"udp": _udp_packet(), "tcp": _tcp_packet()}
        path = os.path.join(cgroupfs.abspath(cgroupfs.find_cgroup2(), own.parent),
                            "test-run")
        cgroupfs.make(path)
        fds = {}
        slots: dict[str, int] = {}
        counted = -1
        # a namespace of the bench's own, in the maps only, whose address
        # the packet comes from
        netns = 2**60 + os.getpid()
        source = local_key(netns, "192.0.2.2")
        try:
            for name, pins in variants.items():
                maps = programs.Maps(pins)
                # a session's counters slot, as the daemon claims one (the
                # variant without counters ignores it)
                slots[name] = slot = maps.claim_slot(cgroupfs.cgroup_id(path), set(), netns)
                bpfsys.map_update(maps.policy, pack_key(cgroupfs.cgroup_id(path)),
                                  Policy(ifindex=ifindex, mark=0, killed=False,
                                         netns=netns, stats_slot=slot).pack())
                bpfsys.map_update(maps.locals, source, ifindex.to_bytes(4, "little"))
                maps.close()
                fds[name] = bpfsys.obj_get(pins.pin("prog_egress"))
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:        # inside the cgroup: the packet's socket is the child's
                try:
                    cgroupfs.join(path)
                    out = {f"{n} {k}": [] for n, k in runs}
                    for _ in range(self.plan["test_runs"]):
                        for name, kind in runs:
                            ret, ns = bpfsys.prog_test_run(fds[name], packets[kind], ctx,
                                                           1_000_000)
                            out[f"{name} {kind}"].append(ns if ret == 1 else -1)
                    os.write(w, json.dumps(out).encode())
                finally:
                    os._exit(0)
            os.close(w)
            try:
                with os.fdopen(r) as f:
                    data = f.read()
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
        finally:
            for fd in fds.values():
                os.close(fd)
            for name, pins in variants.items():
                maps = programs.Maps(pins)
                if name == "counters":
                    counted = maps.read_stats(cgroupfs.cgroup_id(path),
                                              slots.get(name, 0)).passed_packets
                maps.release_slot(slots.get(name, 0), cgroupfs.cgroup_id(path), netns)
                for m, k in ((maps.locals, source),
                             (maps.policy, pack_key(cgroupfs.cgroup_id(path)))):
                    try:
                        bpfsys.map_delete(m, k)
                    except OSError:
                        pass
                maps.close()
            cgroupfs.remove_tree(path)
        res = json.loads(data or "{}")
        if not res or any(ns < 0 for v in res.values() for ns in v):
            raise SystemExit("bench: the egress program did not pass the test packet")
        expected = 1_000_000 * 2 * len(res["counters udp"])
        if counted != expected:
            raise SystemExit(f"bench: the counters saw {counted} of the {expected} packets")
        self.add("egress_program", "egress program per packet (BPF_PROG_TEST_RUN)", "ns",
                 res["counters udp"], res["no counters udp"], "same program without counters",
                 goal="ratio <= 1.1", paired=True)
        self.add("flow_accounting", "egress program per UDP packet with per-connection "
                 "accounting (BPF_PROG_TEST_RUN)", "ns", res["counters udp"],
                 res["no flows udp"], "same program without it", goal="delta <= 10",
                 paired=True)
        self.add("flow_accounting_tcp", "egress program per TCP packet (its counters are "
                 "the kernel's; BPF_PROG_TEST_RUN)", "ns", res["counters tcp"],
                 res["no flows tcp"], "same program without per-connection accounting",
                 goal="delta <= 10", paired=True)

    # ----- many sessions at once -----

    def rules(self) -> int:
        """Routing rules of HOST, both families."""
        return sum(len(self.world.ip(self.world.host, fam, "rule").stdout.splitlines())
                   for fam in ("-4", "-6"))

    def daemon_rss_mb(self) -> float:
        from netleak_hook.rundir.store import Store
        pid = Store(self.own.run_dir).daemon_pid()
        if pid is None:
            raise SystemExit("bench: the daemon is not running")
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        raise SystemExit("bench: no daemon")

    def scale(self) -> None:
        p = self.plan
        n = p["sessions"]
        print(f"scale: {n} concurrent sessions", flush=True)
        # reaping one session alone: the baseline of reaping many
        one = []
        for _ in range(p["reap_rounds"]):
            h, _ = self.hold()
            h.kill()
            t0 = time.perf_counter()
            h.wait()
            self.wait_sessions(0)
            one.append((time.perf_counter() - t0) * 1000)
        holders, setup, rss = [], [], []
        first, _ = self.hold()
        holders.append(first)
        rules_one, rss_one = self.rules(), self.daemon_rss_mb()
        step = max(1, n // 20)
        for i in range(1, n):
            h, dt = self.hold()
            holders.append(h)
            setup.append((i, dt * 1000))
            if (i + 1) % step == 0:
                rss.append((i + 1, self.daemon_rss_mb()))
                print(f"  {i + 1} sessions", flush=True)
        self.wait_sessions(n)
        rules_n, rss_n = self.rules(), self.daemon_rss_mb()
        udp_in, udp_out = self.udp_pair(p["scale_rounds"])
        for h in holders:
            h.kill()
        t0 = time.perf_counter()
        for h in holders:
            h.wait()
        self.wait_sessions(0)
        reap_ms = (time.perf_counter() - t0) * 1000
        first_ms = [ms for i, ms in setup[: max(1, step)]]
        last_ms = [ms for i, ms in setup[-max(1, step):]]
        self.add("scale_setup", f"set-up per session with {n} running", "ms", last_ms,
                 first_ms, "with 1 running")
        self.add("scale_reap", f"reap per session, {n} ended at once", "ms", [reap_ms / n],
                 one, "one session alone")
        self.add("scale_rules", f"routing rules with {n} sessions", "rules", [rules_n],
                 [rules_one], "with 1 session", goal="ratio == 1")
        self.add("scale_udp_64b_rate", f"UDP 64-byte datagrams with {n} sessions", "kpps",
                 udp_in, udp_out, "outside", goal="ratio >= 0.97", paired=True)
        self.add("daemon_rss", f"daemon memory (RSS) with {n} sessions", "MB", [rss_n],
                 [rss_one], "with 1 session", goal="value <= 60")
        self.series["setup_ms"] = setup
        self.series["rss_mb"] = [(1, rss_one)] + rss


class SystemdFailed(Exception):
    """The systemd part cannot go on: what went wrong, in one line."""


def machine_cgroup_ns_root(m) -> str:
    """The host's path of the systemd machine's cgroup namespace root: its
    PID 1's cgroup as the host sees it, less the path the machine sees."""
    host = m.cgroup_root()
    inside = m.exec("cat", "/proc/1/cgroup").stdout.strip().partition("::")[2]
    if host is None or not inside.startswith("/") or not host.endswith(inside.rstrip("/")):
        raise SystemdFailed(f"the machine's cgroup is not found ({host}, {inside})")
    return host[: len(host) - len(inside.rstrip("/"))]


def attached_programs(cgroup: str) -> list[int]:
    """IDs of the BPF programs attached to the cgroup directory, any hook."""
    from netleak_hook.kernel import bpfsys
    fd = os.open(cgroup, os.O_RDONLY | os.O_DIRECTORY)
    try:
        ids = []
        for hook in range(0, 48):
            with contextlib.suppress(OSError):
                ids += bpfsys.prog_query(fd, hook)
        return sorted(set(ids))
    finally:
        os.close(fd)


def prog_stats_by_id(prog_id: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of the program with that ID."""
    import ctypes
    from netleak_hook.kernel import bpfsys
    lib = ctypes.CDLL("libbpf.so.1", use_errno=True)
    fd = lib.bpf_prog_get_fd_by_id(ctypes.c_uint32(prog_id))
    if fd < 0:
        raise OSError(-fd, f"bpf_prog_get_fd_by_id {prog_id}: {os.strerror(-fd)}")
    try:
        return bpfsys.prog_run_stats(fd)
    finally:
        os.close(fd)


class ProxyFailed(Exception):
    """The proxy part cannot go on: what went wrong, in one line."""


class Proc:
    """A process of the bench's own, its output read by threads: lines of
    stdout come with a timeout (no read can hang the bench), the end of
    stderr is kept for messages, and stop() ends it by its PID."""

    def __init__(self, name: str, argv: list[str], env: dict | None = None) -> None:
        self.name = name
        self.argv = argv
        self.p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.pid = self.p.pid
        self.lines: queue.SimpleQueue = queue.SimpleQueue()
        self.err: list[str] = []
        self._drop = False
        self._threads = [threading.Thread(target=self._read_out, daemon=True),
                         threading.Thread(target=self._read_err, daemon=True)]
        for t in self._threads:
            t.start()

    def _read_out(self) -> None:
        for raw in self.p.stdout:
            if not self._drop:
                self.lines.put(raw.decode(errors="replace").strip())
        self.lines.put(None)

    def _read_err(self) -> None:
        for raw in self.p.stderr:
            self.err = (self.err + [raw.decode(errors="replace").rstrip()])[-10:]

    def line(self, timeout: float) -> str:
        """The next line of stdout ("" at its end), or ProxyFailed after TIMEOUT."""
        try:
            got = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise ProxyFailed(f"{self.name}: no answer in {timeout:.0f} s") from None
        if got is None:
            self.lines.put(None)
            return ""
        return got

    def drain(self) -> None:
        """Drop whatever stdout says from now on."""
        self._drop = True

    def tail(self) -> str:
        time.sleep(0.05)            # what it wrote as it died
        return " / ".join(x for x in self.err[-3:] if x) or \
            f"exit status {self.p.poll()}"

    def wait(self, timeout: float) -> int:
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            raise ProxyFailed(f"{self.name}: did not end in {timeout:.0f} s") from None

    def stop(self) -> None:
        if self.p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.p.wait(5)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self.p.wait()
        for t in self._threads:
            t.join(timeout=5)
        for f in (self.p.stdout, self.p.stderr):
            f.close()


def daemon_env(pid: int) -> dict[str, str]:
    """The environment a process was started with."""
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = f.read().split(b"\0")
    return dict(p.decode(errors="replace").split("=", 1) for p in pairs if b"=" in p)


def machine_busy() -> float:
    """CPU seconds the machine spent on anything but idling, all CPUs."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, its ended threads included."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _udp_packet() -> bytes:
    """Ethernet, IPv4 and UDP headers and 18 bytes: a 64-byte frame."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 17, 0,
                     socket.inet_aton("192.0.2.2"), socket.inet_aton(lab.SERVER4))
    return b"\0" * 12 + b"\x08\x00" + ip + struct.pack("!HHHH", 40000, 53, 26, 0) + b"x" * 18


def _tcp_packet() -> bytes:
    """Ethernet, IPv4 and TCP headers and 6 bytes: a 64-byte frame."""
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 46, 0, 0, 64, 6, 0,
                     socket.inet_aton("192.0.2.2"), socket.inet_aton(lab.SERVER4))
    tcp = struct.pack("!HHIIBBHHH", 40000, 443, 1, 1, 5 << 4, 0x10, 512, 0, 0)
    return b"\0" * 12 + b"\x08\x00" + ip + tcp + b"x" * 6


def plot(series: dict, path: str, sessions: int) -> bool:
    """Set-up time and daemon memory against the number of sessions."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench: no matplotlib, no plot", file=sys.stderr)
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8))
    pts = series["setup_ms"]
    a.scatter([x for x, _ in pts], [y for _, y in pts], s=3, alpha=0.3, label="each start")
    med = report.buckets(pts, max(1, sessions // 20))
    a.plot([x for x, _ in med], [y for _, y in med], color="C1", label="median")
    a.set_xlabel("sessions running")
    a.set_ylabel("set-up of one more session (ms)")
    a.set_ylim(bottom=0)
    a.legend()
    r = series["rss_mb"]
    b.plot([x for x, _ in r], [y for _, y in r], marker="o", color="C2")
    b.axhline(60, color="grey", linestyle="--", linewidth=1)
    b.set_xlabel("sessions running")
    b.set_ylabel("daemon RSS (MB)")
    b.set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/run.py")
    ap.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    ap.add_argument("--out", default=os.path.join(ROOT, "bench"),
                    help="folder for results.json and scale.png")
    ap.add_argument("--readme", default=os.path.join(ROOT, "README.md"),
                    help="README whose bench section is replaced ('' for none)")
    ap.add_argument("--only", default=",".join(PARTS),
                    help=f"comma-separated sections to run ({','.join(PARTS)})")
    ap.add_argument("--sessions", type=int, help="sessions of the scale run")
    ap.add_argument("--compare", metavar="TREE",
                    help="a checkout of another version: its warm start is measured "
                         "beside this tree's (e.g. git worktree add /tmp/before REV)")
    a = ap.parse_args(argv)
    plan = dict(QUICK if a.quick else FULL)
    if a.sessions:
        plan["sessions"] = a.sessions
    if a.compare:
        if not os.path.isfile(os.path.join(a.compare, "bin", "netleak-exec")):
            ap.error(f"--compare: {a.compare} holds no bin/netleak-exec: give a checkout")
        plan["compare"] = os.path.abspath(a.compare)
    only = set(a.only.split(","))
    if only - set(PARTS):
        ap.error(f"--only: no part {', '.join(sorted(only - set(PARTS)))} "
                 f"(there are {', '.join(PARTS)})")
    if os.geteuid() != 0:
        print("bench: run as root (sudo make bench)", file=sys.stderr)
        return 125
    if shutil.which("iperf3") is None:
        print("bench: iperf3 is missing: run 'make bench' (it installs it)", file=sys.stderr)
        return 125
    # SIGTERM unwinds like Ctrl-C: labs, sessions and pins are removed
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    info = machine()
    t0 = time.monotonic()
    part_seconds: dict[str, float] = {}
    with Bench(plan) as b:
        b.world.start_server()
        b.servers()
        for name, section in (("start", b.start), ("traffic", b.traffic),
                              ("proxy", b.proxy), ("program", b.program_cost),
                              ("scale", b.scale), ("systemd", b.systemd)):
            if name in only:
                t = time.monotonic()
                section()
                part_seconds[name] = round(time.monotonic() - t, 1)
                print(f"  ({name}: {part_seconds[name]:.0f} s)", flush=True)
    os.makedirs(a.out, exist_ok=True)
    png = os.path.join(a.out, "scale.png")
    has_plot = "setup_ms" in b.series and plot(b.series, png, plan["sessions"])
    results = {"machine": info, "plan": plan, "seconds": round(time.monotonic() - t0),
               "part_seconds": part_seconds,
               "figures": [f.as_dict() for f in b.figures],
               "not_measured_rows": [m.as_dict() for m in b.rows
                                     if isinstance(m, report.Missing)],
               "program_costs": b.program_costs, "proxy_peers": b.proxy_peers,
               "series": b.series,
               "not_measured": b.failures}
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print()
    print(report.machine_line(info))
    print(report.table(b.rows))
    programs = report.program_table(b.program_costs, TRAFFIC_LABELS)
    if programs:
        print(f"\n{report.PROGRAMS_NOTE}\n\n{programs}")
    peers = report.peer_table(b.proxy_peers)
    if peers:
        print(f"\n{report.PEERS_NOTE}\n\n{peers}")
    if b.failures:
        print(report.not_measured(b.failures))
    if a.readme:
        with open(a.readme) as f:
            text = f.read()
        rel = os.path.relpath(png, os.path.dirname(os.path.abspath(a.readme)))
        with open(a.readme, "w") as f:
            f.write(report.replace_section(
                text, report.readme_section(b.rows, info, rel if has_plot else None,
                                            b.failures, programs, peers)))
    missed = [f.key for f in b.figures if f.met is False]
    print(f"\ngoals missed: {', '.join(missed)}" if missed else
          "\nevery goal met" + (" of the parts measured" if b.failures else ""))
    return 1 if b.failures else 0


if __name__ == "__main__":
    sys.exit(main())
