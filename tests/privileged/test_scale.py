"""Fifty netleak-exec sessions at once over two interfaces."""
from __future__ import annotations

import json
import os
import sys
import threading
import time

import pytest

from netleak_hook import lab as lablib
from netleak_hook.rundir.store import Store
from tests.helpers import wait_until

pytestmark = pytest.mark.privileged

N = 50
SOURCE = {"vpn0": "198.51.100.2", "up0": "192.0.2.2"}

# answer once, wait to be released, answer again, exit
WORK = r"""
import os, socket, sys, time
host, port, release = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def ask():
    try:
        s = socket.create_connection((host, port), timeout=2)
        reply = s.recv(100).decode().strip()
        s.close()
        return "ok " + reply
    except OSError as e:
        return "refused " + str(e.strerror)
print(ask(), flush=True)
while not os.path.exists(release):
    time.sleep(0.05)
print(ask(), flush=True)
"""


class StateWatcher(threading.Thread):
    """Reads the state file over and over: every read must be a whole file."""

    def __init__(self, path: str) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.reads = 0
        self.bad: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open(self.path) as f:
                    text = f.read()
            except FileNotFoundError:
                continue
            self.reads += 1
            try:
                if json.loads(text).get("version") != 1:
                    self.bad.append(text[:80])
            except ValueError:
                self.bad.append(text[:80])


def test_fifty_sessions_over_two_interfaces(world, tmp_path):
    ifaces = ["vpn0" if i % 2 else "up0" for i in range(N)]
    release = [str(tmp_path / f"release-{i}") for i in range(N)]
    watcher = StateWatcher(Store(world.run_dir).state_file)
    watcher.start()
    t0 = time.monotonic()
    procs = [world.spawn(ifaces[i], sys.executable, "-c", WORK, lablib.SERVER4,
                         str(lablib.PORT), release[i]) for i in range(N)]
    try:
        first = [p.stdout.readline().strip() for p in procs]
        print(f"{N} sessions started and answered in {time.monotonic() - t0:.2f}s")
        assert first == [f"ok {SOURCE[i]}" for i in ifaces]
        assert world.sessions() == N

        bindings = Store(world.run_dir).load().bindings
        assert sorted(bindings) == ["up0", "vpn0"]
        assert bindings["up0"].mark != bindings["vpn0"].mark
        assert bindings["up0"].table != bindings["vpn0"].table
        rules_at_n = sorted(world.our_rules())

        r = world.cli("status", "--json")
        rows = json.loads(r.stdout)["sessions"]
        assert len(rows) == N and {x["state"] for x in rows} == {"routed"}
        assert len({x["cgroup"] for x in rows}) == N

        # the first half ends (both interfaces among them) ...
        for i in range(N // 2):
            open(release[i], "w").close()
        for i in range(N // 2):
            out, err = procs[i].communicate(timeout=30)
            assert out.strip() == f"ok {SOURCE[ifaces[i]]}", err
        assert wait_until(lambda: world.sessions() == N - N // 2)
        # ... and the rest still route as before, on the same shared rules
        assert sorted(world.our_rules()) == rules_at_n
        for i in range(N // 2, N):
            open(release[i], "w").close()
        for i in range(N // 2, N):
            out, err = procs[i].communicate(timeout=30)
            assert out.strip() == f"ok {SOURCE[ifaces[i]]}", err
            assert procs[i].returncode == 0
        t1 = time.monotonic()
        assert wait_until(lambda: world.sessions() == 0, timeout=10, step=0.01)
        print(f"the last {N - N // 2} reaped {time.monotonic() - t1:.2f}s after they exited")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        watcher.stop.set()
        watcher.join()
    assert watcher.reads > 0 and watcher.bad == []
    # the world fixture checks that nothing is left: sessions, rules, routes,
    # cgroups, map entries
    assert wait_until(lambda: world.sessions() == 0 and world.cgroups() == [])
    assert os.path.exists(Store(world.run_dir).state_file)
