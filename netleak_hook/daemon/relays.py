"""Proxy mode's relay, supervised: started with the first proxy session,
stopped with the last, its sockets made in a cgroup of their own."""
from __future__ import annotations

import os
import queue

from ..core import proxyspec
from ..core.errors import NetleakError
from ..proxymode import relay
from .notes import step

RELAY_CGROUP = "relay"    # under the daemon's home: where the relay's sockets are made


class Relays:
    def __init__(self, cfg, holder, cgroups, pins, parent: str, log_events,
                 make_relay=None) -> None:
        self.cfg = cfg
        self.holder = holder
        self.cgroups = cgroups
        self.pins = pins
        self.parent = parent                # the cgroup parent's path
        self.home = parent                  # where the relay's cgroup goes (the daemon's
                                            # unit, on a systemd host)
        self.log_events = log_events        # list[dict] -> None: the event log
        self.make_relay = make_relay        # None: proxymode.relay.Relay
        self.relay = None                   # running, or None
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self._routes: tuple = (None, {})

    @property
    def cgroup(self) -> str:
        return os.path.join(self.home, RELAY_CGROUP)

    def ports(self) -> tuple[int, int, int]:
        return self.relay.ports if self.relay is not None else (0, 0, 0)

    def ensure(self) -> None:
        """A relay runs (started now if none did)."""
        if self.relay is not None:
            return
        maps = self.pins.maps_for(self.pins.path)
        if maps is None or maps.redirect < 0 or not self.pins.has("prog_relay_in"):
            raise NetleakError(f"the programs pinned in {self.pins.path} have no proxy "
                               f"mode: run 'netleak gc' and retry")
        path = self.cgroup
        if not self.cgroups.exists(path):
            self.cgroups.make(path)
        # only sockets the programs sent there get through to the relay's
        self.pins.attach_ingress("prog_relay_in", path)
        r = (self.make_relay or relay.Relay)(maps.redirect, self.route, self.events,
                            port=self.cfg.relay_port, netns=self.holder.netns,
                            make=lambda fn: self.cgroups.sockets_made_in(path, fn))
        try:
            r.start()
        except BaseException:
            step("relay cgroup", self.remove_cgroup)
            raise
        self.relay = r

    def remove_cgroup(self) -> None:
        """Once no socket is made there any more (the cgroup holds no
        process; the sockets still open keep it, and its program, alive)."""
        self.cgroups.remove_if_empty(self.cgroup)

    def route(self, cgroup_id: int):
        """How the relay carries a session's connections (called from its
        threads: reads one snapshot of the state)."""
        state = self.holder.state
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

    def drain(self) -> None:
        """The relay's events into the event log."""
        out = []
        while True:
            try:
                out.append(self.events.get_nowait())
            except queue.Empty:
                break
        self.log_events(out)

    def forget(self, cgroup_id: int) -> None:
        if self.relay is not None:
            self.relay.forget(cgroup_id)

    def close(self) -> None:
        if self.relay is not None:
            self.relay.close()
            self.relay = None
            self.drain()
        step("relay cgroup", self.remove_cgroup)

    def close_if_unused(self) -> None:
        """The next proxy session starts it again."""
        if not any(o.proxy for o in self.holder.state.sessions.values()):
            step("relay", self.close)
