"""Real VPN software in the lab: the tunnels users have, from the
distribution's packages, between the lab's HOST and NET namespaces.

- WireGuard: wireguard-go (userspace, over a TUN device) configured with
  `wg`, one end in HOST, the other in NET, its encrypted UDP going by up0 to
  NET's side of it (192.0.2.1); or HOST's end brought up by `wg-quick`.
- OpenVPN 2.6 with TLS: a CA, a server and a client certificate made with
  openssl in a folder of the test's; the server in NET, the client in HOST,
  over up0; a plain tun (no data channel offload).
- microsocks, a SOCKS5 server, in NET.

Tunnel addresses are documentation addresses the lab does not use. Names
that are machine-wide (wireguard-go's control sockets under
/var/run/wireguard) are unique to the test; everything started here is
ended by its PID and everything made here removed by close(), whatever
happened before.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading

from netleak_hook import lab as labmod
from tests.conftest import cannot_run
from tests.helpers import wait_until

WG_RUN = "/var/run/wireguard"
UPLINK_PEER = labmod.LINKS["up0"][1]       # NET's end of up0: where the tunnels go

_serial = iter(range(1_000_000))


def unique(prefix: str) -> str:
    """An interface name no other test on this machine uses (15 bytes at most)."""
    return f"{prefix}{os.getpid() % 100000}{next(_serial) % 100}"[:15]


def need(*commands: str) -> None:
    """Fail (or skip, without NETLEAK_REQUIRE_ROOT=1) unless COMMANDS exist."""
    missing = [c for c in commands if shutil.which(c) is None]
    if missing:
        cannot_run(f"needs {', '.join(missing)} (make test installs them)")


def kill(proc: subprocess.Popen | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
    if proc is not None:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


def kill_pid(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Lines:
    """The output of a long-running process, line by line, as it comes."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.strip())

    def __len__(self) -> int:
        return len(self.lines)

    def since(self, start: int) -> list[str]:
        return list(self.lines[start:])

    def wait_for(self, pred, start: int = 0, timeout: float = 30.0) -> bool:
        """Until a line from START on satisfies PRED."""
        return wait_until(lambda: any(pred(ln) for ln in self.since(start)), timeout=timeout)


# ---------------------------------------------------------------- WireGuard

def wg_keys() -> tuple[str, str]:
    private = subprocess.run(["wg", "genkey"], capture_output=True, text=True,
                             check=True).stdout.strip()
    public = subprocess.run(["wg", "pubkey"], input=private, capture_output=True, text=True,
                            check=True).stdout.strip()
    return private, public


