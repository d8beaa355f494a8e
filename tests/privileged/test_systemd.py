"""netleak on a systemd host: a real systemd as PID 1 in unified cgroup v2
mode (systemd_machine.py), the lab's links in its network namespace."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.conftest import require_root
from tests.helpers import wait_until
from tests.privileged.systemd_machine import SystemdMachine

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
VENV_BIN = os.path.dirname(sys.executable)
EXEC = os.path.join(VENV_BIN, "netleak-exec")


class Host:
    """The systemd machine with the lab around it."""

    def __init__(self, machine: SystemdMachine, the_lab: labmod.Lab) -> None:
        self.machine = machine
        self.lab = the_lab

    def run(self, *argv: str, **kw):
        return self.machine.exec(*argv, **kw)

    def client(self, *prefix: str, host: str = labmod.SERVER4, proto: str = "tcp",
               tries: int = 1):
        return self.run(*prefix, *self.lab.client(host, proto, tries))


@pytest.fixture(scope="module")
def sd(podman_env):
    require_root()
    name = f"nlt-sd{os.getpid() % 10000}"
    with SystemdMachine(podman_env, name, ROOT) as m:
        the_lab = labmod.Lab(name, host=name)
        try:
            the_lab.build()
            the_lab.start_server()
            yield Host(m, the_lab)
        finally:
            the_lab.close()


def test_systemd_is_pid_1_with_the_unified_hierarchy(sd):
    assert sd.run("cat", "/proc/1/comm").stdout.strip() == "systemd"
    assert sd.run("stat", "-fc", "%T", "/sys/fs/cgroup").stdout.strip() == "cgroup2fs"
    assert sd.machine.state == "running", sd.machine.failed_units()
    # its own network namespace, with the lab's links: the client goes by up0
    assert sd.client().stdout.strip() == f"ok {labmod.LINKS['up0'][0].split('/')[0]}"


def test_exec_routes_by_its_interface_and_the_kill_switch_holds(sd):
    vpn, gateway = labmod.LINKS["vpn0"][0].split("/")[0], labmod.LINKS["vpn0"][1]
    r = sd.client(EXEC, "--via", gateway, "vpn0")
    assert r.stdout.strip() == f"ok {vpn}", r.stderr
    sd.lab.ip(sd.lab.host, "link", "set", "vpn0", "down")
    try:
        with sd.lab.capture("up0") as cap:
            r = sd.client(EXEC, "--via", gateway, "vpn0", tries=3)
            assert r.stdout.count("refused") == 3, r.stdout + r.stderr
            leaked = cap.stop()
        assert leaked == 0
        with sd.lab.capture("up0") as cap:         # the positive control
            sd.client()
            assert cap.stop() > 0
    finally:
        sd.lab.ip(sd.lab.host, "link", "set", "vpn0", "up")
        sd.lab.add_backup_default("vpn0")


def unit_of(sd: Host, pattern: str) -> tuple[str, str]:
    """(cgroup, unit systemctl names) of the process whose command line is PATTERN."""
    pid = sd.run("pgrep", "-xf", pattern).stdout.split()[0]
    cgroup = sd.run("sh", "-c", f"grep ^0:: /proc/{pid}/cgroup").stdout.strip()[3:]
    status = sd.run("systemctl", "status", "--no-pager", pid).stdout.splitlines()
    return cgroup, status[0] if status else ""


def test_a_scope_wrapping_netleak_exec_stays_whole(sd):
    gateway = labmod.LINKS["vpn0"][1]
    p = sd.machine.popen("systemd-run", "--scope", "--unit=nlt-wrap", EXEC, "--via", gateway,
                         "vpn0", "sleep", "300")
    try:
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 300").returncode == 0)
        assert sd.run("systemctl", "is-active", "nlt-wrap.scope").stdout.strip() == "active"
        cgroup, status = unit_of(sd, "sleep 300")
        assert cgroup == "/system.slice/nlt-wrap.scope"
        assert "nlt-wrap.scope" in status
        # what runs in the scope is routed: a client in one of its own
        vpn = labmod.LINKS["vpn0"][0].split("/")[0]
        r = sd.client("systemd-run", "--scope", "--quiet", EXEC, "--via", gateway, "vpn0")
        assert r.stdout.strip() == f"ok {vpn}", r.stderr
        sd.run("systemctl", "stop", "nlt-wrap.scope")
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 300").returncode == 1)
    finally:
        p.kill()
        p.wait()
        sd.run("systemctl", "stop", "nlt-wrap.scope")


def test_a_service_running_netleak_exec_stops_whole(sd):
    gateway = labmod.LINKS["vpn0"][1]
    r = sd.run("systemd-run", "--unit=nlt-svc", EXEC, "--via", gateway, "vpn0",
               "sh", "-c", "sleep 301 & exec sleep 302")
    assert r.returncode == 0, r.stderr
    try:
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 301").returncode == 0)
        cgroup, status = unit_of(sd, "sleep 301")
        assert cgroup == "/system.slice/nlt-svc.service" and "nlt-svc.service" in status
        assert sd.run("systemctl", "stop", "nlt-svc").returncode == 0
        assert sd.run("pgrep", "-f", "sleep 30[12]").returncode == 1, "left behind"
    finally:
        sd.run("systemctl", "stop", "nlt-svc")
        sd.run("systemctl", "reset-failed")


def test_the_kill_switch_holds_in_a_unit(sd):
    gateway = labmod.LINKS["vpn0"][1]
    sd.lab.ip(sd.lab.host, "link", "set", "vpn0", "down")
    try:
        with sd.lab.capture("up0") as cap:
            r = sd.client("systemd-run", "--scope", "--quiet", EXEC, "--via", gateway, "vpn0",
                          tries=3)
            assert r.stdout.count("refused") == 3, r.stdout + r.stderr
            leaked = cap.stop()
        assert leaked == 0
        with sd.lab.capture("up0") as cap:         # the positive control
            sd.client("systemd-run", "--scope", "--quiet")
            assert cap.stop() > 0
    finally:
        sd.lab.ip(sd.lab.host, "link", "set", "vpn0", "up")
        sd.lab.add_backup_default("vpn0")


CLI = os.path.join(VENV_BIN, "netleak")


def test_exec_from_a_shared_cgroup_gets_a_scope_of_its_own(sd):
    gateway = labmod.LINKS["vpn0"][1]
    p = sd.machine.popen(EXEC, "--via", gateway, "vpn0", "sleep", "299")
    try:
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 299").returncode == 0)
        cgroup, status = unit_of(sd, "sleep 299")
        assert cgroup.startswith("/netleak.slice/netleak-") and cgroup.endswith(".scope")
        assert cgroup.rpartition("/")[2] in status
        row, = sessions(sd)
        assert (row["cgroup"], row["started_by"]) == (cgroup, "netleak-exec")
        r = sd.run(CLI, "detach", "--cgroup", cgroup)
        assert r.returncode != 0 and "ends with its processes" in r.stderr
    finally:
        sd.run("pkill", "-xf", "sleep 299")
        p.wait()
    # systemd collects the scope; the daemon ends the session
    assert wait_until(lambda: not [u for u in units(sd, "netleak-*.scope")
                                   if not u.startswith("netleak-daemon-")])
    assert wait_until(lambda: sessions(sd) == [])


def units(sd: Host, pattern: str) -> list[str]:
    """The units systemd has loaded whose names match PATTERN."""
    out = sd.run("systemctl", "list-units", "--all", "--plain", "--no-legend", pattern).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def sessions(sd: Host) -> list[dict]:
    return json.loads(sd.run(CLI, "status", "--json").stdout)["sessions"]


def test_doctor_says_sessions_are_units_here(sd):
    checks = {c["name"]: c for c in json.loads(sd.run(CLI, "doctor", "--json").stdout)}
    c = checks["systemd"]
    assert c["ok"] and not c["warn"] and "unified cgroup v2" in c["detail"], c
    assert checks["cgroup v2"]["detail"].startswith("/sys/fs/cgroup (pure v2)")


def daemon_pids(sd: Host) -> list[str]:
    return sd.run("pgrep", "-f", "netleak_hook.daemon|netleak daemon").stdout.split()


def test_the_daemon_service_takes_over_from_a_daemon_started_on_demand(sd):
    with open(os.path.join(ROOT, "examples", "netleak-daemon.service")) as f:
        unit = f.read().replace("/usr/local/bin/netleak", CLI).replace(
            "WatchdogSec=30", "WatchdogSec=2")
    path = "/etc/systemd/system/netleak-daemon.service"
    sd.run("sh", "-c", f'printf %s "$0" > {path}', unit)
    sd.run("systemctl", "daemon-reload")
    gateway = labmod.LINKS["vpn0"][1]
    p = sd.machine.popen(EXEC, "--via", gateway, "vpn0", "sleep", "298")
    try:
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 298").returncode == 0)
        on_demand = daemon_pids(sd)
        assert len(on_demand) == 1
        r = sd.run("systemctl", "start", "netleak-daemon.service")
        assert r.returncode == 0, r.stderr        # Type=notify: it said READY=1
        main = sd.run("systemctl", "show", "-p", "MainPID", "--value",
                      "netleak-daemon.service").stdout.strip()
        assert wait_until(lambda: daemon_pids(sd) == [main]), daemon_pids(sd)
        row, = sessions(sd)                       # the session lived through it
        assert row["state"] == "routed", row
        checks = {c["name"]: c for c in json.loads(sd.run(CLI, "doctor", "--json").stdout)}
        c = checks["systemd"]
        assert "runs as netleak-daemon.service" in c["detail"] and not c["warn"], c
        import time
        time.sleep(5)                             # 2.5 watchdog periods
        show = sd.run("systemctl", "show", "-p", "ActiveState", "-p", "NRestarts",
                      "netleak-daemon.service").stdout
        assert "ActiveState=active" in show and "NRestarts=0" in show, show
    finally:
        sd.run("pkill", "-xf", "sleep 298")
        p.wait()
        sd.run("systemctl", "stop", "netleak-daemon.service")
        sd.run("rm", "-f", path)
        sd.run("systemctl", "daemon-reload")
    assert wait_until(lambda: not daemon_pids(sd))


PROXY4, PROXY_PORT = "203.0.113.20", 1080
PROXYD = os.path.join(ROOT, "tests", "proxyd.py")
PEER = ("import socket, sys\n"
        "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)\n"
        "print('ok', s.recv(200).decode().strip())\n")


def cgroup_of(sd: Host, pid: str) -> str:
    return sd.run("sh", "-c", f"grep ^0:: /proc/{pid}/cgroup").stdout.strip()[3:]


def netleak_cgroups(sd: Host) -> list[str]:
    """netleak's cgroups as systemd does not know them: straight under the root."""
    return sd.run("sh", "-c", "ls -d /sys/fs/cgroup/netleak* | grep -v '[.]slice$'"
                  ).stdout.split()


