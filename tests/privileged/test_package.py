"""The Debian package, as a user meets it: `make deb` builds it (lintian
finds no error), `apt install ./netleak_….deb` puts it on a systemd host
(the suite's systemd machine: this machine's own `/` as an overlay, so the
dependencies are the distribution's packages installed here, and nothing
is downloaded), `netleak doctor` passes, a session is routed, the daemon
runs under systemd, and `apt purge` leaves nothing of netleak behind."""
from __future__ import annotations

import glob
import os
import subprocess

import pytest

from netleak_hook import lab as labmod
from tests.conftest import cannot_run, require_root
from tests.helpers import wait_until
from tests.privileged.systemd_machine import SystemdMachine

pytestmark = pytest.mark.privileged

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
FILES = ("/usr/bin/netleak", "/usr/bin/netleak-exec", "/usr/bin/netleak-hook",
         "/usr/share/containers/oci/hooks.d/netleak.json",
         "/lib/systemd/system/netleak-daemon.service",
         "/usr/share/man/man1/netleak-exec.1.gz", "/usr/share/man/man8/netleak.8.gz",
         "/usr/share/man/man1/netleak-hook.1.gz",
         "/usr/share/bash-completion/completions/netleak",
         "/usr/share/bash-completion/completions/netleak-exec",
         "/usr/share/zsh/vendor-completions/_netleak",
         "/usr/share/zsh/vendor-completions/_netleak-exec",
         "/usr/share/netleak/bpf/netleak.c")