def uapi_accepts(name: str) -> bool:
    """wireguard-go's control socket for NAME takes connections (a SIGKILLed
    one leaves its socket behind, refusing them)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(os.path.join(WG_RUN, f"{name}.sock"))
        return True
    except OSError:
        return False
    finally:
        s.close()


def wireguard_go_pids(name: str) -> list[int]:
    """The wireguard-go processes serving interface NAME (a name unique to
    the test, so they are the test's own)."""
    found = []
    for d in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{d}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if argv and os.path.basename(argv[0]) == b"wireguard-go" and name.encode() in argv:
            found.append(int(d))
    return found


class WireGuard:
    """A WireGuard tunnel between HOST (interface `iface`) and NET (`peer`),
    both ends wireguard-go, the encrypted UDP going by up0."""

    HOST4, HOST6 = "198.51.100.130", "2001:db8:77::2"     # HOST's end
    NET4, NET6 = "198.51.100.129", "2001:db8:77::1"       # NET's end
    PORT = 51820

    def __init__(self, lab: labmod.Lab, folder: str) -> None:
        self.lab = lab
        self.folder = folder
        self.iface = unique("nlwgh")
        self.peer = unique("nlwgn")
        self.host_key, self.host_pub = wg_keys()
        self.net_key, self.net_pub = wg_keys()
        self.procs: dict[str, subprocess.Popen] = {}
        self.quick_conf = ""

    # the two ends' configurations (wg setconf's form)
    def host_conf(self, allowed: str = "0.0.0.0/0, ::/0") -> str:
        return (f"[Interface]\nPrivateKey = {self.host_key}\n\n"
                f"[Peer]\nPublicKey = {self.net_pub}\nEndpoint = {UPLINK_PEER}:{self.PORT}\n"
                f"AllowedIPs = {allowed}\n")

    def net_conf(self) -> str:
        return (f"[Interface]\nPrivateKey = {self.net_key}\nListenPort = {self.PORT}\n\n"
                f"[Peer]\nPublicKey = {self.host_pub}\n"
                f"AllowedIPs = {self.HOST4}/32, {self.HOST6}/128\n")

    def _write(self, name: str, text: str) -> str:
        path = os.path.join(self.folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return path

    def _go(self, ns: str, name: str, conf: str, addrs: tuple[str, str]) -> None:
        """wireguard-go for NAME in NS (in the foreground, so it is ours by
        PID), configured with `wg setconf` once its socket accepts."""
        p = subprocess.Popen(self.lab.nsenter(ns) + ["wireguard-go", name],
                             env=dict(os.environ, WG_PROCESS_FOREGROUND="1"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs[name] = p
        if not wait_until(lambda: uapi_accepts(name) or p.poll() is not None, timeout=15) \
                or p.poll() is not None:
            raise RuntimeError(f"wireguard-go {name} did not start")
        path = self._write(f"{name}.conf", conf)
        self.lab.run(["wg", "setconf", name, path], ns=ns).check_returncode()
        self.lab.ip(ns, "addr", "add", addrs[0], "dev", name)
        self.lab.ip(ns, "addr", "add", addrs[1], "dev", name, "nodad")
        self.lab.ip(ns, "link", "set", name, "up")

    def start_net(self) -> None:
        """NET's end, and the routes back to HOST's tunnel addresses."""
        self._go(self.lab.net, self.peer, self.net_conf(),
                 (f"{self.NET4}/32", f"{self.NET6}/128"))
        self.lab.ip(self.lab.net, "route", "add", f"{self.HOST4}/32", "dev", self.peer)
        self.lab.ip(self.lab.net, "-6", "route", "add", f"{self.HOST6}/128", "dev", self.peer)

    def start_host(self) -> None:
        self._go(self.lab.host, self.iface, self.host_conf(),
                 (f"{self.HOST4}/32", f"{self.HOST6}/128"))

    def start(self) -> "WireGuard":
        self.start_net()
        self.start_host()
        return self

    def crash_host(self) -> None:
        """SIGKILL HOST's wireguard-go: its interface goes with it, its
        control socket stays."""
        p = self.procs.pop(self.iface)
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=10)
        assert wait_until(lambda: self.ifindex() is None)

    def ifindex(self) -> int | None:
        r = self.lab.ip(self.lab.host, "-o", "link", "show", "dev", self.iface, check=False)
        return int(r.stdout.split(":")[0]) if r.returncode == 0 else None

    # ----- wg-quick in HOST -----

    def quick(self, allowed: str = "0.0.0.0/0, ::/0") -> str:
        """A wg-quick configuration for HOST's end (its name is the interface's)."""
        conf = self.host_conf(allowed).replace(
            "[Peer]", f"Address = {self.HOST4}/32, {self.HOST6}/128\n\n[Peer]", 1)
        self.quick_conf = self._write(f"{self.iface}.conf", conf)
        return self.quick_conf

    def quick_up(self) -> None:
        r = self.lab.run(["wg-quick", "up", self.quick_conf], timeout=60)
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: uapi_accepts(self.iface), timeout=15)

    def quick_down(self) -> None:
        r = self.lab.run(["wg-quick", "down", self.quick_conf], timeout=60)
        assert r.returncode == 0, r.stderr
        assert wait_until(lambda: not wireguard_go_pids(self.iface), timeout=15)

    # ----- tearing down -----

    def close(self) -> None:
        """Every wireguard-go of the test's (ours by PID, or, started by
        wg-quick, by the test's own interface name), its control socket,
        wg-quick's rules and the configurations."""
        if self.quick_conf and self.ifindex() is not None:
            self.lab.run(["wg-quick", "down", self.quick_conf], timeout=60)
        for p in self.procs.values():
            kill(p)
        self.procs = {}
        for name in (self.iface, self.peer):
            for pid in wireguard_go_pids(name):
                kill_pid(pid)
            for ext in (".sock", ".name"):
                try:
                    os.unlink(os.path.join(WG_RUN, name + ext))
                except FileNotFoundError:
                    pass
        try:
            os.rmdir(WG_RUN)    # wireguard-go made it; others' sockets keep it
        except OSError:
            pass


# ---------------------------------------------------------------- OpenVPN

def make_pki(folder: str) -> dict[str, str]:
    """A CA and a server and a client certificate signed by it (EC keys),
    in FOLDER; the paths by name."""
    paths = {n: os.path.join(folder, n) for n in (
        "ca.key", "ca.crt", "server.key", "server.crt", "client.key", "client.crt")}

    def ssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=folder)

    ssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
        "-nodes", "-keyout", paths["ca.key"], "-out", paths["ca.crt"], "-days", "2",
        "-subj", "/CN=netleak test CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    for who, usage in (("server", "serverAuth"), ("client", "clientAuth")):
        ext = os.path.join(folder, f"{who}.ext")
        with open(ext, "w") as f:
            f.write(f"basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                    f"extendedKeyUsage={usage}\n")
        csr = os.path.join(folder, f"{who}.csr")
        ssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", paths[f"{who}.key"], "-out", csr, "-subj", f"/CN=netleak test {who}")
        ssl("x509", "-req", "-in", csr, "-CA", paths["ca.crt"], "-CAkey", paths["ca.key"],
            "-CAcreateserial", "-out", paths[f"{who}.crt"], "-days", "2", "-extfile", ext)
    for n in paths:
        os.chmod(paths[n], 0o600)
    return paths


class OpenVPN:
    """An OpenVPN tunnel with TLS: the server in NET on up0's far end, UDP
    port 1194; the client in HOST (interface `iface`), over up0."""

    NET = "198.51.100.160"          # the tunnel's subnet, /27
    NET6 = "2001:db8:78::/64"
    SERVER4, SERVER6 = "198.51.100.161", "2001:db8:78::1"
    PORT = 1194

    def __init__(self, lab: labmod.Lab, folder: str) -> None:
        self.lab = lab
        self.folder = folder
        self.iface = unique("nlovc")
        self.server_iface = unique("nlovs")
        self.pki = make_pki(folder)
        self.server: subprocess.Popen | None = None
        self.client: subprocess.Popen | None = None

    def _common(self, who: str) -> list[str]:
        return ["openvpn", "--dev-type", "tun", "--proto", "udp", "--disable-dco",
                "--ca", self.pki["ca.crt"], "--cert", self.pki[f"{who}.crt"],
                "--key", self.pki[f"{who}.key"], "--verb", "3",
                "--ping", "1", "--ping-restart", "5", "--connect-retry", "1", "1"]

    def start_server(self) -> None:
        argv = self._common("server") + [
            "--dev", self.server_iface, "--local", UPLINK_PEER, "--port", str(self.PORT),
            "--server", self.NET, "255.255.255.224", "--server-ipv6", self.NET6,
            "--topology", "subnet", "--dh", "none"]
        self.server = subprocess.Popen(self.lab.nsenter(self.lab.net) + argv,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
        self.server_out = Lines(self.server)
        if not self.server_out.wait_for(lambda ln: "Initialization Sequence Completed" in ln):
            raise RuntimeError("openvpn server did not start: " +
                               "\n".join(self.server_out.lines[-10:]))

    def start_client(self) -> None:
        argv = self._common("client") + [
            "--client", "--dev", self.iface, "--remote", UPLINK_PEER, str(self.PORT),
            "--nobind", "--remote-cert-tls", "server"]
        self.client = subprocess.Popen(self.lab.nsenter(self.lab.host) + argv,
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       text=True)
        self.client_out = Lines(self.client)
        self.wait_connected(0)

    def wait_connected(self, start: int) -> None:
        if not self.client_out.wait_for(lambda ln: "Initialization Sequence Completed" in ln,
                                        start=start):
            raise RuntimeError("openvpn client did not connect: " +
                               "\n".join(self.client_out.lines[-10:]))

    def start(self) -> "OpenVPN":
        self.start_server()
        self.start_client()
        return self

    def addresses(self) -> tuple[str, str]:
        """The client's tunnel addresses (v4, v6), as the server gave them."""
        out = self.lab.ip(self.lab.host, "-o", "addr", "show", "dev", self.iface).stdout
        v4 = v6 = ""
        for ln in out.splitlines():
            f = ln.split()
            if f[2] == "inet":
                v4 = f[3].split("/")[0]
            elif f[2] == "inet6" and not f[3].startswith("fe80"):
                v6 = f[3].split("/")[0]
        return v4, v6

    def ifindex(self) -> int | None:
        r = self.lab.ip(self.lab.host, "-o", "link", "show", "dev", self.iface, check=False)
        return int(r.stdout.split(":")[0]) if r.returncode == 0 else None

    def crash_client(self) -> None:
        assert self.client is not None
        self.client.send_signal(signal.SIGKILL)
        self.client.wait(timeout=10)
        assert wait_until(lambda: self.ifindex() is None)

    def reconnect(self) -> None:
        """SIGUSR1: the client's soft restart (a new TLS session, its tun
        closed and opened again); until it says it is connected again."""
        assert self.client is not None
        start = len(self.client_out)
        self.client.send_signal(signal.SIGUSR1)
        self.wait_connected(start)

    def close(self) -> None:
        kill(self.client)
        kill(self.server)


# ---------------------------------------------------------------- microsocks

class Microsocks:
    """microsocks in NET on ADDR:PORT, connecting out from ADDR; names it
    is asked for are looked up in a hosts file of the test's (bind-mounted
    over /etc/hosts in a mount namespace of its own)."""

    def __init__(self, lab: labmod.Lab, folder: str, addr: str, port: int,
                 hosts: dict[str, str]) -> None:
        self.lab = lab
        self.addr, self.port = addr, port
        path = os.path.join(folder, "hosts")
        with open(path, "w") as f:
            f.write("".join(f"{a} {n}\n" for n, a in hosts.items()))
        script = 'mount --bind "$1" /etc/hosts && shift && exec "$@"'
        self.proc = subprocess.Popen(
            lab.nsenter(lab.net) + ["unshare", "--mount", "--propagation", "private",
                                    "sh", "-c", script, "sh", path,
                                    "microsocks", "-i", addr, "-p", str(port), "-b", addr],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        if not wait_until(lambda: self.ready() or self.proc.poll() is not None, timeout=10) \
                or self.proc.poll() is not None:
            raise RuntimeError("microsocks did not start")

    def ready(self) -> bool:
        r = self.lab.run(["python3", "-c", (
            "import socket; socket.create_connection(('%s', %d), timeout=1).close()"
            % (self.addr, self.port))], ns=self.lab.net)
        return r.returncode == 0

    def close(self) -> None:
        kill(self.proc)