def test_the_daemon_started_on_demand_and_its_relay_live_in_a_unit(sd):
    """Nothing of netleak's runs outside a unit: the daemon an exec session
    starts asks for a scope of its own, the proxy relay's cgroup is made in
    it, and all of it goes once the sessions end."""
    lab = sd.lab
    lab.ip(lab.net, "addr", "add", f"{PROXY4}/32", "dev", "lo")
    proxy = lab.spawn([sys.executable, PROXYD, "--kind", "socks5", "--listen",
                       f"{PROXY4}:{PROXY_PORT}", "--source", PROXY4], ns=lab.net,
                      stdout=subprocess.DEVNULL)
    gateway = labmod.LINKS["vpn0"][1]
    url = f"socks5://{PROXY4}:{PROXY_PORT}"
    p = sd.machine.popen(EXEC, "--via", gateway, "--proxy", url, "vpn0", "sleep", "297")
    try:
        assert wait_until(lambda: sd.run("pgrep", "-xf", "sleep 297").returncode == 0)
        pid, = daemon_pids(sd)
        scope = f"netleak-daemon-{pid}.scope"
        assert cgroup_of(sd, pid) == f"/netleak.slice/{scope}"
        status = sd.run("systemctl", "status", "--no-pager", pid).stdout
        assert scope in status.splitlines()[0], status
        relay = f"/sys/fs/cgroup/netleak.slice/{scope}/relay"
        assert sd.run("test", "-d", relay).returncode == 0, "no relay cgroup in the scope"
        # the relay carries a second session's connection through the proxy
        with lab.capture("up0") as up:
            r = sd.run(EXEC, "--via", gateway, "--proxy", url, "vpn0", sys.executable,
                       "-c", PEER, labmod.SERVER4, str(labmod.PORT))
            assert up.stop() == 0
        assert r.stdout.split() == ["ok", PROXY4], r.stdout + r.stderr
        assert netleak_cgroups(sd) == []
    finally:
        sd.run("pkill", "-xf", "sleep 297")
        p.wait()
        proxy.kill()
        proxy.wait()
        lab.ip(lab.net, "addr", "del", f"{PROXY4}/32", "dev", "lo", check=False)
    assert wait_until(lambda: sessions(sd) == [])
    assert wait_until(lambda: sd.run("test", "-e", relay).returncode == 1)
    for pid in daemon_pids(sd):                 # ours: started by this test's session
        sd.run("kill", pid)
    assert wait_until(lambda: not daemon_pids(sd))
    assert wait_until(lambda: units(sd, "netleak-*.scope") == []), units(sd, "netleak-*")
    assert netleak_cgroups(sd) == []


