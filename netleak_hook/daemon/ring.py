"""Blocked-attempt events: this namespace's BPF ring drained into the event
log, each event named with its session."""
from __future__ import annotations

import contextlib
import os

from ..core import events
from ..kernel import programs
from ..kernel.ringbuf import RingReader, ring_size
from .notes import log


def open_reader(maps, netns: int) -> RingReader:
    fd = maps.open_ring(netns)
    try:
        return RingReader(fd, ring_size(programs.RING_PAGES))
    except BaseException:
        os.close(fd)
        raise


class Ring:
    def __init__(self, holder, pins, event_log, open_ring=open_reader, clock_offset=None) -> None:
        self.holder = holder
        self.pins = pins
        self.event_log = event_log
        self.open_ring = open_ring
        self.clock_offset = clock_offset or (lambda: events.boot_offset())
        self.reader = None      # a RingReader while open

    def open(self) -> None:
        """Read this namespace's event ring (what a crashed predecessor left
        in it comes first). Without it the daemon still works; sessions'
        events are then counted as lost."""
        maps = self.pins.maps_for(self.pins.path)
        if maps is None:
            return
        try:
            self.reader = self.open_ring(maps, self.holder.netns)
        except (OSError, ValueError) as e:
            log.warning("no blocked-attempt events: cannot open the event ring (%s)", e)
            return
        self.drain()

    def close(self) -> None:
        """On a clean exit: drain the ring; with no session left, unregister
        it too, so none is left behind for a namespace that may go away
        (with sessions, it keeps their events for the next daemon)."""
        if self.reader is None:
            return
        with contextlib.suppress(Exception):
            self.drain()
        maps = self.pins.maps_for(self.pins.path)
        if maps is not None and not self.holder.state.sessions:
            maps.close_ring(self.holder.netns)
        self.reader.close()
        with contextlib.suppress(OSError):
            os.close(self.reader.fd)
        self.reader = None

    def drain(self) -> None:
        """Drain the ring into the event log, naming each event's session."""
        assert self.reader is not None
        offset = self.clock_offset()
        by_id = {s.cgroup_id: s for s in self.holder.state.sessions.values()}
        out = []
        for raw in self.reader.records():
            if len(raw) < events.EVENT_SIZE:
                continue
            ev = events.decode(raw)
            s = by_id.get(ev["cgroup_id"]) or self.holder.recent.get(ev["cgroup_id"])
            info = ({"id": s.id, "container": s.container, "cgroup": "/" + s.cgroup,
                     "iface": s.iface, "deny": s.deny} if s else None)
            out.append(events.enrich(ev, offset, info))
        self.log(out)

    def log(self, out: list[dict]) -> None:
        """Append events (the kernel's and the relay's) to the event log."""
        if out:
            try:
                self.event_log.append(out)
            except OSError as e:
                log.warning("cannot write %s: %s", self.event_log.path, e)
