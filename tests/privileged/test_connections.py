"""netleak connections in the lab: a workload (as nobody) with three
connections of known sizes sees each with its bytes within 1%, its
process and user; in proxy mode with the real destination and the name the
program asked for; --follow gives the table, then the closes."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netleak_hook import lab as labmod
from tests.helpers import wait_until
from tests.privileged.conftest import CLI, Held
from tests.privileged.test_proxy import NAME, PORT as PROXY_PORT, PROXY4, PROXY6, Proxy

pytestmark = pytest.mark.privileged

S4 = labmod.SERVER4
SIZES_PORT = 9100

# In NET: TCP: reads "UP DOWN\n", sends DOWN bytes, reads UP bytes, then
# waits for the client to close. UDP: answers each datagram with 100 bytes.
SIZES = r"""
import socket, sys, threading
addr, port = sys.argv[1], int(sys.argv[2])
def serve(c):
    f = c.makefile("rb")
    up, down = map(int, f.readline().split())
    c.sendall(b"d" * down)
    got = 0
    while got < up:
        chunk = f.read(min(65536, up - got))
        if not chunk:
            break
        got += len(chunk)
    c.recv(1)
    c.close()
t = socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
t.bind((addr, port)); t.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((addr, port))
def udp():
    while True:
        data, a = u.recvfrom(4096)
        u.sendto(b"u" * 100, a)
threading.Thread(target=udp, daemon=True).start()
print("ready", flush=True)
while True:
    c, _ = t.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

# The workload: TCP connections of the sizes given (UP:DOWN each), and with
# "udp" 50 datagrams of 1000 bytes, each answered; prints "ready" and holds
# its sockets until killed.
WORK = r"""
import socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
held = []
for spec in sys.argv[3:]:
    if spec == "udp":
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.settimeout(2)
        u.connect((host, port))
        for _ in range(50):
            u.send(b"x" * 1000); u.recv(200)
        held.append(u)
        continue
    up, down = map(int, spec.split(":"))
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"%d %d\n" % (up, down))
    got = 0
    while got < down:
        got += len(s.recv(65536))
    s.sendall(b"u" * up)
    held.append(s)
time.sleep(0.5)             # the last ACKs
print("ready", flush=True)
time.sleep(300)
"""

NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def sizes_server(lab) -> None:
    p = lab.spawn([sys.executable, "-c", SIZES, S4, str(SIZES_PORT)], ns=lab.net,
                  stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"


def workload(hold: Held, host: str, *specs: str) -> subprocess.Popen:
    join = f'echo $$ > {hold.path}/cgroup.procs && exec "$@"'
    p = hold.world.lab.spawn(["sh", "-c", join, "sh", *NOBODY, sys.executable, "-c", WORK,
                              host, str(SIZES_PORT), *specs], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    return p


def rows(world, *args: str) -> list[dict]:
    r = world.cli("connections", "--json", *args)
    assert r.returncode == 0, r.stderr
    return [json.loads(ln) for ln in r.stdout.splitlines()]


def near(got: int, want: int) -> bool:
    return abs(got - want) <= 0.01 * want


def test_three_connections_of_known_sizes(world):
    w = world
    sizes_server(w.lab)
    hold = Held(w, "vpn0")
    try:
        p = workload(hold, S4, "200000:10000", "1000:300000", "udp")
        mine = [r for r in rows(w) if r["pid"] == p.pid]
        print("rows:", mine)
        assert len(mine) == 3, rows(w)
        tcp = sorted((r for r in mine if r["proto"] == "tcp"), key=lambda r: -r["tx_bytes"])
        (udp,) = [r for r in mine if r["proto"] == "udp"]
        first, second = tcp
        # what each sent: the request line, then UP bytes
        assert near(first["tx_bytes"], 200000 + len(b"200000 10000\n")), first
        assert near(first["rx_bytes"], 10000), first
        assert near(second["tx_bytes"], 1000 + len(b"1000 300000\n")), second
        assert near(second["rx_bytes"], 300000), second
        assert (udp["tx_bytes"], udp["rx_bytes"], udp["tx_packets"], udp["rx_packets"]) == \
            (50000, 5000, 50, 50), udp
        for r in mine:
            assert r["remote"] == f"{S4}:{SIZES_PORT}" and r["user"] == "nobody", r
            assert r["comm"].startswith("python") and r["session"] == hold.rows()[0]["id"]
            assert r["state"] in ("established", "connected") and r["age"] is not None, r
            assert r["local"].startswith(labmod.LINKS["vpn0"][0].split("/")[0] + ":"), r
        # busiest first; the table fits 80 columns and shows them
        assert [r["cookie"] for r in rows(w) if r["pid"] == p.pid][0] == second["cookie"]
        table = w.cli("connections").stdout.splitlines()
        assert all(len(ln) <= 80 for ln in table), table
        assert sum(str(p.pid) in ln for ln in table) == 3, table
        assert w.cli("connections", "--session", "nosuch").stdout.splitlines() == [table[0]]
        # metrics count them by session and protocol
        metrics = w.cli("metrics").stdout
        assert any(ln.startswith("netleak_connections{") and 'proto="udp"' in ln and
                   ln.endswith(" 1") for ln in metrics.splitlines()), metrics
        # --follow: the current table first, then the closes
        follow = w.lab.spawn(CLI + ["connections", "--follow", "--json", "--interval", "0.2"],
                             env=w.env, stdout=subprocess.PIPE, text=True)
        try:
            seen = [json.loads(follow.stdout.readline()) for _ in range(len(rows(w)))]
            assert {e["event"] for e in seen} == {"current"}
            assert {e["cookie"] for e in mine} <= {e["cookie"] for e in seen}
            p.kill()
            p.wait()
            closed = set()
            while not {e["cookie"] for e in mine} <= closed:
                e = json.loads(follow.stdout.readline())
                if e["event"] == "close":
                    closed.add(e["cookie"])
        finally:
            follow.kill()
            follow.wait()
    finally:
        hold.close()


@pytest.fixture
def proxied(world):
    w = world
    lab = w.lab
    lab.ip(lab.net, "addr", "add", f"{PROXY4}/32", "dev", "lo")
    lab.ip(lab.net, "addr", "add", f"{PROXY6}/128", "dev", "lo", "nodad")
    sizes_server(lab)
    proxy = Proxy(w, "socks5")
    yield w
    proxy.stop()


def test_in_proxy_mode_the_real_destination_and_the_name(proxied):
    w = proxied
    hold = Held(w, "--proxy", f"socks5h://{PROXY4}:{PROXY_PORT}")
    try:
        by_addr = workload(hold, S4, "3000:100000")
        by_name = workload(hold, NAME, "4000:50000")
        got = {r["pid"]: r for r in rows(w) if r["pid"] in (by_addr.pid, by_name.pid)}
        print("proxied:", got)
        a, n = got[by_addr.pid], got[by_name.pid]
        # the program's socket talks to the relay; the row says where to
        assert a["remote"].startswith("127.0.0.1:") and a["dest"] == f"{S4}:{SIZES_PORT}"
        assert near(a["rx_bytes"], 100000) and near(a["tx_bytes"], 3000 + 12), a
        assert n["name"] == NAME and n["dest"].endswith(f":{SIZES_PORT}"), n
        assert near(n["rx_bytes"], 50000), n
        table = w.cli("connections").stdout
        assert f"{S4}:{SIZES_PORT}" in table and f"{NAME}:{SIZES_PORT}" in table, table
        for p in (by_addr, by_name):
            p.kill()
            p.wait()
        assert wait_until(lambda: not [r for r in rows(w) if r["pid"] in got])
    finally:
        hold.close()
