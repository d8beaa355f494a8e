"""The daemon's loop on fakes (daemon/loop.py): the order of start-up, of
each periodic pass and of a clean exit; and the log lines people and
scripts read."""
from __future__ import annotations

import logging

import pytest

from netleak_hook.core.errors import NetleakError
from netleak_hook.core.state import State
from tests.unit.fakes import NETNS, World
from tests.helpers import make_session


def positions(journal, *wanted) -> list[int]:
    """Where each (who, what) of WANTED first happens."""
    out = []
    for who, what in wanted:
        i = journal.index(who, what)
        assert i >= 0, f"{who} {what} never happened"
        out.append(i)
    return out


def proxy_state() -> State:
    s = make_session(id="p1", iface="", cgroup="netleak/exec-p1-9", cgroup_id=5,
                     pinset="/pins/v1", proxy="socks5://203.0.113.20:1080",
                     proxy_addr="203.0.113.20", committed=True)
    return State().with_session(s)


def test_start_order():
    w = World(state=proxy_state())
    w.cgroups.add("netleak/exec-p1-9", cid=5)
    d = w.daemon()
    joined = []

    def listen(store):
        w.journal.append(("daemon", "listen"))
        return object()

    d.start(listen, settle=lambda parent: (joined.append(parent),
                                           w.journal.append(("daemon", "own cgroup")))[1])
    assert joined == [w.roles.parent]
    assert d.relays.cgroup == w.roles.parent + "/relay"
    got = positions(w.journal, ("daemon", "own cgroup"), ("kernel", "netns_cookie"),
                    ("pins", "ensure"), ("store", "load"), ("bpf", "update"),
                    ("relay", "start"), ("maps", "open_ring"), ("daemon", "listen"))
    assert got == sorted(got)
    # the start-up gc ran before the socket was opened, and is kept to report
    assert d.collector.unreported["sessions"] == 1
    assert w.journal.index("progs", "attach") < w.journal.index("daemon", "listen")
    assert w.holder.netns == NETNS


def test_start_refuses_a_kernel_without_namespace_cookies():
    w = World()
    d = w.daemon()
    d.netns_cookie = lambda: 0
    with pytest.raises(NetleakError, match="SO_NETNS_COOKIE"):
        d.start(lambda store: object())
    assert w.journal.index("pins", "ensure") == -1


def test_periodic_pass_reaps_then_reconciles_then_sweeps():
    w = World()
    d = w.daemon()
    calls = []
    d.reaper.reap = lambda only=None: calls.append("reap") or []
    d.links.reconcile_all = lambda: calls.append("reconcile")
    d.collector.sweep_orphan_cgroups = lambda: calls.append("sweep") or []
    d.periodic()
    assert calls == ["reap", "reconcile", "sweep"]


def test_netlink_messages_reconcile_everything_none_nothing():
    w = World()
    d = w.daemon()
    calls = []
    d.links.reconcile_all = lambda: calls.append("reconcile")
    d.on_netlink()
    d.netlink_events.batches.append(["newlink"])
    d.on_netlink()
    assert calls == ["reconcile"]


def test_a_broken_netlink_batch_is_logged(caplog):
    w = World()
    d = w.daemon()

    def broken():
        raise ValueError("truncated")
    d.netlink_events.get = broken
    calls = []
    d.links.reconcile_all = lambda: calls.append("reconcile")
    d.on_netlink()
    assert "reading netlink events" in caplog.text
    assert calls == ["reconcile"]           # some were lost: a pass, to be sure


def test_clean_exit_stops_the_relay_then_the_ring_then_clears_addresses():
    w = World()
    d = w.daemon()
    w.open(proxy="socks5://203.0.113.20:1080", iface="")
    w.links.sync_locals()
    w.ring.open_ring = lambda maps, netns: Reader()
    w.ring.open()
    w.holder.state = State()        # the last session ended meanwhile
    w.journal.clear()
    d.close()
    got = positions(w.journal, ("relay", "close"), ("maps", "close_ring"), ("bpf", "delete"))
    assert got == sorted(got)
    assert w.bpf.maps[w.maps.locals] == {}


def test_clean_exit_with_sessions_keeps_their_addresses_and_ring():
    w = World()
    w.net.link("wg0", 5)
    d = w.daemon()
    w.open()
    w.ring.open_ring = lambda maps, netns: Reader()
    w.ring.open()
    d.close()
    assert w.bpf.maps[w.maps.locals] and w.maps.closed_rings == []