def pinned_service(sd: Host, name: str, dropin: str | None) -> str:
    """A Restart=always service sending a datagram to the server every 0.2 s
    from its first instruction; DROPIN its netleak drop-in, if any."""
    sd.run("sh", "-c", 'printf %s "$0" > /run/nlt-client.py', labmod.CLIENT_CODE)
    unit = (f"[Service]\nExecStart={sys.executable} /run/nlt-client.py {labmod.SERVER4} "
            f"{labmod.PORT} udp 10000\nRestart=always\nRestartSec=0.3\n")
    path = f"/etc/systemd/system/{name}.service"
    sd.run("sh", "-c", f'printf %s "$0" > {path}', unit)
    if dropin is not None:
        sd.run("mkdir", "-p", f"{path}.d")
        sd.run("sh", "-c", f'printf %s "$0" > {path}.d/netleak.conf', dropin)
    sd.run("systemctl", "daemon-reload")
    return path


def kill_twice(sd: Host, name: str, vpn) -> int:
    """SIGKILL the service twice (Restart=always brings it back), each of
    its runs seen sending by vpn0 (VPN: a capture there); its restarts."""
    def sends() -> None:
        seen = len(vpn.raw)
        assert wait_until(lambda: len(vpn.raw) >= seen + 3), "nothing by vpn0"
    for _ in range(2):
        sends()
        sd.run("systemctl", "kill", "-s", "KILL", name)
        assert wait_until(lambda: sd.run("systemctl", "show", "-p", "MainPID", "--value",
                                         name).stdout.strip() not in ("", "0"))
    sends()
    return int(sd.run("systemctl", "show", "-p", "NRestarts", "--value", name).stdout)


