"""Refusals: one line, a distinct exit status, nothing left behind (the
world fixture checks rules, routes, map entries and cgroups afterwards)."""
from __future__ import annotations

import os
import sys

import pytest

pytestmark = pytest.mark.privileged


def _one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("netleak-exec: ")
    return lines[0]


@pytest.mark.parametrize("name", ["bad/name", "x" * 16, "lo"])
def test_invalid_interface_name(world, name):
    r = world.netleak(name, "true")
    assert r.returncode == 125
    _one_line(r.stderr)


def test_command_not_found(world):
    r = world.netleak("vpn0", "no-such-command-netleak")
    assert r.returncode == 127
    assert "command not found" in _one_line(r.stderr)


def test_command_not_executable(world, tmp_path):
    f = tmp_path / "script"
    f.write_text("#!/bin/sh\n")
    f.chmod(0o644)
    r = world.netleak("vpn0", str(f))
    assert r.returncode == 126
    _one_line(r.stderr)


def test_not_root(world):
    r = world.lab.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                       sys.executable, "-m", "netleak_hook.execcmd", "vpn0", "true"],
                      env=world.env)
    assert r.returncode == 125
    assert "root" in _one_line(r.stderr)


def test_no_cgroup_v2(world):
    """In a private mount namespace without the cgroup2 mount."""
    from netleak_hook.kernel import cgroupfs
    mnt = cgroupfs.find_cgroup2()
    cmd = (f"umount -l {mnt} && exec {sys.executable} -m netleak_hook.execcmd vpn0 true")
    r = world.lab.run(["unshare", "-m", "--propagation", "private", "sh", "-c", cmd],
                      env=world.env)
    assert r.returncode == 125, r.stderr
    assert "cgroup v2" in _one_line(r.stderr)
    assert os.path.ismount(mnt)


def test_bad_gateway_and_config(world):
    r = world.netleak("--via", "not-an-ip", "vpn0", "true")
    assert r.returncode == 125
    _one_line(r.stderr)
    env = dict(world.env, NETLEAK_MARK_BASE="12")
    r = world.lab.run([sys.executable, "-m", "netleak_hook.execcmd", "vpn0", "true"], env=env)
    assert r.returncode == 125
    _one_line(r.stderr)


def test_ethernet_without_gateway(world):
    lab = world.lab
    lab.ip(lab.host, "route", "del", "default", "via", "198.51.100.1", "dev", "vpn0")
    lab.ip(lab.host, "-6", "route", "del", "default", "via", "2001:db8:2::1", "dev", "vpn0")
    # no gateway to learn: not refused, but blocked until one is known
    # (test_waiting.py); --via gives one
    r = world.netleak("vpn0", *lab.client())
    assert r.returncode == 0 and r.stdout.startswith("refused"), (r.stdout, r.stderr)
    r = world.netleak("--via", "198.51.100.1", "vpn0", *lab.client())
    assert r.stdout.strip() == "ok 198.51.100.2", r.stderr


@pytest.mark.parametrize("args,words", [
    (["--dns", "127.0.0.53", "vpn0"], "non-loopback"),
    (["--dns", "resolver", "vpn0"], "not an IP address"),
    (["--allow", "0.0.0.0/0", "vpn0"], "allows everything"),
    (["--allow", "192.168.1.0/33", "vpn0"], "not an address or prefix"),
    (["--allow", "192.168.1.0/24:631/icmp", "vpn0"], "tcp or udp"),
    (["--deny", ":100-50", "vpn0"], "runs backwards"),
    (["--deny", "10.0.0.0/8:99999", "vpn0"], "1 to 65535"),
    (["--dns", "192.0.2.53", "--deny", ":53/udp", "vpn0"], "refused by --deny :53/udp"),
    (["--block", "--dns", "192.0.2.53"], "--allow 192.0.2.53"),
    (["--block", "--via", "192.0.2.1"], "--via"),
])
def test_bad_guards(world, args, words):
    r = world.netleak(*args, "true")
    assert r.returncode == 125
    assert words in _one_line(r.stderr)
    assert world.sessions() == 0 and world.cgroups() == []


def test_bad_guards_on_attach(world):
    r = world.cli("attach", "--block", "vpn0", "--pid", str(os.getpid()))
    assert r.returncode == 125 and "not both" in r.stderr, r.stderr
    r = world.cli("attach", "--pid", str(os.getpid()))
    assert r.returncode == 125 and "IFACE or --block" in r.stderr, r.stderr
    r = world.cli("attach", "vpn0", "--deny", "[2001:db8::/64]:", "--pid", str(os.getpid()))
    assert r.returncode == 125 and "port after ':' is missing" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and world.sessions() == 0