class Reader:
    fd = -1

    def records(self):
        return []

    def close(self):
        pass


# ---------- log lines ----------

def fields(caplog, event: str) -> list[dict]:
    return [r.fields for r in caplog.records
            if getattr(r, "fields", {}).get("event") == event]


def test_kill_switch_logged_once_each_way_with_the_new_index(caplog):
    caplog.set_level(logging.INFO)
    w = World()
    w.net.link("wg0", 5)
    w.open()
    del w.net.links["wg0"]
    w.links.reconcile_all()
    w.links.reconcile_all()
    w.net.link("wg0", 9)
    w.links.reconcile_all()
    w.links.reconcile_all()
    on, off = fields(caplog, "kill-switch-on"), fields(caplog, "kill-switch-off")
    assert [(f["cause"], f["sessions"]) for f in on] == [("gone", 1)]
    assert [(f["ifindex"], f["recreated"], f["old_ifindex"]) for f in off] == [
        (5, False, None), (9, True, 5)]


def test_session_open_and_end_are_logged(caplog):
    caplog.set_level(logging.INFO)
    w = World()
    w.net.link("wg0", 5)
    w.open()
    w.clock.now += 12.5
    w.sessions.remove(w.state.sessions["s1"], "cgroup-empty")
    opened, = fields(caplog, "session-open")
    ended, = fields(caplog, "session-end")
    assert (opened["session"], opened["kind"], opened["iface"]) == ("s1", "exec", "wg0")
    assert (ended["cause"], ended["age"]) == ("cgroup-empty", 12.5)
    release, = fields(caplog, "release")
    assert release["iface"] == "wg0"


def test_a_failing_request_is_logged_with_its_traceback(caplog):
    from tests.unit.test_daemon_sessions import ask
    w = World()
    ask(w, b'{"op": "open", "id": "x"}\n')
    failed = [r for r in caplog.records if r.getMessage() == "request failed"]
    assert failed and failed[0].exc_info


# ---------- as a systemd service ----------

def test_a_yield_request_stops_the_loop_after_its_reply():
    from tests.unit.test_daemon_sessions import ask
    w = World()
    d = w.daemon()
    assert ask(w, b'{"op": "yield"}\n')["ok"] and d.stopping


def test_run_turns_the_tick():
    w = World()
    d = w.daemon()
    d.listener = object()
    turns = []

    def tick():
        turns.append(1)
        d.stopping = len(turns) >= 3
    d.reaper.follow = lambda: None
    d.wait = lambda sources: []
    d.run(tick=tick)
    assert len(turns) == 3


def notify_socket(tmp_path):
    import socket
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    path = str(tmp_path / "notify")
    s.bind(path)
    s.settimeout(1)
    return s, path


def test_notifier_says_ready_and_feeds_the_watchdog_at_half_its_period(tmp_path):
    import os
    from netleak_hook.daemon.service import Notifier
    s, path = notify_socket(tmp_path)
    now = [100.0]
    n = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000",
                  "WATCHDOG_PID": str(os.getpid())}, clock=lambda: now[0])
    n.send("READY=1")
    assert s.recv(100) == b"READY=1"
    n.tick()
    assert s.recv(100) == b"WATCHDOG=1"
    now[0] += 0.5
    n.tick()                    # not due yet: the period is 2 s, fed every 1 s
    now[0] += 0.6
    n.tick()
    assert s.recv(100) == b"WATCHDOG=1"
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recv(100)


def test_notifier_is_silent_without_systemd_or_for_another_pid(tmp_path):
    from netleak_hook.daemon.service import Notifier
    s, path = notify_socket(tmp_path)
    Notifier({}).send("READY=1")
    other = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"})
    other.tick()
    assert other.interval == 0
    s.setblocking(False)
    with pytest.raises(BlockingIOError):
        s.recv(100)


def test_notifier_takes_an_abstract_socket():
    from netleak_hook.daemon.service import Notifier
    assert Notifier({"NOTIFY_SOCKET": "@/org/systemd/x"}).addr == "\0/org/systemd/x"


# ---------- where the daemon lives ----------