def remove_service(sd: Host, name: str, path: str) -> None:
    sd.run("systemctl", "stop", name)
    sd.run("rm", "-rf", path, f"{path}.d")
    sd.run("systemctl", "daemon-reload")
    sd.run("systemctl", "reset-failed")
    assert wait_until(lambda: sessions(sd) == []), sessions(sd)


def test_a_service_pinned_by_the_example_drop_in_leaks_nothing_from_its_first_packet(sd):
    with open(os.path.join(ROOT, "examples", "netleak-pinned.conf")) as f:
        dropin = f.read().replace("/usr/local/bin/netleak", CLI).replace(" wg0 ", " vpn0 ")
    path = pinned_service(sd, "nlt-pinned", dropin)
    try:
        with sd.lab.capture("up0") as up, sd.lab.capture("vpn0") as vpn:
            assert sd.run("systemctl", "start", "nlt-pinned").returncode == 0
            first = [r["id"] for r in sessions(sd)]
            restarts = kill_twice(sd, "nlt-pinned", vpn)
            now = [r["id"] for r in sessions(sd)]
            sd.run("systemctl", "stop", "nlt-pinned")
            leaked, carried = up.stop(), vpn.stop()
        print(f"pinned by the example drop-in: {restarts} restarts, {leaked} packets on "
              f"up0, {carried} on vpn0")
        assert restarts >= 2 and leaked == 0
        assert carried > 0                      # it did send, by vpn0
        assert now == first and len(now) == 1   # one session throughout
        with sd.lab.capture("up0") as cap:     # the positive control
            sd.client()
            assert cap.stop() > 0
        r = sd.run(CLI, "detach", "--cgroup", "/system.slice/nlt-pinned.service")
        assert r.returncode == 0, r.stderr
    finally:
        remove_service(sd, "nlt-pinned", path)


def test_a_service_attached_by_name_stays_pinned_across_restarts(sd):
    """netleak attach --unit once, while it runs: a drop-in netleak writes
    pins each new start before its first instruction."""
    path = pinned_service(sd, "nlt-named", None)
    dropin = "/run/systemd/system/nlt-named.service.d/netleak.conf"
    try:
        assert sd.run("systemctl", "start", "nlt-named").returncode == 0
        r = sd.run(CLI, "attach", "vpn0", "--unit", "nlt-named")
        assert r.returncode == 0, r.stderr
        assert f"ExecStartPre=+{CLI} attach vpn0 --unit %n" in sd.run("cat", dropin).stdout
        with sd.lab.capture("up0") as up, sd.lab.capture("vpn0") as vpn:
            restarts = kill_twice(sd, "nlt-named", vpn)
            leaked, carried = up.stop(), vpn.stop()
        print(f"attached by name: {restarts} restarts, {leaked} packets on up0, "
              f"{carried} on vpn0")
        assert restarts >= 2 and leaked == 0 and carried > 0, up.lines
        row, = sessions(sd)
        # stopped, the service has no cgroup: it is found by name
        assert sd.run("systemctl", "stop", "nlt-named").returncode == 0
        r = sd.run(CLI, "detach", "--unit", "nlt-named")
        assert r.returncode == 0, r.stderr
        assert sessions(sd) == []
        assert sd.run("test", "-e", dropin).returncode == 1, "drop-in left behind"
        with sd.lab.capture("up0") as cap:     # released: its next run goes by up0
            assert sd.run("systemctl", "start", "nlt-named").returncode == 0
            assert wait_until(lambda: len(cap.raw) > 0)
            assert cap.stop() > 0
        assert sessions(sd) == []
    finally:
        remove_service(sd, "nlt-named", path)
