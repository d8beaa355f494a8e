"""Sessions started before their interface can carry them: vpn0 (a veth,
ethernet-like) down with its default route gone, so no gateway to learn;
vpn0 not there at all. They start, `netleak status` says they wait and what
for, up0 sees none of their packets (a capture with a positive control),
and once a network manager's work is done (link up, default route back) or
the link appears, their traffic reaches the server through vpn0."""
from __future__ import annotations

import subprocess
import sys

import pytest

from netleak_hook import lab as lablib
from netleak_hook.kernel import cgroupfs
from tests.helpers import wait_until
from tests.privileged.conftest import end_and_remove

pytestmark = pytest.mark.privileged

VPN = "ok 198.51.100.2"     # what the server answers to a client that came by vpn0
NOBODY = 65534


def _take_down(lab) -> None:
    """vpn0 down and its default routes gone (the kernel drops them with the
    link; deleted too, as a network manager would, in case)."""
    lab.ip(lab.host, "link", "set", "vpn0", "down")
    for fam in ("-4", "-6"):
        lab.ip(lab.host, fam, "route", "del", "default", "dev", "vpn0", check=False)
    assert "vpn0" not in lab.ip(lab.host, "route", "show", "default").stdout


def _bring_back(lab) -> None:
    """What a network manager does: the link up, then its default route."""
    lab.ip(lab.host, "link", "set", "vpn0", "up")
    lab.add_backup_default("vpn0")


def _refusals(read, n: int = 3) -> list[str]:
    """The workload's next N answers, each of which must be a refusal."""
    got = [read() for _ in range(n)]
    assert all(a and not a.startswith("ok") for a in got), got
    return got


def _until_vpn(read) -> list[str]:
    """Read answers until one came by vpn0; none may have come by up0."""
    seen = []
    while True:
        a = read()
        assert a, f"the workload ended before reaching the server by vpn0: {seen}"
        seen.append(a)
        assert not a.startswith("ok 192.0.2.2"), seen      # by up0: a leak
        if a == VPN:
            return seen


def _waiting(world, what: str) -> dict:
    assert wait_until(lambda: world.states() == ["waiting"], timeout=10), world.status()
    (row,) = world.status()
    assert row["killed"] is True and row["state_detail"].startswith(f"waiting for {what}"), row
    return row


def test_exec_on_a_down_interface_waits_for_its_gateway(world):
    lab = world.lab
    _take_down(lab)
    p = None
    try:
        with lab.capture("up0") as cap:     # from before the workload's first packet
            p = world.spawn("-u", "nobody", "vpn0", *lab.client(tries=600))
            read = lambda: p.stdout.readline().strip()      # noqa: E731
            _refusals(read)
            row = _waiting(world, "a gateway")
            _refusals(read)
            leaked = cap.stop()
        assert leaked == 0
        assert row["procs"] == 1 and row["started_by"] == "netleak-exec"
        world.control()
        with lab.capture("up0") as cap:
            _bring_back(lab)
            _until_vpn(read)
            assert wait_until(lambda: world.states() == ["routed"], timeout=10)
            leaked = cap.stop()
        assert leaked == 0
    finally:
        if p is not None:
            p.kill()
            p.wait()


# a process in a cgroup made by hand (a stand-in for a systemd scope), as
# nobody, asking the server every 0.2 s
LOOP = [sys.executable, "-c", lablib.CLIENT_CODE, lablib.SERVER4, str(lablib.PORT), "tcp",
        "600"]


def test_attach_on_a_down_interface_waits_for_its_gateway(world, tmp_path):
    lab = world.lab
    top = cgroupfs.abspath(cgroupfs.find_cgroup2(), f"{world.parent}-jobs.slice")
    path = f"{top}/job.scope"
    cgroupfs.make(path)
    out = tmp_path / "job.out"
    proc = None
    try:
        _take_down(lab)
        # held until attached: its first socket is made under control
        fifo = tmp_path / "go"
        subprocess.run(["mkfifo", str(fifo)], check=True)
        code = (f"echo $$ > {path}/cgroup.procs && read go < {fifo} && exec setpriv "
                f"--reuid={NOBODY} --regid={NOBODY} --clear-groups "
                f"{subprocess.list2cmdline(LOOP)} > {out} 2>&1")
        proc = lab.spawn(["sh", "-c", code])
        assert wait_until(lambda: proc.pid in cgroupfs.procs(path))
        r = world.cli("attach", "vpn0", "--pid", str(proc.pid))
        assert r.returncode == 0, r.stderr
        assert "waiting for a default route" in r.stdout, r.stdout
        lines = lambda: [ln.strip() for ln in out.read_text().splitlines()]  # noqa: E731
        with lab.capture("up0") as cap:
            with open(fifo, "w") as f:
                f.write("go\n")
            assert wait_until(lambda: out.exists() and len(lines()) >= 5, timeout=30)
            _waiting(world, "a gateway")
            leaked = cap.stop()
        assert leaked == 0
        assert lines() and not any(ln.startswith("ok") for ln in lines()), lines()
        world.control()
        n = len(lines())
        with lab.capture("up0") as cap:
            _bring_back(lab)
            assert wait_until(lambda: VPN in lines()[n:], timeout=30), lines()[n:]
            leaked = cap.stop()
        assert leaked == 0
        assert not any(ln.startswith("ok 192.0.2.2") for ln in lines())
        assert world.states() == ["routed"]
    finally:
        end_and_remove(proc, top)


def test_exec_on_an_absent_interface_waits_for_it(world):
    """vpn0 deleted: the session waits for it, assuming nothing of it; it
    comes back as a veth that must learn its gateway first."""
    lab = world.lab
    lab.ip(lab.host, "link", "del", "vpn0")
    p = None
    try:
        with lab.capture("up0") as cap:     # from before the workload's first packet
            p = world.spawn("-u", "nobody", "vpn0", *lab.client(tries=600))
            read = lambda: p.stdout.readline().strip()      # noqa: E731
            _refusals(read)
            row = _waiting(world, "the interface")
            _refusals(read)
            leaked = cap.stop()
        assert leaked == 0
        assert row["ifindex"] is None
        world.control()
        with lab.capture("up0") as cap:
            lab.recreate("vpn0")        # appears down, goes up, gets its route
            _until_vpn(read)
            assert wait_until(lambda: world.states() == ["routed"], timeout=10)
            leaked = cap.stop()
        assert leaked == 0
    finally:
        if p is not None:
            p.kill()
            p.wait()
    err = p.stderr.read()
    assert "no interface named vpn0 yet" in err and len(err.splitlines()) == 1, err


def test_an_unknown_name_is_accepted_with_a_notice(world):
    """A name no interface has (a typo, or a VPN not started yet) is not
    refused: one line says the session waits for it."""
    r = world.netleak("wg7", *world.lab.client())
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("refused"), r.stdout
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("netleak-exec: no interface named wg7 yet"), err
