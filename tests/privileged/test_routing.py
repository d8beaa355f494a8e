"""The routed path: v4/v6, TCP/UDP/ICMP leave by vpn0, as the server sees."""
from __future__ import annotations

import pytest

from netleak_hook import lab
from tests.helpers import wait_until

pytestmark = pytest.mark.privileged


def test_plain_request_takes_default_route(world):
    r = world.lab.run(world.lab.client())
    assert r.stdout.strip() == "ok 192.0.2.2"


@pytest.mark.parametrize("server,proto,seen", [
    (lab.SERVER4, "tcp", "198.51.100.2"),
    (lab.SERVER4, "udp", "198.51.100.2"),
    (lab.SERVER6, "tcp", "2001:db8:2::2"),
    (lab.SERVER6, "udp", "2001:db8:2::2"),
])
def test_request_leaves_by_iface(world, server, proto, seen):
    with world.lab.capture("up0") as cap:
        r = world.netleak("vpn0", *world.lab.client(server, proto))
        leaked = cap.stop()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"ok {seen}"
    assert leaked == 0
    world.control()


def test_icmp_leaves_by_iface(world):
    with world.lab.capture("up0") as up, world.lab.capture("vpn0") as vpn:
        r = world.netleak("vpn0", "ping", "-c", "2", "-i", "0.2", "-W", "2", lab.SERVER4)
        leaked, carried = up.stop(), vpn.stop()
    assert r.returncode == 0, r.stdout + r.stderr
    assert leaked == 0
    assert carried >= 4        # 2 requests + 2 replies seen on vpn0
    world.control()


def test_rules_and_table(world):
    p = world.spawn("vpn0", "sleep", "30")
    try:
        assert wait_until(lambda: len(world.our_rules()) >= 4), world.rules()
        rules = "\n".join(world.our_rules())
        assert "fwmark 0x6e6c0001" in rules
        assert "from 198.51.100.2 lookup 28200" in rules
        assert "from 2001:db8:2::2 lookup 28200" in rules
        routes = world.our_routes()
        assert "default via 198.51.100.1 dev vpn0" in routes
        assert "unreachable default" in routes
    finally:
        p.kill()
        p.wait()


def test_exec_keeps_pid_status_and_signals(world):
    p = world.spawn("vpn0", "sh", "-c", "echo $$; exit 7")
    out, err = p.communicate(timeout=30)
    assert p.returncode == 7, err
    assert int(out.strip()) == p.pid
    p = world.spawn("vpn0", "sleep", "30")

    def is_sleep() -> bool:   # netleak-exec has exec'd the command
        with open(f"/proc/{p.pid}/comm") as f:
            return f.read().strip() == "sleep"
    assert wait_until(is_sleep)
    p.terminate()
    p.wait(timeout=10)
    assert p.returncode == -15


def test_user_option_drops_privileges(world):
    r = world.netleak("-u", "nobody", "vpn0", "sh", "-c", "id -u; id -G; cat /proc/self/status | grep ^CapEff")
    assert r.returncode == 0, r.stderr
    uid, groups, caps = r.stdout.strip().splitlines()
    assert uid == "65534"
    assert "0" not in groups.split()
    assert caps.split()[1] == "0000000000000000"
    r = world.netleak("-u", "nobody", "vpn0", *world.lab.client())
    assert r.stdout.strip() == "ok 198.51.100.2"


def test_second_session_reuses_binding(world):
    p = world.spawn("vpn0", "sleep", "30")
    try:
        r = world.netleak("vpn0", *world.lab.client())
        assert r.stdout.strip() == "ok 198.51.100.2"
        assert wait_until(lambda: world.sessions() == 1)
        # the surviving session still routes
        assert len([x for x in world.our_rules() if "fwmark" in x]) == 2
    finally:
        p.kill()
        p.wait()
