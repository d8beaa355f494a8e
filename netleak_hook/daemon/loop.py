"""The daemon's loop: builds the roles with their kernel adapters, rebuilds
its view at start-up, then polls its sources (requests, netlink, cgroup
events, the event ring) and runs the periodic passes."""
from __future__ import annotations

import json
import os
import select
import time

from ..core import dnsconf
from ..core.errors import NetleakError
from ..kernel import bpfsys, cgroupfs, netlink, systemd
from ..kernel.cgroupwatch import CgroupWatch
from ..rundir import eventlog
from ..rundir.store import netns_id
from .adapters import Cgroups, Net, Pins, Procs
from .connview import ConnectionView
from .gc import Collector
from .holder import Holder
from .links import Links
from .reaper import Reaper
from .relays import Relays
from .requests import Requests
from .sessions import Sessions
from .ring import Ring
from .notes import log, note, step

TICK = 0.25            # longest sleep of the main loop


class Daemon:
    """One per network namespace: owns the rules and routes and the policy
    map entries of its sessions, follows each bound interface (kill
    switch), reaps sessions whose cgroup is empty."""

    def __init__(self, cfg, store, roles: "Roles", netlink_events, netns_cookie,
                 idle_exit: float = 0.0) -> None:
        self.cfg = cfg
        self.store = store
        self.idle_exit = idle_exit
        self.stopping = False
        self.listener = None
        self.netlink_events = netlink_events    # rtnetlink's multicast groups
        self.netns_cookie = netns_cookie        # () -> this namespace's cookie
        self.roles = r = roles
        self.holder, self.cgroups, self.parent, self.pins = r.holder, r.cgroups, r.parent, r.pins
        self.ring, self.relays, self.links, self.sessions = r.ring, r.relays, r.links, r.sessions
        self.reaper, self.collector, self.requests = r.reaper, r.collector, r.requests
        self.requests.ops["yield"] = self.hand_over

    @property
    def state(self):
        return self.holder.state

    def start(self, listen, settle=None) -> None:
        """Rebuild the view from the state file and the kernel: finish or
        roll back what a crash interrupted, collect what is left over (also
        after a reboot, when run directory and bpffs start empty); then
        LISTEN(store) opens the request socket. SETTLE(parent), if given,
        first moves the daemon where it lives (a cgroup or a unit of its
        own) and returns the cgroup the relay's goes under (None: PARENT)."""
        if settle is not None:
            home = settle(self.parent)
            if home:
                self.relays.home = home
        # read once out of any controlled cgroup (a socket of one in another
        # namespace would be refused)
        self.holder.netns = self.netns_cookie()
        if not self.holder.netns:
            raise NetleakError(
                "this kernel does not tell network namespaces apart (SO_NETNS_COOKIE, "
                "Linux 5.14 or later, is needed): upgrade the kernel")
        self.pins.ensure()
        self.holder.load()
        # before any session sends: the addresses its packets may come from
        step("local addresses", self.links.sync_locals)
        if any(s.proxy for s in self.state.sessions.values()):
            step("relay", self.relays.ensure)
        report = self.collector.unreported = self.collector.gc()
        self.ring.open()
        self.listener = listen(self.store)
        note("daemon-ready", "daemon %d ready in %s (pins %s); start-up gc: %s", os.getpid(),
             self.store.path, self.pins.path, json.dumps(report, sort_keys=True),
             run_dir=self.store.path, pins=self.pins.path, sessions=len(self.state.sessions))

    def hand_over(self, msg: dict) -> dict:
        """Another daemon (a service starting) takes over: this one exits as
        on SIGTERM once it has replied; sessions stay."""
        note("daemon-hand-over", "daemon %d hands over to a new daemon", os.getpid())
        self.stopping = True
        return {"ok": True, "pid": os.getpid()}

    def run(self, tick=None) -> None:
        """Until stopped (or idle too long); TICK() is called on each turn."""
        assert self.listener is not None
        last_reconcile = time.monotonic()
        idle_since = time.monotonic()
        watch = self.reaper.watch
        while not self.stopping:
            if tick is not None:
                tick()
            self.reaper.follow()
            self.reaper.follow_pinned()
            try:
                self.sessions.expire_lingering()
            except Exception:   # the next turn tries again; gc at the latest
                log.exception("releasing lingering set-ups")
            try:
                ready = self.wait([self.listener, self.netlink_events, watch]
                                  + ([self.ring.reader] if self.ring.reader else []))
            except InterruptedError:
                continue
            if self.ring.reader is not None and self.ring.reader in ready:
                try:
                    self.ring.drain()
                except Exception:   # events are best effort; the rest goes on
                    log.exception("reading the event ring")
            self.relays.drain()
            try:
                if watch in ready:
                    self.reaper.on_change()
                if self.netlink_events in ready:
                    self.on_netlink()
                if self.listener in ready:
                    self.requests.accept(self.listener)
                now = time.monotonic()
                if now - last_reconcile >= self.cfg.reconcile_seconds:
                    self.periodic()
                    last_reconcile = now
            except Exception:  # keep monitoring whatever one pass hit
                log.exception("daemon loop")
                now = time.monotonic()
            if self.state.sessions:
                idle_since = now
            elif self.idle_exit and now - idle_since > self.idle_exit:
                note("daemon-idle-exit", "no sessions for %.0fs: exiting", self.idle_exit)
                break

    @staticmethod
    def wait(sources: list) -> list:
        """The sources with something to read, within a TICK. poll, not
        select: with a cgroup.events open per session, a descriptor made
        later may be past select's 1,024."""
        by_fd = {w.fileno(): w for w in sources}
        poller = select.poll()
        for fd in by_fd:
            poller.register(fd, select.POLLIN)
        return [by_fd[fd] for fd, _ in poller.poll(TICK * 1000)]

    def periodic(self) -> None:
        """All sessions: set-ups whose requester died, cgroups whose events
        file could not be watched; interfaces; orphan cgroups."""
        self.reaper.reap()
        self.links.reconcile_all()
        self.collector.sweep_orphan_cgroups()

    def on_netlink(self) -> None:
        try:
            msgs = self.netlink_events.get()
        except Exception:  # pyroute2 may raise on a truncated batch, ENOBUFS
            log.exception("reading netlink events")
            msgs = None     # some were lost: a pass, to be sure
        # pyroute2 may keep part of a burst in its own buffer, where select()
        # cannot see it, and hand it out with the next one: reconcile every
        # bound interface on any batch (a handful of netlink dumps), whatever
        # its messages say.
        if msgs is None or msgs:
            self.links.reconcile_all()

    def close(self) -> None:
        """A clean exit: the relay stopped, the ring drained, lingering
        set-ups released; with no session left, nothing of this namespace's
        stays in the maps."""
        self.relays.close()
        self.ring.close()
        if step("lingering set-ups", self.links.release_unused):
            self.holder.save()
        if not self.state.sessions:
            step("local addresses", self.links.sync_locals, False)


