"""Throwaway network namespaces for the demo and the tests.

Two namespaces joined by two veth pairs: HOST (where the workload runs) has
`up0`, its default route, and `vpn0`, the interface to pin traffic to; NET
plays the world and holds a server that answers with the client's address.
Only documentation addresses are used, and nothing is routed off the
machine. Everything is made with `ip` and removed by `close()`.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

SERVER4 = "203.0.113.10"
SERVER6 = "2001:db8:ff::10"
PORT = 8080

# (name in HOST, HOST address v4, peer v4, HOST v6, peer v6)
LINKS = {
    "up0": ("192.0.2.2/26", "192.0.2.1", "2001:db8:1::2/64", "2001:db8:1::1"),
    "vpn0": ("198.51.100.2/26", "198.51.100.1", "2001:db8:2::2/64", "2001:db8:2::1"),
}

SERVER_CODE = r"""
import select, socket, sys
port = int(sys.argv[1])
socks = []
for fam, addr in ((socket.AF_INET, sys.argv[2]), (socket.AF_INET6, sys.argv[3])):
    t = socket.socket(fam, socket.SOCK_STREAM)
    t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    t.bind((addr, port)); t.listen(64)
    u = socket.socket(fam, socket.SOCK_DGRAM); u.bind((addr, port))
    socks += [t, u]
