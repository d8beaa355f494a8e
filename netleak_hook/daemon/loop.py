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
import ipaddress
import json
import logging
import os
import queue
import select
import signal
import socket
import struct
import sys
import time

from ..core import dnsconf, events, plan, proxyspec, lifecycle, validate
from ..rundir import eventlog
from ..rundir import logfile, logfmt
from ..proxymode import relay
from ..core.config import Config
from ..core.errors import NetleakError
from ..kernel import bpfsys, cgroupfs, netlink, programs
from ..kernel.ringbuf import RingReader, ring_size
from ..core.policy import (KEY_SIZE, LOCAL_KEY_SIZE, POLICY_SIZE, Policy, Stats, local_key,
    pack_key, unpack_key)
from ..core.state import Session, State, policy_for
from ..rundir.store import Store, netns_id, run_dir

log = logging.getLogger("netleak.daemon")

TICK = 0.25            # longest sleep of the main loop
DAEMON_CGROUP = "daemon"  # under the cgroup parent: an auto-started daemon's home
RELAY_CGROUP = "relay"    # ... and where the relay's sockets are made (its ingress filter)
RECENT = 256           # ended sessions kept to name the events still in the ring


def note(event: str, msg: str, *args, level: int = logging.INFO, **fields) -> None:
    """A structured log line: EVENT and FIELDS as logfmt pairs, MSG for people."""
    log.log(level, msg, *args, extra={"fields": {"event": event, **fields}})