def test_settle_off_systemd_moves_an_auto_started_daemon_under_the_parent(monkeypatch):
    from netleak_hook.daemon import service
    joined = []
    monkeypatch.setattr(service, "leave_callers_cgroup", joined.append)
    assert service.settle("/cg", "/cg/netleak", True, False) == "/cg/netleak"
    assert joined == ["/cg/netleak"]
    assert service.settle("/cg", "/cg/netleak", False, False) == "/cg/netleak"
    assert joined == ["/cg/netleak"]        # one run by hand stays where it is


def test_settle_on_systemd_asks_for_a_delegated_scope_of_its_own(monkeypatch):
    import os
    from netleak_hook.daemon import service
    w = World()
    monkeypatch.setattr(service, "leave_callers_cgroup", lambda parent: 1 / 0)
    home = service.settle("/cg", "/cg/netleak", True, True, units=w.units)
    name = f"netleak-daemon-{os.getpid()}.scope"
    assert home == f"/cg/netleak.slice/{name}"
    assert ("units", "start_scope", name, os.getpid(), True) in w.journal


def test_settle_on_systemd_falls_back_to_the_parent_when_systemd_refuses(monkeypatch):
    import os
    from netleak_hook.daemon import service
    w = World()
    w.units.gone.add(f"netleak-daemon-{os.getpid()}.scope")
    joined = []
    monkeypatch.setattr(service, "leave_callers_cgroup", joined.append)
    assert service.settle("/cg", "/cg/netleak", True, True, units=w.units) == "/cg/netleak"
    assert joined == ["/cg/netleak"]


def test_settle_as_a_service_stays_in_its_unit(monkeypatch):
    from netleak_hook.daemon import service
    monkeypatch.setattr(service.cgroupfs, "of_pid",
                        lambda pid: "system.slice/netleak-daemon.service")
    home = service.settle("/cg", "/cg/netleak", False, True)
    assert home == "/cg/system.slice/netleak-daemon.service"
    monkeypatch.setattr(service.cgroupfs, "of_pid", lambda pid: "")
    assert service.settle("/cg", "/cg/netleak", False, True) == "/cg/netleak"


def test_the_relay_cgroup_goes_under_the_daemons_home():
    w = World(state=proxy_state())
    d = w.daemon()
    d.start(lambda store: object(), settle=lambda parent: "/cg/netleak.slice/d.scope")
    assert d.relays.cgroup == "/cg/netleak.slice/d.scope/relay"
    made = ("cgroups", "make", "netleak.slice/d.scope/relay")
    attached = ("pins", "attach_ingress", "prog_relay_in", "netleak.slice/d.scope/relay")
    assert made in w.journal and attached in w.journal
    # its one session's cgroup was gone: the relay and its cgroup with it
    assert ("cgroups", "remove_if_empty", "netleak.slice/d.scope/relay") in w.journal


# ---------- the hand-over to a service ----------

class _Held:
    """A store whose lock frees after N tries, with a daemon socket that
    answers each request with REPLY."""

    def __init__(self, tmp_path, reply: dict, frees_after: int = 10**9) -> None:
        import json
        import socket
        import threading
        self.socket_path = str(tmp_path / "daemon.sock")
        self.tries, self.frees_after, self.asked = 0, frees_after, []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(self.socket_path)
        self.server.listen(8)

        def serve():
            while True:
                try:
                    c, _ = self.server.accept()
                except OSError:
                    return
                with c:
                    self.asked.append(json.loads(c.recv(4096)))
                    c.sendall(json.dumps(reply).encode() + b"\n")
        threading.Thread(target=serve, daemon=True).start()

    def take_lock(self):
        self.tries += 1
        return "lock" if self.tries > self.frees_after else None


def test_take_over_asks_again_until_the_lock_is_free(tmp_path):
    from netleak_hook.daemon import service
    held = _Held(tmp_path, {"ok": True}, frees_after=25)     # ~1.2 s of tries
    assert service.take_over(held, timeout=5) == "lock"
    assert len(held.asked) >= 2 and held.asked[0] == {"op": "yield"}
    held.server.close()


def test_take_over_stops_a_daemon_too_old_to_yield(tmp_path, monkeypatch):
    import os
    import signal
    from netleak_hook.daemon import service
    killed = []
    monkeypatch.setattr(service.os, "kill", lambda pid, sig: killed.append((pid, sig)))
    held = _Held(tmp_path, {"ok": False, "error": "unknown request 'yield'"}, frees_after=3)
    assert service.take_over(held, timeout=5) == "lock"
    assert killed == [(os.getpid(), signal.SIGTERM)]      # the socket's peer: us, here
    held.server.close()