def open_daemon(cfg, store, idle_exit: float = 0.0) -> Daemon:
    """A daemon on the real kernel: the cgroup mount, rtnetlink (a handle,
    and the multicast groups it follows), the pin sets, cgroup.events, the
    event log."""
    root = cgroupfs.find_cgroup2()
    net = Net(netlink.open_ipr())
    events = netlink.open_events()
    roles = wire(cfg, store, net=net, cgroups=Cgroups(root), bpf=bpfsys, pins=Pins(cfg.bpf_dir),
                 procs=Procs(), clock=time.time, watch=CgroupWatch(),
                 event_log=eventlog.EventLog(store.dir_fd(create=True), store.path),
                 resolvers=lambda index: dnsconf.interface_servers(index),
                 here_netns=lambda: netns_id(),
                 units=systemd.Systemd() if systemd.running() else None,
                 netleak_cli=netleak_command())
    return Daemon(cfg, store, roles, events, netlink.netns_cookie, idle_exit=idle_exit)


def netleak_command() -> str:
    """The netleak command of this installation: beside its Python (a venv,
    the install's own folder), else the one on PATH; '' if there is none."""
    import shutil
    import sys
    cli = os.path.join(os.path.dirname(sys.executable), "netleak")
    if os.access(cli, os.X_OK):
        return cli
    found = shutil.which("netleak")
    return os.path.abspath(found) if found else ""


class Roles:
    """The daemon's roles, wired to one another and to their adapters."""

    def __init__(self, **roles) -> None:
        self.__dict__.update(roles)


def wire(cfg, store, *, net, cgroups, bpf, pins, procs, clock, watch, event_log,
         resolvers, here_netns, make_relay=None, units=None, netleak_cli: str = "") -> Roles:
    """Every role of a daemon, given the kernel as adapters (real ones in
    Daemon, fakes in unit tests)."""
    holder = Holder(store)
    parent = cgroups.path(cfg.cgroup_parent)
    ring = Ring(holder, pins, event_log)
    relays = Relays(cfg, holder, cgroups, pins, parent, ring.log, make_relay)
    links = Links(cfg, holder, net, bpf, pins, relays.ports, resolvers)
    sessions = Sessions(cfg, holder, links, relays, cgroups, bpf, pins, procs, clock,
                        resolvers, here_netns, units, netleak_cli)
    reaper = Reaper(holder, sessions, cgroups, watch, procs, clock, units)
    collector = Collector(cfg, holder, reaper, links, relays, cgroups, bpf, pins, procs,
                          clock, parent)
    view = ConnectionView(holder, pins, relays, cgroups)
    requests = Requests(holder, sessions, reaper, collector, store.log_file, view)
    return Roles(holder=holder, parent=parent, cgroups=cgroups, pins=pins, ring=ring,
                 relays=relays, links=links, sessions=sessions, reaper=reaper,
                 collector=collector, requests=requests)