class CgroupWatch:
    """cgroup.events of every session, kept open in one epoll set: the
    kernel reports a change (populated 1 -> 0) as EPOLLPRI at once."""

    def __init__(self) -> None:
        self.ep = select.epoll()
        self.files: dict[str, object] = {}   # session id -> open cgroup.events
        self.by_fd: dict[int, str] = {}

    def fileno(self) -> int:
        return self.ep.fileno()

    def sync(self, paths: dict[str, str]) -> set[str]:
        """Watch exactly these sessions (id -> cgroup directory). Returns
        the newly watched ones already empty or gone: their change came
        before the watch, and no event will report it."""
        for sid in [k for k in self.files if k not in paths]:
            self._close(sid)
        missed = set()
        for sid, path in paths.items():
            if sid in self.files:
                continue
            try:
                f = open(os.path.join(path, "cgroup.events"), "rb", buffering=0)
                first = f.read()    # arms the notification
            except OSError:
                missed.add(sid)     # gone
                continue
            self.ep.register(f.fileno(), select.EPOLLPRI | select.EPOLLERR)
            self.files[sid] = f
            self.by_fd[f.fileno()] = sid
            if cgroupfs.parse_populated(first) is False:
                missed.add(sid)
        return missed

    def drain(self) -> set[str]:
        """Acknowledge reported changes (a read re-arms the file); returns
        the sessions whose cgroup changed."""
        changed = set()
        for fd, _ in self.ep.poll(0):
            sid = self.by_fd.get(fd)
            if sid is None:
                continue
            changed.add(sid)
            f = self.files[sid]
            try:
                f.seek(0)
                f.read()
            except OSError:     # the cgroup was removed
                self._close(sid)
        return changed

    def _close(self, sid: str) -> None:
        f = self.files.pop(sid)
        fd = f.fileno()
        self.by_fd.pop(fd, None)
        with contextlib.suppress(OSError):
            self.ep.unregister(fd)
        f.close()


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
        self.netns = 0          # this namespace's cookie, read in start()
        self.watch = CgroupWatch()
        self.parent = cgroupfs.abspath(self.cgroot, cfg.cgroup_parent)
        self.stopping = False
        self.listener: socket.socket | None = None
        self.unreported: dict = {}      # the start-up gc, until someone asks
        self.dirty = False              # state changed but not saved yet
        self.ring: RingReader | None = None     # this namespace's blocked-attempt events
        self.event_log = eventlog.EventLog(store.dir_fd(create=True), store.path)
        self.recent: dict[int, Session] = {}    # cgroup id -> ended session
        self.last_index: dict[str, int] = {}    # interface -> ifindex last seen present
        self.relay: relay.Relay | None = None   # proxy mode's, started with its first session
        self.relay_events: queue.SimpleQueue = queue.SimpleQueue()
        self._routes: tuple[State | None, dict[int, relay.Route]] = (None, {})

    # ---------- start-up ----------

    def start(self, own_cgroup: bool = False) -> None:
        """Rebuild the view from the state file and the kernel: finish or
        roll back what a crash interrupted, collect what is left over (also
        after a reboot, when run directory and bpffs start empty)."""
        if own_cgroup:
            self._leave_callers_cgroup()
        # read once out of any controlled cgroup (a socket of one in another
        # namespace would be refused)
        self.netns = netlink.netns_cookie()
        if not self.netns:
            raise NetleakError(
                "this kernel does not tell network namespaces apart (SO_NETNS_COOKIE, "
                "Linux 5.14 or later, is needed): upgrade the kernel")
        programs.ensure_bpffs(self.cfg.bpf_dir)
        self.pins = programs.ensure_pinned(self.cfg.bpf_dir)
        self.state = self.store.load()
        # before any session sends: the addresses its packets may come from
        _step("local addresses", self.sync_locals)
        if any(s.proxy for s in self.state.sessions.values()):
            _step("relay", self._ensure_relay)
        report = self.unreported = self.gc()
        self.open_events()
        self.listener = _listen(self.store)
        note("daemon-ready", "daemon %d ready in %s (pins %s); start-up gc: %s", os.getpid(),
             self.store.path, self.pins.path, json.dumps(report, sort_keys=True),
             run_dir=self.store.path, pins=self.pins.path, sessions=len(self.state.sessions))

    def open_events(self) -> None:
        """Read this namespace's event ring (what a crashed predecessor left
        in it comes first). Without it the daemon still works; sessions'
        events are then counted as lost."""
        maps = self.maps_for(self.pins.path)
        if maps is None:
            return
        try:
            self.ring = RingReader(maps.open_ring(self.netns),
                                   ring_size(programs.RING_PAGES))
        except (OSError, ValueError) as e:
            log.warning("no blocked-attempt events: cannot open the event ring (%s)", e)
            return
        self.on_ring()

    def close_events(self) -> None:
        """On a clean exit: drain the ring; with no session left, unregister
        it too, so none is left behind for a namespace that may go away
        (with sessions, it keeps their events for the next daemon)."""
        if self.ring is None:
            return
        with contextlib.suppress(Exception):
            self.on_ring()
        maps = self.maps_for(self.pins.path)
        if maps is not None and not self.state.sessions:
            maps.close_ring(self.netns)
        self.ring.close()
        with contextlib.suppress(OSError):
            os.close(self.ring.fd)
        self.ring = None

    def on_ring(self) -> None:
        """Drain the ring into the event log, naming each event's session."""
        assert self.ring is not None
        offset = events.boot_offset()
        by_id = {s.cgroup_id: s for s in self.state.sessions.values()}
        out = []
        for raw in self.ring.records():
            if len(raw) < events.EVENT_SIZE:
                continue
            ev = events.decode(raw)
            s = by_id.get(ev["cgroup_id"]) or self.recent.get(ev["cgroup_id"])
            info = ({"id": s.id, "container": s.container, "cgroup": "/" + s.cgroup,
                     "iface": s.iface} if s else None)
            out.append(events.enrich(ev, offset, info))
        self._log_events(out)

    def _log_events(self, out: list[dict]) -> None:
        """Append events (the kernel's and the relay's) to the event log."""
        if out:
            try:
                self.event_log.append(out)
            except OSError as e:
                log.warning("cannot write %s: %s", self.event_log.path, e)

    def _leave_callers_cgroup(self) -> None:
        """An auto-started daemon would otherwise live in the cgroup of
        whoever ran netleak first: a unit's stop would kill it, and that
        cgroup could never be attached."""
        path = os.path.join(self.parent, DAEMON_CGROUP)
        try:
            if not os.path.isdir(path):
                cgroupfs.make(path)
            cgroupfs.join(path)
        except OSError as e:
            log.warning("staying in the caller's cgroup (cannot join %s: %s)", path,
                        e.strerror)

    def leave_own_cgroup(self) -> None:
        """On the way out: back to the root cgroup, so the daemon's own (and
        the parent, once empty) can go."""
        path = os.path.join(self.parent, DAEMON_CGROUP)
        with contextlib.suppress(OSError, NetleakError):
            if cgroupfs.of_pid(os.getpid()) == os.path.relpath(path, self.cgroot):
                cgroupfs.join(self.cgroot)
        cgroupfs.remove_if_empty(path)
        cgroupfs.remove_if_empty(self.parent)

    def save(self) -> None:
        self.store.save(self.state)
        self.dirty = False

    def maps_for(self, pinset: str) -> programs.Maps | None:
        if pinset not in self.maps:
            pins = programs.Pinset(pinset)
            if not pins.usable():
                return None
            self.maps[pinset] = programs.Maps(pins)
        return self.maps[pinset]

    def progs_for(self, pinset: str) -> programs.Programs | None:
        if pinset not in self.progs:
            pins = programs.Pinset(pinset)
            if not pins.usable():
                return None
            self.progs[pinset] = programs.Programs(pins)
        return self.progs[pinset]

    # ---------- main loop ----------

    def run(self) -> None:
        assert self.listener is not None
        last_reconcile = time.monotonic()
        idle_since = time.monotonic()
        while not self.stopping:
            try:
                missed = self.watch.sync({sid: cgroupfs.abspath(self.cgroot, s.cgroup)
                                          for sid, s in self.state.sessions.items()})
                if missed:
                    self.reap(missed)
            except Exception:
                log.exception("watching cgroup.events")   # the full pass still reaps
            try:
                waits = [self.listener, self.events, self.watch]
                if self.ring is not None:
                    waits.append(self.ring)
                # poll, not select: with a cgroup.events open per session,
                # a descriptor made later may be past select's 1,024
                by_fd = {w.fileno(): w for w in waits}
                poller = select.poll()
                for fd in by_fd:
                    poller.register(fd, select.POLLIN)
                r = [by_fd[fd] for fd, _ in poller.poll(TICK * 1000)]
            except InterruptedError:
                continue
            if self.ring is not None and self.ring in r:
                try:
                    self.on_ring()
                except Exception:   # events are best effort; the rest goes on
                    log.exception("reading the event ring")
            self._relay_events()
            try:
                if self.watch in r:
                    self.reap(self.watch.drain())
                if self.events in r:
                    self.on_netlink()
                if self.listener in r:
                    self.accept()
                now = time.monotonic()
                if now - last_reconcile >= self.cfg.reconcile_seconds:
                    # all sessions: set-ups whose requester died, cgroups
                    # whose events file could not be watched
                    self.reap()
                    self.reconcile_all()
                    self.sweep_orphan_cgroups()
                    last_reconcile = now
            except Exception:  # keep monitoring whatever one pass hit
                log.exception("daemon loop")
                now = time.monotonic()
            if self.state.sessions:
                idle_since = now
            elif self.idle_exit and now - idle_since > self.idle_exit:
                note("daemon-idle-exit", "no sessions for %.0fs: exiting", self.idle_exit)
                break

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
        try:
            peer_pid = struct.unpack("3i", conn.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
        except OSError:
            peer_pid = 0
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
                if isinstance(msg, dict):
                    msg["peer_pid"] = peer_pid
                reply = self.dispatch(msg)
            except NetleakError as e:
                reply = {"ok": False, "error": e.message}
            except OSError as e:
                reply = {"ok": False, "error": _os_refusal(e, len(self.state.sessions))}
            except ValueError as e:
                reply = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:  # never let one request kill the daemon
                log.exception("request failed")
                reply = {"ok": False, "error": f"netleak daemon error: {e}; see "
                                               f"{self.store.log_file}"}
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")
        if self.dirty:
            self.save()

    def dispatch(self, msg: dict) -> dict:
        op = msg.get("op")
        if op == "ping":
            return {"ok": True, "pid": os.getpid()}
        if op == "open":
            return self.op_open(msg)
        if op == "abort":
            s = self.state.sessions.get(msg.get("id", ""))
            if s:
                self.remove_session(s, "aborted")
                self.save()
            return {"ok": True}
        if op == "detach":
            return self.op_detach(msg)
        if op == "reap":            # a hint (OCI poststop): the reaper runs anyway
            return {"ok": True, "reaped": self.reap()}
        if op == "gc":
            # what this daemon's start-up pass collected counts too: a gc
            # request is often what started it
            report = lifecycle.merge_reports(self.unreported, self.gc())
            self.unreported = {}
            return {"ok": True, "report": report}
        raise NetleakError(f"unknown request {op!r}")

    def op_open(self, msg: dict) -> dict:
        """Put a cgroup under control: bind the interface (if new), write the
        policy, attach the programs; for netleak-exec, move the requester in.

        The session is recorded before any kernel change (write-ahead), so a
        crash at any point leaves a record the next daemon finishes (the
        cgroup holds the workload) or rolls back (it does not).
        """
        block = bool(msg.get("block"))
        iface = "" if block else str(msg["iface"])
        dns = validate.dns_servers(list(msg.get("dns") or ()))
        allow = validate.allow_prefixes(list(msg.get("allow") or ()))
        validate.guards(dns, allow, block)
        spec = proxyspec.parse(str(msg["proxy"])) if msg.get("proxy") else None
        if spec is not None and block:
            raise NetleakError("--proxy and --block exclude each other: choose one")
        if spec is not None and dns:
            raise NetleakError("resolvers (--dns, io.netleak.dns) have no use in proxy "
                               "mode: its DNS is answered by netleak or refused")
        if not (iface or block or spec):
            raise NetleakError("no interface given (nor --block, nor --proxy)")
        owned = bool(msg.get("owned", True))
        # the requester as the kernel names it (SO_PEERCRED), not as it says:
        # it is the process netleak-exec moves into the cgroup
        s = Session(id=str(msg["id"]), iface=iface, cgroup=str(msg["cgroup"]).strip("/"),
                    cgroup_id=int(msg["cgroup_id"]), pinset=self.pins.path, owned=owned,
                    pid=int(msg.get("peer_pid") or 0), created=time.time(),
                    container=str(msg.get("container") or ""), block=block, dns=dns,
                    dns_from="user" if dns else "", allow=allow)
        if spec is not None:
            s = dataclasses.replace(s, proxy=spec.url(secret=True),
                                    proxy_addr=self._proxy_address(spec, iface,
                                                                   msg.get("proxy_addr")))
            self._ensure_relay()
        path = cgroupfs.abspath(self.cgroot, s.cgroup)
        if not owned:
            self._check_attachable(s)
        try:
            if cgroupfs.cgroup_id(path) != s.cgroup_id:
                raise FileNotFoundError
        except FileNotFoundError:
            raise NetleakError(f"cgroup {s.cgroup} changed or vanished while being set "
                               f"up: retry") from None
        binding = None if not iface else self._binding_for(iface, msg.get("via4"),
                                                            msg.get("via6"))
        if binding is not None:
            s = self._own_guards(s, binding)
            # routes and rules of a known, unchanged binding are in place and
            # followed by events: only this session's entry (and rules of
            # its own) are new
            changed = binding != self.state.bindings.get(iface) or iface not in self.live
            self.state = self.state.with_binding(binding)
        self.state = self.state.with_session(s)
        self.save()
        try:
            if binding is None:
                self._write_policies("", self._block_policy())
            elif changed:
                self.reconcile_all()
            else:
                if s.mark:
                    self._apply_rules(self._read_links())
                # the other sessions' entries are kept by events: only this
                # one is new (a start costs the same with 1 or 1,000 running)
                self._write_policy(s, self.live[iface])
            maps = self.maps_for(s.pinset)
            progs = self.progs_for(s.pinset)
            if maps is None or progs is None:
                raise NetleakError(f"pinned programs missing in {s.pinset}: retry")
            progs.attach(path)
            if msg.get("join") and s.pid:
                # move the requester in only now that the cgroup is protected
                cgroupfs.join(path, s.pid)
            if msg.get("join") or cgroupfs.populated(path):
                s = dataclasses.replace(s, committed=True)
                self.state = self.state.with_session(s)
        except BaseException:
            self.remove_session(s, "setup-failed")
            self.save()
            raise
        # the commit is saved after the reply: a crash before that leaves an
        # uncommitted record whose populated cgroup the next daemon commits
        self.dirty = True
        pol = policy_for(s, self.live[iface] if binding else self._block_policy(),
                         self._relay_ports())
        mark, table = pol.mark, binding.table if binding else None
        note("session-open", "session %s: %s %s on %s (mark %#x, table %s)", s.id,
             "made" if owned else "attached", s.cgroup, s.what, mark, table,
             session=s.id, iface=iface or None, cgroup="/" + s.cgroup,
             container=s.container or None,
             kind="exec" if owned else ("hook" if s.container else "attach"),
             killed=pol.killed, block=block or None, dns=",".join(s.dns) or None,
             dns_from=s.dns_from or None, allow=",".join(allow) or None,
             proxy=spec.url() if spec else None)
        return {"ok": True, "id": s.id, "mark": mark, "table": table,
                "ifindex": pol.ifindex, "killed": pol.killed, "block": block,
                "dns": list(s.dns), "dns_from": s.dns_from, "allow": list(allow),
                "proxy": spec.url() if spec else None, "proxy_addr": s.proxy_addr or None}

    def _own_guards(self, s: Session, binding: plan.Binding) -> Session:
        """S with the interface's resolvers when it was given none, and a
        mark of its own when it has --allow prefixes (they need rules of
        their own)."""
        if not s.dns:
            # the ifindex the events keep current; read only for a new binding
            live = self.live.get(binding.iface)
            index = live.ifindex if live is not None and live.ifindex else None
            if index is None:
                link = netlink.read_link(self.ipr, binding.iface)
                index = link.index if link else None
            found = dnsconf.interface_servers(index) if index else ()
            if found:
                s = dataclasses.replace(s, dns=found, dns_from="interface")
        if s.allow:
            if self.cfg.rule_priority < 2:
                raise NetleakError("--allow needs the rule priority before "
                                   "NETLEAK_RULE_PRIORITY, which is 1: raise it")
            used = {o.mark for o in self.state.sessions.values() if o.mark}
            mark = plan.session_mark(used, self.cfg.mark_base)
            if mark is None:
                raise NetleakError("every session mark is in use: end sessions with "
                                   "--allow first")
            s = dataclasses.replace(s, mark=mark)
        return s

    # ---------- proxy mode ----------

    def _proxy_address(self, spec: proxyspec.ProxySpec, iface: str, given=None) -> str:
        """The proxy's address: as the requester looked it up, or looked up
        now (by this machine's resolver, outside the session)."""
        try:
            addr = str(ipaddress.ip_address(str(given)))
        except ValueError:
            addr = proxyspec.resolve(spec)
        if iface and proxyspec.is_local(addr):
            raise NetleakError(
                f"the proxy {spec.url()} is on this machine, so {iface} carries none of "
                f"its traffic: drop {iface}, or run the proxy itself under "
                f"netleak-exec {iface}")
        return addr

    def _ensure_relay(self) -> None:
        if self.relay is not None:
            return
        maps = self.maps_for(self.pins.path)
        if maps is None or maps.redirect < 0 or not os.path.exists(
                self.pins.pin("prog_relay_in")):
            raise NetleakError(f"the programs pinned in {self.pins.path} have no proxy "
                               f"mode: run 'netleak gc' and retry")
        path = os.path.join(self.parent, RELAY_CGROUP)
        if not os.path.isdir(path):
            cgroupfs.make(path)
        self._attach_relay_filter(path)
        r = relay.Relay(maps.redirect, self._route, self.relay_events,
                        port=self.cfg.relay_port, netns=self.netns,
                        make=lambda fn: cgroupfs.sockets_made_in(path, fn))
        try:
            r.start()
        except BaseException:
            _step("relay cgroup", self._remove_relay_cgroup)
            raise
        self.relay = r

    def _attach_relay_filter(self, path: str) -> None:
        """The relay's ingress program on the cgroup its sockets are made in:
        only sockets the programs sent there get through to them."""
        fd = bpfsys.obj_get(self.pins.pin("prog_relay_in"))
        cfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if bpfsys.prog_id(fd) not in bpfsys.prog_query(cfd, bpfsys.BPF_CGROUP_INET_INGRESS):
                bpfsys.prog_attach(fd, cfd, bpfsys.BPF_CGROUP_INET_INGRESS)
        finally:
            os.close(cfd)
            os.close(fd)

    def _remove_relay_cgroup(self) -> None:
        """Once no socket is made there any more (the cgroup holds no
        process; the sockets still open keep it, and its program, alive)."""
        cgroupfs.remove_if_empty(os.path.join(self.parent, RELAY_CGROUP))

    def _relay_ports(self) -> tuple[int, int, int]:
        return self.relay.ports if self.relay is not None else (0, 0, 0)

    def _route(self, cgroup_id: int) -> relay.Route | None:
        """How the relay carries a session's connections (called from its
        threads: reads one snapshot of the state)."""
        state = self.state
        cached, routes = self._routes
        if cached is not state:
            routes = {}
            for s in state.sessions.values():
                if not s.proxy:
                    continue
                spec = proxyspec.parse(s.proxy)
                b = state.bindings.get(s.iface)
                routes[s.cgroup_id] = relay.Route(
                    scheme=spec.scheme, addr=s.proxy_addr, port=spec.port, user=spec.user,
                    password=spec.password, iface=s.iface, mark=(s.mark or b.mark) if b else 0,
                    info={"id": s.id, "container": s.container, "cgroup": "/" + s.cgroup,
                          "cgroup_id": s.cgroup_id, "iface": s.iface or None})
            self._routes = (state, routes)
        return routes.get(cgroup_id)

    def _relay_events(self) -> None:
        out = []
        while True:
            try:
                out.append(self.relay_events.get_nowait())
            except queue.Empty:
                break
        self._log_events(out)

    def close_relay(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
            self._relay_events()
        _step("relay cgroup", self._remove_relay_cgroup)

    def _refresh_dns(self, iface: str, link: plan.Link) -> None:
        """Sessions given no --dns follow the interface's resolvers (a VPN
        that reconnects may announce others, or announce them late)."""
        found = dnsconf.interface_servers(link.index)
        for s in self.state.sessions_on(iface):
            if s.dns_from != "user" and s.dns != found:
                self.state = self.state.with_session(dataclasses.replace(
                    s, dns=found, dns_from="interface" if found else ""))
                self.dirty = True

    def _block_policy(self) -> Policy:
        """No-network mode: no interface, no kill switch to follow."""
        return Policy(ifindex=0, mark=0, killed=False, netns=self.netns,
                      event_rate=self.cfg.event_rate, block=True)

    def _binding_for(self, iface: str, via4: str | None, via6: str | None) -> plan.Binding:
        binding = self.state.bindings.get(iface)
        if binding is None:
            link = netlink.read_link(self.ipr, iface)
            if link is None:
                raise NetleakError(
                    f"no interface named {iface} in this network namespace: check "
                    f"'ip -br link'")
            return self._new_binding(iface, link, via4, via6)
        if via4 or via6:
            return plan.with_user_gateways(binding, via4, via6)
        return binding

    def _check_attachable(self, s: Session) -> None:
        """Refusals for a cgroup the user names (netleak-exec makes its own)."""
        for other in self.state.sessions.values():
            if other.cgroup_id == s.cgroup_id:
                raise NetleakError(
                    f"cgroup /{s.cgroup} is already under netleak control (session "
                    f"{other.id} on {other.what}): detach it first")
        key = pack_key(s.cgroup_id)
        for pinset in self._pinsets():
            maps = self.maps_for(pinset)
            if maps is not None and bpfsys.map_lookup(maps.policy, key, POLICY_SIZE):
                raise NetleakError(
                    f"cgroup /{s.cgroup} is under the control of another netleak daemon "
                    f"(of another network namespace): detach it there first")
        mine = cgroupfs.of_pid(os.getpid())
        problem = plan.attach_refusal(s.cgroup, mine) or plan.delegation_refusal(
            s.cgroup, cgroupfs.delegated(self.cgroot, plan.ancestors(s.cgroup)))
        if problem:
            raise NetleakError(problem)
        here = netns_id()
        for pid in cgroupfs.tree_procs(cgroupfs.abspath(self.cgroot, s.cgroup)):
            try:
                ns = os.stat(f"/proc/{pid}/ns/net").st_ino
            except OSError:
                continue        # gone meanwhile
            if ns != here:
                raise NetleakError(
                    f"process {pid} in /{s.cgroup} lives in another network "
                    f"namespace: netleak controls processes of its own namespace "
                    f"only; run netleak there")

    def op_detach(self, msg: dict) -> dict:
        """Release a cgroup attached with `netleak attach`."""
        sid, rel = msg.get("id"), str(msg.get("cgroup") or "").strip("/")
        found = [s for s in self.state.sessions.values()
                 if s.id == sid or (rel and s.cgroup == rel)]
        if not found:
            what = f"session {sid}" if sid else f"cgroup /{rel}"
            raise NetleakError(f"{what} is not under netleak control: see 'netleak status'")
        s = found[0]
        if s.owned:
            raise NetleakError(
                f"session {s.id} was started by netleak-exec and ends with its "
                f"processes: stop them instead (PIDs in "
                f"{cgroupfs.abspath(self.cgroot, s.cgroup)}/cgroup.procs)")
        self.remove_session(s, "detached")
        self.save()
        return {"ok": True, "id": s.id, "cgroup": s.cgroup, "iface": s.iface}

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
        """The entries of IFACE's sessions ("": no-network mode's), from POL
        and what each session has of its own."""
        for s in self.state.sessions_on(iface):
            self._write_policy(s, pol)

    def _write_policy(self, s: Session, pol: Policy) -> None:
        """S's entry, from its interface's POL and what S has of its own."""
        maps = self.maps_for(s.pinset)
        if maps is None:
            return
        key = pack_key(s.cgroup_id)
        want = policy_for(s, pol, self._relay_ports())
        raw = bpfsys.map_lookup(maps.policy, key, POLICY_SIZE)
        if raw is None or Policy.unpack(raw) != want:
            bpfsys.map_update(maps.policy, key, want.pack())

    def _read_links(self) -> dict[str, plan.Link | None]:
        return {iface: netlink.read_link(self.ipr, iface) for iface in self.state.bindings}

    def reconcile_all(self) -> None:
        """Make rules, routes and map entries of every bound interface match
        what the interface is now.

        Order matters: the kill switch goes on before anything else when an
        interface is unusable, and comes off only after its routes and rules
        are back and the map holds its (possibly new) ifindex.
        """
        _step("local addresses", self.sync_locals)
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
                _step(f"resolvers of {iface}", self._refresh_dns, iface, link)
                self._release_kill(iface, link)
        _step("no-network entries", self._write_policies, "", self._block_policy())

    def sync_locals(self, keep: bool = True) -> None:
        """The map `locals` holds this namespace's addresses, as they are
        now (a session's packets must come from one of them); without KEEP,
        none of them (a clean exit with no session left)."""
        want = {local_key(self.netns, addr): idx.to_bytes(4, "little")
                for addr, idx in netlink.local_addresses(self.ipr).items()} if keep else {}
        mine = self.netns.to_bytes(8, "little")
        for pinset in {self.pins.path} | {s.pinset for s in self.state.sessions.values()}:
            maps = self.maps_for(pinset)
            if maps is None or maps.locals < 0:
                continue
            have = {k for k in bpfsys.map_keys(maps.locals, LOCAL_KEY_SIZE)
                    if k[:8] == mine}
            for k in have - set(want):
                bpfsys.map_delete(maps.locals, k)
            for k, v in want.items():
                if k not in have:
                    bpfsys.map_update(maps.locals, k, v)

    def _kill_if_unusable(self, iface: str, link: plan.Link | None) -> None:
        if link is not None and link.up:
            return
        before = self.live.get(iface)
        if before is None or not before.killed:
            cause = "gone" if link is None else "down"
            note("kill-switch-on", "%s is %s: kill switch on", iface, cause, iface=iface,
                 cause=cause, ifindex=link.index if link else None,
                 sessions=len(self.state.sessions_on(iface)))
        self.live[iface] = Policy(ifindex=link.index if link else 0,
                                  mark=self.state.bindings[iface].mark, killed=True,
                                  netns=self.netns, event_rate=self.cfg.event_rate)
        self._write_policies(iface, self.live[iface])

    def _release_kill(self, iface: str, link: plan.Link) -> None:
        b = self.state.bindings[iface]
        pol = Policy(ifindex=link.index, mark=b.mark, killed=False, netns=self.netns,
                     event_rate=self.cfg.event_rate)
        if self.live.get(iface) != pol:
            old = self.last_index.get(iface)
            note("kill-switch-off", "%s is up (ifindex %d): routes in table %d, kill switch off",
                 iface, link.index, b.table, iface=iface, ifindex=link.index, table=b.table,
                 recreated=old is not None and old != link.index, old_ifindex=old,
                 sessions=len(self.state.sessions_on(iface)))
        self.last_index[iface] = link.index
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
        added = 0
        for r in sorted(add, key=str):
            try:
                netlink.add_route(self.ipr, r)
                added += 1
            except Exception as e:  # e.g. the link vanished meanwhile
                log.warning("route %s: %s", r, e)
        if added or remove:
            note("routes", "table %d of %s: %d routes added, %d removed", b.table, b.iface,
                 added, len(remove), iface=b.iface, table=b.table, added=added,
                 removed=len(remove), link="up" if link is not None and link.up else
                 ("down" if link is not None else "gone"))

    def _our_tables(self) -> set[int]:
        return {self.cfg.table_base + i for i in range(self.cfg.max_interfaces)}

    def _apply_rules(self, links: dict[str, plan.Link | None]) -> None:
        prio = self.cfg.rule_priority
        desired: set[plan.Rule] = set()
        for b in self.state.bindings.values():
            desired |= plan.rules_for(b, prio, links.get(b.iface))
        for s in self.state.sessions.values():
            b = self.state.bindings.get(s.iface)
            if s.mark and b is not None:
                desired |= plan.allow_rules(s.mark, b.table, s.allow, prio)
        tables = self._our_tables()
        current = netlink.current_rules(
            self.ipr, lambda r: plan.is_ours(r, prio, tables, self.cfg.mark_base))
        add, remove = plan.diff(current, desired)
        for r in sorted(remove, key=str):
            netlink.del_rule(self.ipr, r)
        for r in sorted(add, key=str):
            netlink.add_rule(self.ipr, r)

    # ---------- reaper ----------

    def reap(self, only: set[str] | None = None) -> list[str]:
        """End sessions (all, or ONLY these) whose cgroup is empty or gone,
        and commit set-ups whose cgroup holds their workload; returns the
        ids of the ended ones."""
        now = time.time()
        ended, changed = [], False
        for s in list(self.state.sessions.values()):
            if only is not None and s.id not in only:
                continue
            path = cgroupfs.abspath(self.cgroot, s.cgroup)
            populated = cgroupfs.populated(path)
            if populated is not None:
                try:
                    if cgroupfs.cgroup_id(path) != s.cgroup_id:
                        populated = None   # same path, another cgroup: ours is gone
                except FileNotFoundError:
                    populated = None
            if populated and not s.committed:
                # the workload is in: a set-up a crash interrupted is complete
                self.state = self.state.with_session(dataclasses.replace(s, committed=True))
                changed = True
            elif lifecycle.should_reap(s, populated, _alive(s.pid), now):
                self.remove_session(s, lifecycle.reap_cause(s, populated))
                ended.append(s.id)
        if ended or changed:
            self.save()
        return ended

    def remove_session(self, s: Session, cause: str) -> None:
        """Undo one session, step by step; each step tolerates 'already gone'."""
        path = cgroupfs.abspath(self.cgroot, s.cgroup)
        progs = self.progs_for(s.pinset)
        if not s.owned and progs is not None:
            _step(f"detach {s.cgroup}", progs.detach, path)
        maps = self.maps_for(s.pinset)
        stats = Stats()
        if maps is not None:
            stats = _step("read counters", maps.read_stats, s.cgroup_id) or stats
            _step("policy entry", bpfsys.map_delete, maps.policy, pack_key(s.cgroup_id))
            _step("stats entry", bpfsys.map_delete, maps.stats, pack_key(s.cgroup_id))
            if maps.redirect_n >= 0:    # its sockets' entries went with them
                _step("redirect count", bpfsys.map_delete, maps.redirect_n,
                      pack_key(s.cgroup_id))
        if self.relay is not None:
            self.relay.forget(s.cgroup_id)
        if s.owned:
            if _step(f"remove cgroup {s.cgroup}", cgroupfs.remove_tree, path) is False:
                log.warning("cgroup %s not removed (busy)", s.cgroup)
            cgroupfs.remove_if_empty(os.path.dirname(path))
        self.state = self.state.without_session(s.id)
        self.recent[s.cgroup_id] = s
        while len(self.recent) > RECENT:
            self.recent.pop(next(iter(self.recent)))
        note("session-end", "session %s ended (%s): %s", s.id, s.cgroup, cause, session=s.id,
             iface=s.iface, cgroup="/" + s.cgroup, container=s.container or None, cause=cause,
             age=round(max(0.0, time.time() - s.created), 3), passed=stats.passed_packets,
             dropped=stats.dropped, suppressed=stats.events_suppressed)
        if s.proxy and not any(o.proxy for o in self.state.sessions.values()):
            _step("relay", self.close_relay)    # the next proxy session starts it again
        unused = self.state.unused_bindings()
        for iface in unused:
            self.remove_binding(iface)
        if s.mark and not unused:
            _step("rules of its own", lambda: self._apply_rules(self._read_links()))

    def remove_binding(self, iface: str) -> None:
        b = self.state.bindings[iface]
        self.state = self.state.without_binding(iface)
        _step(f"rules of {iface}", lambda: self._apply_rules(self._read_links()))
        routes = _step(f"routes of {iface}", netlink.current_routes, self.ipr, b.table)
        for r in sorted(routes or (), key=str):
            _step(f"route {r}", netlink.del_route, self.ipr, r)
        self.live.pop(iface, None)
        self.last_index.pop(iface, None)
        note("release", "released %s (mark %#x, table %d)", iface, b.mark, b.table,
             iface=iface, mark=b.mark, table=b.table)


    # ---------- garbage collection ----------

    def sweep_orphan_cgroups(self) -> list[str]:
        """Remove exec cgroups no session claims and nobody will: their
        netleak-exec died before handing them over (and the relay's, when
        no relay runs: a crash left it)."""
        if self.relay is None:
            _step("relay cgroup", self._remove_relay_cgroup)
        claimed = {os.path.basename(s.cgroup) for s in self.state.sessions.values()
                   if os.path.dirname(s.cgroup) == self.cfg.cgroup_parent.strip("/")}
        removed = []
        try:
            names = os.listdir(self.parent)
        except OSError:
            return removed
        now = time.time()
        for name in names:
            path = os.path.join(self.parent, name)
            creator = lifecycle.exec_cgroup_creator(name)
            if creator is None or not os.path.isdir(path):
                continue
            try:
                st = os.stat(path)      # its inode is its cgroup id
            except FileNotFoundError:
                continue
            if lifecycle.orphan_cgroup_removable(name, name in claimed, cgroupfs.populated(path),
                                              _alive(creator), now - st.st_mtime):
                key = pack_key(st.st_ino)
                if _step(f"remove orphan cgroup {name}", cgroupfs.remove_tree, path):
                    removed.append(name)
                    # a daemon that crashed mid-set-up may have written its entry
                    for pinset in self._pinsets():
                        maps = self.maps_for(pinset)
                        if maps is not None:
                            bpfsys.map_delete(maps.policy, key)
                            bpfsys.map_delete(maps.stats, key)
        if removed:
            note("orphans-removed", "removed orphan cgroups: %s", " ".join(sorted(removed)),
                 cgroups=" ".join(sorted(removed)))
            cgroupfs.remove_if_empty(self.parent)
        return removed

    def gc(self) -> dict:
        """One pass over everything a crash or a reboot can leave: sessions
        whose cgroup is empty or gone, half-done set-ups, orphan cgroups, map
        entries of cgroups that no longer exist (or adopted, when the state
        file lost them but their cgroup still runs), rules and routes of
        interfaces no session uses. Each phase runs even if another fails."""
        report: dict = {"reaped": _step("reap", self.reap) or []}
        _step("attach programs", self._ensure_attached)
        report["adopted"], report["entries_removed"] = \
            _step("map entries", self._gc_entries) or ([], 0)
        if report["adopted"]:
            self.save()
        _step("reconcile", self.reconcile_all)  # rules: only bound interfaces' stay
        report["routes_removed"] = _step("routes", self._gc_routes) or 0
        report["cgroups_removed"] = _step("orphan cgroups", self.sweep_orphan_cgroups) or []
        report["sessions"] = len(self.state.sessions)
        note("gc", "gc: %s", json.dumps(report, sort_keys=True),
             reaped=len(report["reaped"]), adopted=len(report["adopted"] or []),
             entries_removed=report["entries_removed"], routes_removed=report["routes_removed"],
             cgroups_removed=len(report["cgroups_removed"]), sessions=report["sessions"])
        return report

    def _ensure_attached(self) -> None:
        """A set-up a crash interrupted may lack its programs: attach them
        (attaching what is attached already is a no-op)."""
        for s in self.state.sessions.values():
            progs = self.progs_for(s.pinset)
            if progs is not None:
                _step(f"attach to {s.cgroup}", progs.attach,
                      cgroupfs.abspath(self.cgroot, s.cgroup))

    def _gc_entries(self) -> tuple[list[str], int]:
        claimed = {s.cgroup_id for s in self.state.sessions.values()}
        whole_tree = cgroupfs.sees_whole_tree()

        def unclaimed(map_fd: int):
            """(key, cgroup id, its path or None when gone) of entries no
            session claims. Keys are read before the tree is walked, so a
            cgroup made meanwhile is found, never taken for gone."""
            keys = [k for k in bpfsys.map_keys(map_fd, KEY_SIZE)
                    if unpack_key(k) not in claimed]
            ids = cgroupfs.index_ids(self.cgroot) if keys else {}
            for key in keys:
                cid = unpack_key(key)
                yield key, cid, ids.get(cid)

        adopted, removed = [], 0
        for pinset in self._pinsets():
            maps = self.maps_for(pinset)
            if maps is None:
                continue
            for key, cid, rel in unclaimed(maps.policy):
                raw = bpfsys.map_lookup(maps.policy, key, POLICY_SIZE)
                if raw is None:
                    continue
                pol = Policy.unpack(raw)
                if rel is None:         # the cgroup is gone: so is the need
                    # (from inside a cgroup namespace part of the tree is
                    # hidden: only this namespace's own entries are judged)
                    if whole_tree or pol.netns == self.netns:
                        _step("stale policy entry", bpfsys.map_delete, maps.policy, key)
                        removed += 1
                    continue
                if pinset != self.pins.path:
                    continue
                sid = self._adopt(cid, rel, pol)
                if sid:
                    adopted.append(sid)
                    claimed.add(cid)
            for key, _, rel in unclaimed(maps.stats):
                if rel is None and whole_tree:
                    _step("stale stats entry", bpfsys.map_delete, maps.stats, key)
            if maps.redirect_n >= 0:
                for key, _, rel in unclaimed(maps.redirect_n):
                    if rel is None and whole_tree:
                        _step("stale redirect count", bpfsys.map_delete, maps.redirect_n, key)
            if maps.redirect >= 0 and whole_tree:
                removed += _step("stale redirects", self._gc_redirects, maps) or 0
        return adopted, removed

    def _gc_redirects(self, maps: programs.Maps) -> int:
        """Entries of sockets that outlived their session's cgroup (the
        release program removes the others as their sockets close). Only
        those: the map is every namespace's, and another daemon's sessions
        are not this one's to judge."""
        keys = bpfsys.map_keys(maps.redirect, 8)
        if not keys:
            return 0
        alive = cgroupfs.index_ids(self.cgroot)
        stale = 0
        for key in keys:
            raw = bpfsys.map_lookup(maps.redirect, key, relay.REDIRECT_SIZE)
            if raw is not None and relay.unpack_redirect(raw).cgroup not in alive:
                bpfsys.map_delete(maps.redirect, key)
                stale += 1
        return stale

    def _adopt(self, cid: int, rel: str, pol: Policy) -> str | None:
        """Take back a controlled cgroup the state file does not know (it was
        lost while the cgroup ran): its entry names the interface by index.
        Entries of other network namespaces belong to their own daemon."""
        if not pol.netns or pol.netns != self.netns or not (pol.ifindex or pol.block or
                                                              pol.proxy):
            return None
        iface, binding = "", None
        # a proxy-mode entry does not hold its proxy: no network, fail closed
        block = pol.block or pol.proxy
        if not block:
            iface = netlink.link_names(self.ipr).get(pol.ifindex) or ""
            if not iface:
                return None     # the entry keeps the cgroup blocked: fail closed
            try:
                binding = self._binding_for(iface, None, None)
            except NetleakError as e:
                log.warning("cannot adopt /%s: %s", rel, e)
                return None
        parent = self.cfg.cgroup_parent.strip("/")
        owned = os.path.dirname(rel) == parent and \
            lifecycle.exec_cgroup_creator(os.path.basename(rel)) is not None
        from ..core.lifecycle import new_session_id
        # what the session had of its own is in its entry
        s = Session(id=new_session_id(), iface=iface, cgroup=rel, cgroup_id=cid,
                    pinset=self.pins.path, owned=owned, created=time.time(),
                    committed=bool(cgroupfs.populated(cgroupfs.abspath(self.cgroot, rel))),
                    block=block, dns=pol.dns, dns_from="user" if pol.dns else "",
                    allow=pol.allow,
                    mark=pol.mark if binding and pol.allow and
                    plan.session_mark(set(), self.cfg.mark_base) <= pol.mark <=
                    self.cfg.mark_base + 0xFFFF else 0)
        if binding is not None:
            self.state = self.state.with_binding(binding)
        self.state = self.state.with_session(s)
        log.info("adopted /%s on %s as session %s", rel, iface, s.id)
        return s.id

    def _gc_routes(self) -> int:
        bound = {b.table for b in self.state.bindings.values()}
        stale = [r for r in netlink.routes_in_tables(self.ipr, self._our_tables())
                 if r.table not in bound]
        for r in sorted(stale, key=str):
            _step(f"route {r}", netlink.del_route, self.ipr, r)
        return len(stale)

    def _pinsets(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.cfg.bpf_dir))
        except OSError:
            return []
        found = []
        for n in names:
            pins = programs.Pinset(os.path.join(self.cfg.bpf_dir, n))
            try:
                if pins.check() and pins.usable():
                    found.append(pins.path)
            except NetleakError as e:
                log.warning("%s", e)     # never taken: another user's folder
        return found


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


def _listen(store: Store) -> socket.socket:
    """The daemon's socket, in the checked run directory, for root only."""
    store.remove(Store.SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        s.bind(store.socket_path)
    finally:
        os.umask(old)
    s.listen(64)
    return s


def _os_refusal(e: OSError, sessions: int) -> str:
    """What a request that failed on a system call is told."""
    import errno
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return (f"the netleak daemon ran out of open files ({sessions} sessions, one "
                f"each): raise its limit (LimitNOFILE= for the service, 'ulimit -n' "
                f"where it is started on demand) and restart it")
    return f"bad request: {e}"


def _raise_open_files() -> None:
    """Each session keeps its cgroup.events open: lift the soft limit on
    open files (often 1,024) to the hard one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def setup_logging(store: Store, cfg: Config, foreground: bool) -> None:
    """daemon.log in the run directory (or NETLEAK_LOG_FILE), capped and
    never through a link; repeated warnings held back."""
    if cfg.log_file:
        where = os.path.dirname(os.path.abspath(cfg.log_file))
        dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        target = logfile.CappedFile(dir_fd, os.path.basename(cfg.log_file),
                                    logfile.DAEMON_LOG_MAX, where)
    else:
        target = logfile.CappedFile(store.dir_fd(create=True), Store.LOG,
                                    logfile.DAEMON_LOG_MAX, store.path)
    target.write(b"")       # a link in its place is refused now, not at the first line
    handlers: list[logging.Handler] = [logfile.CappedHandler(target)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = logfmt.Formatter()
    repeats = logfile.RepeatFilter()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(repeats)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def serve(cfg: Config, idle_exit: float = 0.0, foreground: bool = False,
          own_cgroup: bool = False, report: int = -1) -> int:
    """Run the daemon of this network namespace until stopped.

    own_cgroup: move into a cgroup of its own under the cgroup parent (for a
    daemon netleak starts on demand; one run by systemd stays in its unit).
    REPORT: a descriptor to say, in one line, whether it started ("ready",
    "busy" when another daemon runs, or why not), then closed.
    """
    def tell(line: str) -> None:
        nonlocal report
        if report >= 0:
            with contextlib.suppress(OSError):
                os.write(report, line.encode("utf-8", "replace") + b"\n")
                os.close(report)
            report = -1

    store = Store(run_dir(cfg))
    try:
        store.ensure_dir()
        setup_logging(store, cfg, foreground)
    except NetleakError as e:
        print(f"netleak daemon: {e}", file=sys.stderr)
        tell(e.message)
        return 125
    _raise_open_files()
    lock = store.take_lock()
    if lock is None:
        log.info("a daemon already runs for %s", store.path)
        tell("busy")
        return 0
    d: Daemon | None = None

    def stop(signum, frame):
        if d is not None:
            d.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        d = Daemon(cfg, store, idle_exit=idle_exit)
        d.start(own_cgroup=own_cgroup)
        tell("ready")
        d.run()
        d.close_relay()
        d.close_events()
        if not d.state.sessions:    # nothing of this namespace's is left in the maps
            _step("local addresses", d.sync_locals, False)
    except NetleakError as e:
        log.error("%s", e)
        tell(e.message)
        return 125
    finally:
        tell("")
        with contextlib.suppress(OSError):
            store.remove(Store.SOCKET)
        with contextlib.suppress(OSError):
            store.remove(Store.PID)
        if own_cgroup and d is not None:
            d.leave_own_cgroup()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netleak daemon")
    p.add_argument("--idle-exit", type=float, default=0.0)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--own-cgroup", action="store_true")
    p.add_argument("--report-fd", type=int, default=-1)
    a = p.parse_args(argv)
    try:
        cfg = Config.from_env(os.environ)
    except NetleakError as e:
        print(f"netleak daemon: {e}", file=sys.stderr)
        if a.report_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(a.report_fd, e.message.encode() + b"\n")
        return 125
    return serve(cfg, idle_exit=a.idle_exit, foreground=a.foreground,
                 own_cgroup=a.own_cgroup, report=a.report_fd)


if __name__ == "__main__":
    sys.exit(main())
