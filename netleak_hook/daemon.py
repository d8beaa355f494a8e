"""The daemon: one per network namespace.

It owns the rules and routes (through netlink) and the policy map entries:
it sets them up for new sessions, follows each controlled interface through
down, up, deletion and re-creation (kill switch), and reaps sessions whose
cgroup is empty. Requests come as JSON lines on a Unix socket.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import select
import signal
import socket
import sys
import time

from . import plan, reaper
from .config import Config
from .errors import NetleakError
from .kernel import bpfsys, cgroupfs, netlink, programs
from .policy import POLICY_SIZE, Policy, pack_key
from .state import Session, State
from .store import Store, run_dir

log = logging.getLogger("netleak.daemon")

TICK = 0.25            # seconds between reaper passes
RECONCILE_EVERY = 1.0  # full reconcile, in case an event was missed


class Daemon:
    def __init__(self, cfg: Config, store: Store, idle_exit: float = 0.0) -> None:
        self.cfg = cfg
        self.store = store
        self.idle_exit = idle_exit
        self.cgroot = cgroupfs.find_cgroup2()
        self.state = State()
        self.ipr = netlink.open_ipr()
        self.events = netlink.open_events()
        self.pins = programs.Pinset("")
        self.maps: dict[str, programs.Maps] = {}
        self.progs: dict[str, programs.Programs] = {}
        self.live: dict[str, Policy] = {}    # policy last written per interface
        self.stopping = False
        self.listener: socket.socket | None = None

    # ---------- start-up ----------

    def start(self) -> None:
        programs.ensure_bpffs(self.cfg.bpf_dir)
        self.pins = programs.ensure_pinned(self.cfg.bpf_dir)
        self.state = self.store.load()
        self.reap()
        self.reconcile_all()
        self.listener = _listen(self.store.socket_path)
        log.info("daemon %d ready in %s (pins %s)", os.getpid(), self.store.path,
                 self.pins.path)

    def save(self) -> None:
        self.store.save(self.state)

    def maps_for(self, pinset: str) -> programs.Maps | None:
        if pinset not in self.maps:
            pins = programs.Pinset(pinset)
            if not pins.complete():
                return None
            self.maps[pinset] = programs.Maps(pins)
        return self.maps[pinset]

    def progs_for(self, pinset: str) -> programs.Programs | None:
        if pinset not in self.progs:
            pins = programs.Pinset(pinset)
            if not pins.complete():
                return None
            self.progs[pinset] = programs.Programs(pins)
        return self.progs[pinset]

    # ---------- main loop ----------

    def run(self) -> None:
        assert self.listener is not None
        last_reconcile = time.monotonic()
        idle_since = time.monotonic()
        while not self.stopping:
            watched = self._cgroup_event_files()
            try:
                r, _, x = select.select([self.listener, self.events], [],
                                        list(watched), TICK)
            except InterruptedError:
                continue
            for f in watched:
                f.close()
            try:
                if self.events in r:
                    self.on_netlink()
                if self.listener in r:
                    self.accept()
                self.reap()
                now = time.monotonic()
                if now - last_reconcile >= RECONCILE_EVERY:
                    self.reconcile_all()
                    last_reconcile = now
            except Exception:  # keep monitoring whatever one pass hit
                log.exception("daemon loop")
                now = time.monotonic()
            if self.state.sessions:
                idle_since = now
            elif self.idle_exit and now - idle_since > self.idle_exit:
                log.info("no sessions for %.0fs: exiting", self.idle_exit)
                break

    def _cgroup_event_files(self) -> list:
        """cgroup.events of every session: poll() reports a change as PRI."""
        files = []
        for s in self.state.sessions.values():
            with contextlib.suppress(OSError):
                f = open(os.path.join(cgroupfs.abspath(self.cgroot, s.cgroup),
                                      "cgroup.events"), "rb")
                f.read()
                files.append(f)
        return files

    def on_netlink(self) -> None:
        try:
            msgs = self.events.get()
        except Exception:  # pyroute2 may raise on a truncated batch
            log.exception("reading netlink events")
            msgs = []
        # pyroute2 may keep part of a burst in its own buffer, where select()
        # cannot see it: reconcile every bound interface, not just the ones
        # these messages name (a handful of netlink dumps).
        if msgs:
            self.reconcile_all()

    # ---------- requests ----------

    def accept(self) -> None:
        assert self.listener is not None
        try:
            conn, _ = self.listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                buf = b""
                while not buf.endswith(b"\n") and len(buf) < 65536:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    buf += chunk
                msg = json.loads(buf or b"{}")
                reply = self.dispatch(msg)
            except NetleakError as e:
                reply = {"ok": False, "error": e.message}
            except (ValueError, OSError) as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:  # never let one request kill the daemon
                log.exception("request failed")
                reply = {"ok": False, "error": f"netleak daemon error: {e}; see "
                                               f"{self.store.log_file}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")

    def dispatch(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "open":
            return self.op_open(msg)
        if op == "abort":
            s = self.state.sessions.get(msg.get("id", ""))
            if s:
                self.remove_session(s)
                self.save()
            return {"ok": True}
        raise NetleakError(f"unknown request {op!r}")

    def op_open(self, msg: dict) -> dict:
        """Bind the interface (if new), write the policy, attach the programs."""
        iface = str(msg["iface"])
        via4, via6 = msg.get("via4"), msg.get("via6")
        binding = self.state.bindings.get(iface)
        if binding is None:
            link = netlink.read_link(self.ipr, iface)
            if link is None:
                raise NetleakError(
                    f"no interface named {iface} in this network namespace: check "
                    f"'ip -br link'")
            binding = self._new_binding(iface, link, via4, via6)
        elif via4 or via6:
            binding = plan.with_user_gateways(binding, via4, via6)
        # routes and rules of a known, unchanged binding are in place and
        # followed by events: only this session's entry is new
        changed = binding != self.state.bindings.get(iface) or iface not in self.live
        s = Session(id=str(msg["id"]), iface=iface, cgroup=str(msg["cgroup"]).strip("/"),
                    cgroup_id=int(msg["cgroup_id"]), pinset=self.pins.path,
                    owned=bool(msg.get("owned", True)), pid=int(msg.get("pid", 0)),
                    created=time.time())
        path = cgroupfs.abspath(self.cgroot, s.cgroup)
        if cgroupfs.cgroup_id(path) != s.cgroup_id:
            raise NetleakError(f"cgroup {s.cgroup} changed while being set up: retry")
        self.state = self.state.with_binding(binding).with_session(s)
        try:
            if changed:
                self.reconcile_all()
            else:
                self._write_policies(iface, self.live[iface])
            maps = self.maps_for(s.pinset)
            progs = self.progs_for(s.pinset)
            if maps is None or progs is None:
                raise NetleakError(f"pinned programs missing in {s.pinset}: retry")
            progs.attach(path)
            if msg.get("join") and s.pid:
                # move the requester in only now that the cgroup is protected
                cgroupfs.join(path, s.pid)
                s = dataclasses.replace(s, committed=True)
                self.state = self.state.with_session(s)
        except BaseException:
            self.remove_session(s)
            self.save()
            raise
        self.save()
        pol = self.live[iface]
        log.info("session %s: %s on %s (mark %#x, table %d)", s.id, s.cgroup, iface,
                 binding.mark, binding.table)
        return {"ok": True, "id": s.id, "mark": binding.mark, "table": binding.table,
                "ifindex": pol.ifindex, "killed": pol.killed}

    def _new_binding(self, iface: str, link: plan.Link, via4: str | None,
                     via6: str | None) -> plan.Binding:
        user4, user6 = bool(via4), bool(via6)
        if not link.layer3 and not (via4 and via6):
            gw4, gw6 = netlink.default_gateways(self.ipr, link.index)
            via4, via6 = via4 or gw4, via6 or gw6
            if not (via4 or via6):
                raise NetleakError(
                    f"{iface} is not point-to-point and has no default route to learn "
                    f"a gateway from: pass --via GATEWAY (e.g. --via 192.0.2.1)")
        used = {b.slot for b in self.state.bindings.values()}
        b = plan.make_binding(iface, used, self.cfg.mark_base, self.cfg.table_base,
                              self.cfg.max_interfaces, via4, via6, user4, user6)
        if b is None:
            raise NetleakError(
                f"all {self.cfg.max_interfaces} interface slots are in use: end "
                f"sessions on other interfaces first")
        return b

    # ---------- kernel state ----------

    def _write_policies(self, iface: str, pol: Policy) -> None:
        for s in self.state.sessions_on(iface):
            maps = self.maps_for(s.pinset)
            if maps is None:
                continue
            key = pack_key(s.cgroup_id)
            raw = bpfsys.map_lookup(maps.policy, key, POLICY_SIZE)
            if raw is None or Policy.unpack(raw) != pol:
                bpfsys.map_update(maps.policy, key, pol.pack())

    def _read_links(self) -> dict[str, plan.Link | None]:
        return {iface: netlink.read_link(self.ipr, iface) for iface in self.state.bindings}

    def reconcile_all(self) -> None:
        """Make rules, routes and map entries of every bound interface match
        what the interface is now.

        Order matters: the kill switch goes on before anything else when an
        interface is unusable, and comes off only after its routes and rules
        are back and the map holds its (possibly new) ifindex.
        """
        links = self._read_links()
        for iface, link in links.items():
            try:
                self._kill_if_unusable(iface, link)
                self._apply_routes(self._refresh_gateways(iface, link), link)
            except Exception:
                log.exception("reconciling %s", iface)
        self._apply_rules(links)
        for iface, link in links.items():
            if link is not None and link.up:
                self._release_kill(iface, link)

    def _kill_if_unusable(self, iface: str, link: plan.Link | None) -> None:
        if link is not None and link.up:
            return
        before = self.live.get(iface)
        if before is None or not before.killed:
            log.info("%s %s: kill switch on", iface, "is gone" if link is None else "is down")
        self.live[iface] = Policy(ifindex=link.index if link else 0,
                                  mark=self.state.bindings[iface].mark, killed=True)
        self._write_policies(iface, self.live[iface])

    def _release_kill(self, iface: str, link: plan.Link) -> None:
        b = self.state.bindings[iface]
        pol = Policy(ifindex=link.index, mark=b.mark, killed=False)
        if self.live.get(iface) != pol:
            log.info("%s is up (ifindex %d): routes in table %d, kill switch off",
                     iface, link.index, b.table)
        self.live[iface] = pol
        self._write_policies(iface, pol)

    def _refresh_gateways(self, iface: str, link: plan.Link | None) -> plan.Binding:
        b = self.state.bindings[iface]
        if link is None or link.layer3 or (b.user_via4 and b.user_via6) or not link.up:
            return b
        nb = plan.with_learned_gateways(b, *netlink.default_gateways(self.ipr, link.index))
        if nb != b:
            self.state = self.state.with_binding(nb)
            self.save()
        return nb

    def _apply_routes(self, b: plan.Binding, link: plan.Link | None) -> None:
        current = netlink.current_routes(self.ipr, b.table)
        add, remove = plan.diff(current, plan.routes_for(b, link))
        for r in sorted(remove, key=str):
            netlink.del_route(self.ipr, r)
        for r in sorted(add, key=str):
            try:
                netlink.add_route(self.ipr, r)
            except Exception as e:  # e.g. the link vanished meanwhile
                log.warning("route %s: %s", r, e)

    def _our_tables(self) -> set[int]:
        return {self.cfg.table_base + i for i in range(self.cfg.max_interfaces)}

    def _apply_rules(self, links: dict[str, plan.Link | None]) -> None:
        desired: set[plan.Rule] = set()
        for b in self.state.bindings.values():
            desired |= plan.rules_for(b, self.cfg.rule_priority, links.get(b.iface))
        current = netlink.current_rules(self.ipr, self.cfg.rule_priority, self._our_tables())
        add, remove = plan.diff(current, desired)
        for r in sorted(remove, key=str):
            netlink.del_rule(self.ipr, r)
        for r in sorted(add, key=str):
            netlink.add_rule(self.ipr, r)

    # ---------- reaper ----------

    def reap(self) -> None:
        now = time.time()
        changed = False
        for s in list(self.state.sessions.values()):
            path = cgroupfs.abspath(self.cgroot, s.cgroup)
            populated = cgroupfs.populated(path)
            if populated is not None:
                try:
                    if cgroupfs.cgroup_id(path) != s.cgroup_id:
                        populated = None   # same path, another cgroup: ours is gone
                except FileNotFoundError:
                    populated = None
            if reaper.should_reap(s, populated, _alive(s.pid), now):
                self.remove_session(s)
                changed = True
        if changed:
            self.save()

    def remove_session(self, s: Session) -> None:
        """Undo one session, step by step; each step tolerates 'already gone'."""
        path = cgroupfs.abspath(self.cgroot, s.cgroup)
        progs = self.progs_for(s.pinset)
        if not s.owned and progs is not None:
            _step(f"detach {s.cgroup}", progs.detach, path)
        maps = self.maps_for(s.pinset)
        if maps is not None:
            _step("policy entry", bpfsys.map_delete, maps.policy, pack_key(s.cgroup_id))
            _step("stats entry", bpfsys.map_delete, maps.stats, pack_key(s.cgroup_id))
        if s.owned:
            if _step(f"remove cgroup {s.cgroup}", cgroupfs.remove_tree, path) is False:
                log.warning("cgroup %s not removed (busy)", s.cgroup)
            cgroupfs.remove_if_empty(os.path.dirname(path))
        self.state = self.state.without_session(s.id)
        log.info("session %s ended (%s)", s.id, s.cgroup)
        for iface in self.state.unused_bindings():
            self.remove_binding(iface)

    def remove_binding(self, iface: str) -> None:
        b = self.state.bindings[iface]
        self.state = self.state.without_binding(iface)
        _step(f"rules of {iface}", lambda: self._apply_rules(self._read_links()))
        routes = _step(f"routes of {iface}", netlink.current_routes, self.ipr, b.table)
        for r in sorted(routes or (), key=str):
            _step(f"route {r}", netlink.del_route, self.ipr, r)
        self.live.pop(iface, None)
        log.info("released %s (mark %#x, table %d)", iface, b.mark, b.table)


def _step(what: str, fn, *args):
    """Run one clean-up step; a failure is logged and does not stop the rest."""
    try:
        return fn(*args)
    except Exception as e:
        log.warning("clean-up step '%s' failed: %s", what, e)
        return None


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _listen(path: str) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        s.bind(path)
    finally:
        os.umask(old)
    s.listen(64)
    return s


def _take_lock(store: Store) -> int | None:
    """Hold daemon.lock for life; None if another daemon holds it."""
    store.ensure_dir()
    fd = os.open(store.daemon_lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    with open(store.pid_file, "w") as f:
        f.write(f"{os.getpid()}\n")
    return fd


def setup_logging(store: Store, cfg: Config, foreground: bool) -> None:
    handlers: list[logging.Handler] = [logging.FileHandler(cfg.log_file or store.log_file)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    logging.basicConfig(level=logging.INFO, handlers=handlers,
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")


def serve(cfg: Config, idle_exit: float = 0.0, foreground: bool = False) -> int:
    """Run the daemon of this network namespace until stopped."""
    store = Store(run_dir(cfg))
    store.ensure_dir()
    setup_logging(store, cfg, foreground)
    lock = _take_lock(store)
    if lock is None:
        log.info("a daemon already runs for %s", store.path)
        return 0
    d = Daemon(cfg, store, idle_exit=idle_exit)

    def stop(signum, frame):
        d.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        d.start()
        d.run()
    except NetleakError as e:
        log.error("%s", e)
        return 125
    finally:
        with contextlib.suppress(OSError):
            os.unlink(store.socket_path)
        with contextlib.suppress(OSError):
            os.unlink(store.pid_file)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netleak daemon")
    p.add_argument("--idle-exit", type=float, default=0.0)
    p.add_argument("--foreground", action="store_true")
    a = p.parse_args(argv)
    try:
        cfg = Config.from_env(os.environ)
    except NetleakError as e:
        print(f"netleak daemon: {e}", file=sys.stderr)
        return 125
    return serve(cfg, idle_exit=a.idle_exit, foreground=a.foreground)


if __name__ == "__main__":
    sys.exit(main())
