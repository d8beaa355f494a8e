"""The connections of the controlled sessions, as `netleak connections`
shows them: one socket diagnostics dump, the sessions' processes' sockets,
and for proxy mode the real destinations and the names asked for."""
from __future__ import annotations

import dataclasses
import os
import pwd

from ..core import abi, connections
from ..kernel import bpfsys, proc, sockdiag
from ..proxymode.records import REDIRECT_SIZE, cookie_key, unpack_redirect


class ConnectionView:
    def __init__(self, holder, pins, relays, cgroups, dump=sockdiag.dump,
                 owners=proc.socket_owners, clock_ns=proc.boot_ns, storage=None) -> None:
        self.holder = holder
        self.pins = pins
        self.relays = relays
        self.cgroups = cgroups
        self.dump = dump
        self.owners = owners
        self.clock_ns = clock_ns
        self.storage = storage or socket_storage

    def answer(self, msg: dict) -> dict:
        return {"ok": True, "connections": self.rows(msg.get("session") or None)}

    def rows(self, session: str | None = None) -> list[dict]:
        """Every socket of the sessions (or of the one whose id starts
        with SESSION), but listening ones."""
        state = self.holder.state
        chosen = [s for s in state.sessions.values()
                  if session is None or s.id.startswith(session)]
        if not chosen:
            return []
        by_cgroup: dict[int, object] = {}     # every cgroup of a session's subtree
        pids: list[int] = []
        for s in chosen:
            for ino, procs in _subtree(self.cgroups.path(s.cgroup)):
                by_cgroup[ino] = s
                pids += procs
        maps = {s.pinset: self.pins.maps_for(s.pinset) for s in chosen}
        fds = sorted({m.flows for m in maps.values() if m is not None and m.flows >= 0})
        owners = self.owners(pids)
        now = self.clock_ns()
        users: dict[int, str] = {}
        out = []
        for d in self.dump(fds):
            s = by_cgroup.get(d.cgroup_id)
            if s is None:
                continue
            held = owners.get(d.inode)
            m = maps.get(s.pinset)
            storage = d.storage
            if storage is None and held and m is not None and m.flows >= 0:
                storage = self.storage(m.flows, *held)
                d = dataclasses.replace(d, storage=storage)
            fs = connections.flowstat(storage)
            pid = held[0] if held else (fs["pid"] if fs else 0)
            owner = (pid or None, proc.comm(pid) if pid else None, _user(d.uid, users))
            dest, name = self._asked(m, s, d.cookie)
            out.append(connections.row(d, {"id": s.id, "iface": s.iface}, owner, dest, name,
                                       now))
        return connections.ordered(out)

    def _asked(self, maps, s, cookie: int):
        """Where the program asked to go, when the programs sent the socket
        elsewhere (the relay, a resolver), and the name it asked for."""
        if maps is None or maps.redirect < 0:
            return None, None
        raw = bpfsys.map_lookup(maps.redirect, cookie_key(cookie), REDIRECT_SIZE)
        if not raw:
            return None, None
        r = unpack_redirect(raw)
        name = None
        relay = getattr(self.relays, "relay", None)
        pool = relay.pools.get(s.cgroup_id) if relay is not None else None
        if pool is not None:
            name = pool.peek(r.orig_addr)
        return (r.orig_addr, r.orig_port), name


def socket_storage(map_fd: int, pid: int, fd: int) -> bytes | None:
    """The value socket storage map MAP_FD keeps for PID's socket FD: the
    kernel's dump tells it for TCP sockets only, so the socket is looked up
    by a descriptor of its own (borrowed with pidfd_getfd). None when it has
    none, or the process cannot be reached."""
    try:
        sock = proc.borrow_fd(pid, fd)
    except OSError:
        return None
    try:
        return bpfsys.map_lookup(map_fd, sock.to_bytes(4, "little"), abi.FLOWSTAT.size)
    except OSError:
        return None
    finally:
        os.close(sock)


def _subtree(path: str):
    """(inode, pids) of PATH and every cgroup below it."""
    for top, dirs, files in os.walk(path):
        try:
            ino = os.stat(top).st_ino
            with open(os.path.join(top, "cgroup.procs")) as f:
                pids = [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
        yield ino, pids


def _user(uid: int, cache: dict[int, str]) -> str:
    if uid not in cache:
        try:
            cache[uid] = pwd.getpwuid(uid).pw_name
        except KeyError:
            cache[uid] = str(uid)
    return cache[uid]