@pytest.fixture(scope="module")
def deb() -> str:
    """The package, built by `make deb` (lintian included)."""
    require_root()
    r = subprocess.run(["make", "-C", ROOT, "deb"], capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        pytest.fail(f"make deb failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    found = glob.glob(os.path.join(ROOT, "dist", "netleak_*_all.deb"))
    if len(found) != 1:
        pytest.fail(f"make deb made {found}")
    return found[0]


@pytest.fixture(scope="module")
def host(podman_env, deb):
    require_root()
    if subprocess.run(["dpkg-query", "-W", "python3-pyroute2", "python3-click",
                       "python3-jeepney", "python3-bpfcc"], capture_output=True).returncode:
        cannot_run("needs the package's dependencies installed (make test installs them)")
    name = f"nlt-pkg{os.getpid() % 10000}"
    with SystemdMachine(podman_env, name, ROOT) as m:
        the_lab = labmod.Lab(name, host=name)
        try:
            the_lab.build()
            the_lab.start_server()
            yield m, the_lab
        finally:
            the_lab.close()


def _rules(m) -> str:
    out = []
    for fam in ("-4", "-6"):
        r = m.exec("ip", fam, "rule", "show")
        assert r.returncode == 0, r.stderr
        out.append(r.stdout)
    return "".join(out)


def _routes(m) -> str:
    return "".join(m.exec("ip", fam, "route", "show", "table", "all").stdout
                   for fam in ("-4", "-6"))


def _ours(m) -> list[str]:
    """What of netleak is on the machine, besides the package's files."""
    left = []
    for path in ("/sys/fs/bpf/netleak", "/run/netleak", "/sys/fs/cgroup/netleak",
                 "/sys/fs/cgroup/netleak.slice", "/etc/systemd/system/netleak-daemon.service",
                 "/etc/systemd/system/multi-user.target.wants/netleak-daemon.service",
                 "/var/lib/systemd/deb-systemd-helper-enabled/netleak-daemon.service.dsh-also",
                 "/usr/lib/python3/dist-packages/netleak_hook"):
        if m.exec("test", "-e", path).returncode == 0:
            left.append(path)
    dropins = m.exec("sh", "-c", "ls /run/systemd/system/*.d/netleak.conf 2>/dev/null").stdout
    if dropins.strip():
        left.append(f"drop-ins: {dropins.strip()}")
    units = m.exec("systemctl", "list-units", "--all", "--plain", "--no-legend",
                   "netleak-*.service", "netleak-*.scope", "netleak.slice").stdout.strip()
    if units:
        left.append(f"units: {units}")
    if m.exec("pgrep", "-f", "netleak_hook|bin/netleak").returncode == 0:
        left.append("processes: " + m.exec("pgrep", "-af", "netleak_hook|bin/netleak")
                    .stdout.strip())
    return left


def test_installed_routed_run_by_systemd_and_purged_without_a_trace(host, deb):
    m, the_lab = host
    rules0, routes0 = _rules(m), _routes(m)
    assert _ours(m) == []
    # this machine's image forbids starting services on install (Docker's
    # policy-rc.d); a host has none: nor has the overlay, from here on
    m.exec("rm", "-f", "/usr/sbin/policy-rc.d")
    # no network in the machine: every dependency is already installed
    r = m.exec("apt-get", "install", "-y", deb, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for path in FILES:
        assert m.exec("test", "-f", path).returncode == 0, f"{path} not installed"
    # the package's own commands, on its own Python package
    assert m.exec("sh", "-c", "command -v netleak-exec").stdout.strip() == "/usr/bin/netleak-exec"
    where = m.exec("/usr/bin/python3", "-c", "import netleak_hook; print(netleak_hook.__file__)")
    assert where.stdout.startswith("/usr/lib/python3/dist-packages/netleak_hook/"), where
    # the programs were compiled and pinned at install (by netleak prepare:
    # the daemon, started after it, found them there and compiled nothing)
    assert m.exec("sh", "-c", "ls /sys/fs/bpf/netleak/v1-*/prog_egress").returncode == 0
    assert m.exec("systemctl", "is-enabled", "netleak-daemon").stdout.strip() == "enabled"

    doctor = m.exec("netleak", "doctor")
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr

    assert wait_until(lambda: m.exec("systemctl", "is-active", "netleak-daemon").stdout.strip()
                      == "active", timeout=30), m.exec("systemctl", "status",
                                                       "netleak-daemon").stdout
    vpn, gateway = labmod.LINKS["vpn0"][0].split("/")[0], labmod.LINKS["vpn0"][1]
    with the_lab.capture("up0") as cap:
        r = m.exec("netleak-exec", "--via", gateway, "vpn0", *the_lab.client())
        leaked = cap.stop()
    assert r.stdout.strip() == f"ok {vpn}", r.stderr
    assert leaked == 0
    with the_lab.capture("up0") as cap:         # the capture sees a leak
        m.exec(*the_lab.client())
        assert cap.stop() > 0
    status = m.exec("netleak", "status")
    assert status.returncode == 0, status.stderr
    log = m.exec("sh", "-c", "journalctl -u netleak-daemon --no-pager; cat /run/netleak/*/daemon.log")
    assert "compiling BPF programs" not in log.stdout, log.stdout[-2000:]

    # removal is refused while a session runs, and changes nothing
    p = m.popen("netleak-exec", "--via", gateway, "vpn0", "sleep", "60")
    try:
        assert wait_until(lambda: "routed" in m.exec("netleak", "status").stdout, timeout=30)
        # the slice the check after the purge looks for: there now
        assert m.exec("test", "-d", "/sys/fs/cgroup/netleak.slice").returncode == 0
        r = m.exec("apt-get", "remove", "-y", "netleak", timeout=300)
        assert r.returncode != 0, r.stdout[-2000:]
        said = r.stdout + r.stderr          # dpkg passes the script's lines on
        assert "1 session still runs" in said and "netleak: not removed" in said, said[-2000:]
        assert m.exec("dpkg-query", "-W", "-f=${Status}", "netleak").stdout == \
            "install ok installed"
        assert m.exec("systemctl", "is-active", "netleak-daemon").stdout.strip() == "active"
        assert "routed" in m.exec("netleak", "status").stdout
    finally:
        p.kill()
        p.wait()
        m.exec("pkill", "-f", "^sleep 60$")
    assert m.exec("man", "-w", "netleak-exec").returncode == 0
    # what the check after the purge looks for is there now
    there = _ours(m)
    assert "/sys/fs/bpf/netleak" in there and "/run/netleak" in there, there

    assert wait_until(lambda: "no sessions" in m.exec("netleak", "status").stdout, timeout=30)
    r = m.exec("apt-get", "purge", "-y", "netleak", timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    for path in FILES:
        assert m.exec("test", "-e", path).returncode != 0, f"{path} left"
    assert m.exec("dpkg-query", "-W", "netleak").returncode != 0
    assert wait_until(lambda: _ours(m) == [], timeout=15), _ours(m)
    assert _rules(m) == rules0
    assert _routes(m) == routes0
