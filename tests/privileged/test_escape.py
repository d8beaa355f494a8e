"""A workload that tries to leave by another interface is dropped in the
kernel: SO_BINDTODEVICE, IP_UNICAST_IF, SO_MARK, from a nested cgroup."""
from __future__ import annotations

import pytest

from netleak_hook import lab as labmod
from tests.privileged.probes import ESCAPE

pytestmark = pytest.mark.privileged

NESTED = r"""
import os, sys
cg = open("/proc/self/cgroup").read().split("0::", 1)[1].strip()
child = os.path.join(sys.argv[1], cg.lstrip("/"), "inner")
os.mkdir(child)
with open(os.path.join(child, "cgroup.procs"), "w") as f:
    f.write(str(os.getpid()))
os.execv(sys.executable, [sys.executable, "-c", sys.argv[2]] + sys.argv[3:])
"""


@pytest.mark.parametrize("how", ["bindtodevice", "unicast_if", "mark"])
def test_escape_attempts_are_dropped(world, how):
    import sys
    with world.lab.capture("up0") as cap:
        r = world.netleak("vpn0", sys.executable, "-c", ESCAPE, how, labmod.SERVER4)
        leaked = cap.stop()
    assert r.returncode == 0, r.stderr
    assert "ok 192.0.2.2" not in r.stdout
    assert leaked == 0
    # control: the same trick without netleak does leave by up0
    with world.lab.capture("up0") as cap:
        r = world.lab.run([sys.executable, "-c", ESCAPE, how, labmod.SERVER4])
        assert cap.stop() > 0
    if how != "mark":
        assert "ok 192.0.2.2" in r.stdout


def test_nested_child_cgroup_is_covered(world):
    import sys
    from netleak_hook.kernel import cgroupfs
    root = cgroupfs.find_cgroup2()
    with world.lab.capture("up0") as cap:
        r = world.netleak("vpn0", sys.executable, "-c", NESTED, root,
                          labmod.CLIENT_CODE, labmod.SERVER4, "8080", "tcp", "1")
        r2 = world.netleak("vpn0", sys.executable, "-c", NESTED, root,
                           ESCAPE, "bindtodevice", labmod.SERVER4)
        leaked = cap.stop()
    assert r.stdout.strip() == "ok 198.51.100.2", r.stderr
    assert r2.returncode == 0, r2.stderr
    lines = r2.stdout.splitlines()
    assert len(lines) == 5 and all(ln.startswith("refused") for ln in lines), r2.stdout
    assert leaked == 0
    world.control()