print("ready", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        if s.type == socket.SOCK_STREAM:
            c, a = s.accept()
            try:
                c.sendall(a[0].encode() + b"\n")
            except OSError:
                pass
            c.close()
        else:
            data, a = s.recvfrom(2048)
            try:
                s.sendto(a[0].encode() + b"\n", a)
            except OSError:     # no route back (a test took the link away)
                pass
"""

CLIENT_CODE = r"""
import socket, sys, time
host, port, proto, tries = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
for i in range(tries):
    try:
        if proto == "tcp":
            s = socket.socket(fam, socket.SOCK_STREAM); s.settimeout(1.0)
            s.connect((host, port)); reply = s.recv(200)
        else:
            s = socket.socket(fam, socket.SOCK_DGRAM); s.settimeout(1.0)
            s.sendto(b"hi", (host, port)); reply = s.recv(200)
        print("ok", reply.decode().strip(), flush=True)
    except OSError as e:
        print("refused", e.strerror or e, flush=True)
    if i + 1 < tries:
        time.sleep(0.2)
"""


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, capture_output=True, text=True)


class Lab:
    """The two namespaces; use as a context manager."""

    def __init__(self, prefix: str, host: str | None = None) -> None:
        """HOST: a named network namespace made elsewhere (a systemd
        machine's) to use as HOST instead of a new one."""
        self.host = host or f"{prefix}-host"
        self.net = f"{prefix}-net"
        self.own_host = host is None
        self.procs: list[subprocess.Popen] = []

    # ----- building -----

    def __enter__(self) -> "Lab":
        try:
            self.build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def ip(self, ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return sh("ip", "-n", ns, *args, check=check)

    def build(self) -> None:
        for ns in (self.host, self.net):
            if ns != self.host or self.own_host:
                sh("ip", "netns", "add", ns)
            # no duplicate address detection: IPv6 is usable at once
            self.sysctl(ns, "net.ipv6.conf.all.accept_dad", "0")
            self.sysctl(ns, "net.ipv6.conf.default.accept_dad", "0")
            self.ip(ns, "link", "set", "lo", "up")
        for name in LINKS:
            self.add_veth(name)
        self.ip(self.net, "addr", "add", f"{SERVER4}/32", "dev", "lo")
        self.ip(self.net, "addr", "add", f"{SERVER6}/128", "dev", "lo", "nodad")
        self.ip(self.host, "route", "add", "default", "via", LINKS["up0"][1])
        # metric 100: better than the backup default through vpn0 (500), as the
        # IPv4 one (metric 0) is; IPv6 would otherwise take vpn0 by default
        self.ip(self.host, "-6", "route", "add", "default", "via", LINKS["up0"][3],
                "metric", "100")
        self.add_backup_default("vpn0")

    def sysctl(self, ns: str, key: str, value: str) -> None:
        """Set a sysctl of one of the lab's own namespaces."""
        sh(*self.nsenter(ns), "sysctl", "-q", "-w", f"{key}={value}")

    def wait_ready(self, timeout: float = 10.0) -> None:
        """Until both families reach the server by the default route."""
        deadline = time.monotonic() + timeout
        for server in (SERVER4, SERVER6):
            while True:
                r = self.run(self.client(server, "udp"))
                if r.stdout.startswith("ok"):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"lab: {server} unreachable: {r.stdout}{r.stderr}")
                time.sleep(0.1)

    def add_veth(self, name: str) -> None:
        a4, p4, a6, p6 = LINKS[name]
        peer = f"{name}p"
        sh("ip", "link", "add", name, "netns", self.host, "type", "veth",
           "peer", "name", peer, "netns", self.net)
        plen4, plen6 = a4.split("/")[1], a6.split("/")[1]
        self.ip(self.host, "addr", "add", a4, "dev", name)
        self.ip(self.host, "addr", "add", a6, "dev", name, "nodad")
        self.ip(self.net, "addr", "add", f"{p4}/{plen4}", "dev", peer)
        self.ip(self.net, "addr", "add", f"{p6}/{plen6}", "dev", peer, "nodad")
        self.ip(self.host, "link", "set", name, "up")
        self.ip(self.net, "link", "set", peer, "up")

    def add_backup_default(self, name: str) -> None:
        """A default route through NAME with a worse metric, as a DHCP
        client or NetworkManager installs for a second uplink."""
        _, p4, _, p6 = LINKS[name]
        self.ip(self.host, "route", "replace", "default", "via", p4, "dev", name,
                "metric", "500")
        # IPv6 addresses are flushed when a link goes down: the v6 route may
        # have no address to go with; that is the test's business
        self.ip(self.host, "-6", "route", "replace", "default", "via", p6, "dev", name,
                "metric", "500", check=False)

    def recreate(self, name: str) -> None:
        """Delete NAME and make it again (a new ifindex, like ppp0 on reconnect)."""
        self.ip(self.host, "link", "del", name, check=False)
        self.add_veth(name)
        self.add_backup_default(name)

    # ----- running -----

    def nsenter(self, ns: str) -> list[str]:
        # not `ip netns exec`: it remounts /sys and hides the cgroup mounts
        return ["nsenter", f"--net=/run/netns/{ns}"]

    def run(self, argv: list[str], env: dict | None = None, timeout: float = 60,
            ns: str | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(self.nsenter(ns or self.host) + argv, env=env,
                              capture_output=True, text=True, timeout=timeout)

    def spawn(self, argv: list[str], ns: str | None = None, env: dict | None = None,
              **kw) -> subprocess.Popen:
        p = subprocess.Popen(self.nsenter(ns or self.host) + argv, env=env, **kw)
        self.procs.append(p)
        return p

    def start_server(self) -> None:
        p = self.spawn([sys.executable, "-c", SERVER_CODE, str(PORT), SERVER4, SERVER6],
                       ns=self.net, stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("lab server did not start")
        self.wait_ready()

    @staticmethod
    def client(host: str = SERVER4, proto: str = "tcp", tries: int = 1) -> list[str]:
        return [sys.executable, "-c", CLIENT_CODE, host, str(PORT), proto, str(tries)]

    def capture(self, iface: str = "up0", ns: str | None = None,
                peer: str | None = None, flt: str | None = None) -> "Capture":
        return Capture(self, iface, ns, peer, flt)

    # ----- tearing down -----

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
            close_pipes(p)
        self.procs = []
        for ns in (self.host, self.net):
            sh("ip", "netns", "del", ns, check=False)


def close_pipes(p: subprocess.Popen) -> None:
    """P's ends of its pipes, closed (waiting does not close them)."""
    for f in (p.stdin, p.stdout, p.stderr):
        if f is not None:
            try:
                f.close()
            except OSError:
                pass


class Capture:
    """tcpdump on an interface (of HOST by default), counting packets to or
    from the server: the path a leak would take.

    stop() sends a marker datagram to the link's peer (not the server, so it
    is not counted) and stops once tcpdump has printed it: every packet sent
    before stop() has been seen by then, with no guessing how long to wait.
    """

    FILTER = f"host {SERVER4} or host {SERVER6}"
    MARKER_PORT = 9     # discard

    def __init__(self, lab: Lab, iface: str, ns: str | None = None,
                 peer: str | None = None, flt: str | None = None) -> None:
        self.lab = lab
        self.flt = flt or self.FILTER     # what counts
        self.iface = iface
        self.ns = ns or lab.host
        self.peer = peer or (LINKS[iface][1] if iface in LINKS else None)
        self.proc: subprocess.Popen | None = None
        self.raw: list[str] = []
        self.reader: threading.Thread | None = None
        self.lines: list[str] = []

    def __enter__(self) -> "Capture":
        flt = self.flt
        if self.peer:
            flt = f"({flt}) or (udp and dst host {self.peer} and dst port {self.MARKER_PORT})"
        self.proc = subprocess.Popen(
            self.lab.nsenter(self.ns) + ["tcpdump", "-i", self.iface, "-n", "-l", "-U", flt],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:   # wait until it really listens
            line = self.proc.stderr.readline()
            if "listening on" in line:
                self.reader = threading.Thread(target=self._read, daemon=True)
                self.reader.start()
                return self
            if not line and self.proc.poll() is not None:
                break
        self.proc.kill()
        self.proc.wait()
        close_pipes(self.proc)
        raise RuntimeError(f"tcpdump did not start on {self.iface}")

    def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        for line in self.proc.stdout:
            self.raw.append(line)

    def __exit__(self, *exc) -> None:
        self.stop()

    def _marker_seen(self) -> bool:
        tail = f"> {self.peer}.{self.MARKER_PORT}:"
        return any(tail in ln for ln in list(self.raw))

    def stop(self) -> int:
        if self.proc is None:
            return len(self.lines)
        if self.peer:
            send = ("import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                    f"s.sendto(b'm', ({self.peer!r}, {self.MARKER_PORT}))")
            subprocess.run(self.lab.nsenter(self.ns) + [sys.executable, "-c", send],
                           capture_output=True, timeout=10)
            deadline = time.monotonic() + 5   # a down link never shows it
            while not self._marker_seen() and time.monotonic() < deadline:
                time.sleep(0.01)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(timeout=10)
        assert self.reader is not None
        self.reader.join(timeout=10)
        close_pipes(self.proc)
        tail = f"> {self.peer}.{self.MARKER_PORT}:"
        self.lines = [ln.strip() for ln in self.raw
                      if ln.strip() and not (self.peer and tail in ln)]
        self.proc = None
        return len(self.lines)

    @property
    def count(self) -> int:
        return len(self.lines)


def stop_daemon(run_dir: str) -> None:
    """Stop the daemon of a run directory (the lab's own, by PID; only one
    that holds the daemon lock, so a stale pid file names nobody)."""
    from .rundir.store import Store
    pid = Store(run_dir).daemon_pid()
    if pid is None:
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    from .kernel.proc import running
    for _ in range(100):
        if not running(pid):        # a zombie counts as gone: init reaps it
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Isolated:
    """netleak with a run directory, cgroup parent and pin folder of its own
    (for the demo and the bench): `env` points netleak at them, and leaving
    the block stops its daemon and removes them all, with bpffs if it was
    mounted for the run."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.run_dir = ""
        self.parent = f"netleak-{kind}-{os.getpid()}"
        self.bpf_dir = f"/sys/fs/bpf/netleak-{kind}-{os.getpid()}"
        self.env: dict[str, str] = {}
        self._bpffs_before = True

    def __enter__(self) -> "Isolated":
        import tempfile
        self.run_dir = tempfile.mkdtemp(prefix=f"netleak-{self.kind}-")
        self._bpffs_before = os.path.ismount("/sys/fs/bpf")
        self.env = dict(os.environ, NETLEAK_RUN_DIR=self.run_dir,
                        NETLEAK_CGROUP_PARENT=self.parent, NETLEAK_BPF_DIR=self.bpf_dir)
        return self

    def sessions(self) -> int:
        from .rundir.store import Store
        return len(Store(self.run_dir).load().sessions)

    def __exit__(self, *exc) -> None:
        import shutil

        from .core.errors import NetleakError
        from .kernel import cgroupfs, programs
        stop_daemon(self.run_dir)
        shutil.rmtree(self.run_dir, ignore_errors=True)
        programs.remove_pins(self.bpf_dir)
        if not self._bpffs_before:     # the daemon mounted it for this run
            subprocess.run(["umount", "/sys/fs/bpf"], check=False)
        try:
            cgroupfs.remove_tree(cgroupfs.abspath(cgroupfs.find_cgroup2(), self.parent))
        except (OSError, NetleakError):
            pass
