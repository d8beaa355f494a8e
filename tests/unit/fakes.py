"""Fakes of the kernel adapters the daemon's roles receive (daemon/adapters.py),
sharing one Journal of what was done, in order; and World, every role
wired to them as the daemon wires the real ones."""
from __future__ import annotations

import errno
import socket

from netleak_hook.core.config import Config
from netleak_hook.core.errors import NetleakError
from netleak_hook.core.plan import Link
from netleak_hook.core.policy import SLOT_OWNER, Policy, Stats, free_slots, pack_key, pack_slot
from netleak_hook.core.state import State
from netleak_hook.daemon.loop import wire

NETNS = 0x5EED
ROOT = "/cg"
PINS = "/pins/v1"


class Journal(list):
    """(who, what, detail) of each change, in the order made."""

    def of(self, *who: str) -> list[tuple]:
        return [e for e in self if e[0] in who]

    def index(self, who: str, what: str | None = None, pred=None) -> int:
        """Position of the first matching entry; -1 when none."""
        for i, e in enumerate(self):
            if e[0] == who and (what is None or e[1] == what) and (pred is None or pred(e)):
                return i
        return -1


class FakeStore:
    path = "/run/netleak"
    log_file = "/run/netleak/daemon.log"

    def __init__(self, journal: Journal, state: State | None = None) -> None:
        self.journal = journal
        self.saved: list[State] = []
        self.initial = state or State()

    def load(self) -> State:
        self.journal.append(("store", "load"))
        return self.initial

    def save(self, state: State) -> None:
        self.saved.append(state)
        self.journal.append(("store", "save", state))


class FakeNet:
    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.links: dict[str, Link] = {}
        self.gateways: dict[int, tuple] = {}
        self.routes: set = set()
        self.rules: set = set()
        self.added: dict = {}               # rule -> when it was added (ties keep that order)
        self.other_tables: set[int] = set()  # others' tables that route anything
        self.theirs: set = set()            # rules with selectors netleak's never have
        self.addresses: dict[str, int] = {"127.0.0.1": 1, "192.0.2.10": 2}

    def link(self, name, index, up=True, p2p=True, addrs4=("198.51.100.2",)):
        self.links[name] = Link(name=name, index=index, admin_up=up, carrier=up,
                                pointopoint=p2p, addrs4=addrs4)
        return self.links[name]

    def read_link(self, name):
        return self.links.get(name)

    def default_gateways(self, index):
        return self.gateways.get(index, (None, None))

    def local_addresses(self):
        return dict(self.addresses)

    def link_names(self):
        return {link.index: name for name, link in self.links.items()}

    def current_routes(self, table):
        return {r for r in self.routes if r.table == table}

    def routes_in_tables(self, tables):
        return {r for r in self.routes if r.table in tables}

    def add_route(self, r):
        self.journal.append(("net", "add_route", r))
        self.routes.add(r)

    def del_route(self, r):
        self.journal.append(("net", "del_route", r))
        self.routes.discard(r)

    def list_rules(self, ours):
        """In the kernel's order: by priority, then as added."""
        from netleak_hook.core.precedence import Listed
        order = sorted(self.rules, key=lambda r: (r.priority, self.added.get(r, 0)))
        return [(r, Listed(r.family, r.priority, r.table,
                           r not in self.theirs and bool(ours(r)), r.fwmark,
                           f"{r.priority}: from {r.src or 'all'} lookup {r.table}"))
                for r in order]

    def lookup_table(self, family, mark, dst):
        """The first rule of FAMILY that takes MARK (one with no selector
        takes every packet), if its table has a unicast route."""
        self.journal.append(("probe", "lookup_table", family, mark))
        for r, _ in self.list_rules(lambda r: False):
            if r.family != family or r.src or r.dst or r.fwmark not in (None, mark):
                continue
            if any(x.table == r.table and x.family == family and x.kind == "unicast"
                   for x in self.routes) or r.table in self.other_tables:
                return r.table
            return None
        return None

    def add_rule(self, r):
        self.journal.append(("net", "add_rule", r))
        self.rules.add(r)
        self.added[r] = len(self.added) + 1

    def del_rule(self, r):
        self.journal.append(("net", "del_rule", r))
        self.rules.discard(r)


class FakeCgroups:
    """A cgroup tree: relative name -> [cgroup id, holds processes]."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.root = ROOT
        self.tree: dict[str, list] = {}
        self.procs: dict[str, list[int]] = {}
        self.ages: dict[str, float] = {}
        self.mine = "system.slice/netleak.service"
        self.delegation: dict[str, str] = {}
        self.whole_tree = True
        self.next_id = 1000
        self.clock = Clock()

    def add(self, rel: str, populated: bool = True, cid: int | None = None) -> int:
        if cid is None:
            self.next_id += 1
            cid = self.next_id
        self.tree[rel] = [cid, populated]
        return cid

    def rel(self, path: str) -> str:
        return path[len(ROOT):].strip("/")

    def path(self, rel):
        return f"{ROOT}/{rel.strip('/')}"

    def populated(self, path):
        entry = self.tree.get(self.rel(path))
        return None if entry is None else entry[1]

    def cgroup_id(self, path):
        entry = self.tree.get(self.rel(path))
        if entry is None:
            raise FileNotFoundError(path)
        return entry[0]

    def exists(self, path):
        return self.rel(path) in self.tree

    def make(self, path):
        self.journal.append(("cgroups", "make", self.rel(path)))
        self.add(self.rel(path), populated=False)

    def join(self, path, pid=0):
        self.journal.append(("cgroups", "join", self.rel(path), pid))
        self.tree[self.rel(path)][1] = True

    def of_pid(self, pid):
        return self.mine

    def tree_procs(self, path):
        return list(self.procs.get(self.rel(path), []))

    def remove_tree(self, path):
        rel = self.rel(path)
        self.journal.append(("cgroups", "remove_tree", rel))
        entry = self.tree.get(rel)
        if entry and entry[1]:
            return False        # busy
        self.tree.pop(rel, None)
        return True

    def remove_if_empty(self, path):
        rel = self.rel(path)
        if rel in self.tree and not self.tree[rel][1] and not any(
                k.startswith(rel + "/") for k in self.tree):
            self.journal.append(("cgroups", "remove_if_empty", rel))
            del self.tree[rel]

    def index_ids(self):
        return {cid: rel for rel, (cid, _) in self.tree.items()}

    def delegated(self, cgroups):
        return {c: self.delegation[c] for c in cgroups if c in self.delegation}

    def sees_whole_tree(self):
        return self.whole_tree

    def sockets_made_in(self, path, make):
        return make()

    def names(self, path):
        rel = self.rel(path)
        return [k.rpartition("/")[2] for k in self.tree if k.rpartition("/")[0] == rel]

    def stat(self, path):
        rel = self.rel(path)
        if rel not in self.tree:
            return None
        return self.tree[rel][0], self.clock() - self.ages.get(rel, 3600.0)


class FakeMaps:
    """The descriptors of one pin set's maps (numbers the FakeBpf knows)."""

    def __init__(self, base: int, bpf: "FakeBpf", stats: dict | None = None) -> None:
        self.policy, self.stats, self.locals = base, base + 1, base + 2
        self.redirect, self.redirect_n, self.rings = base + 3, base + 4, base + 5
        self.counters, self.slots = base + 6, base + 7
        self.bpf = bpf
        self.closed_rings: list[int] = []

    def read_stats(self, cgroup_id, slot=0):
        by_id = pack_key(cgroup_id) in self.bpf.maps.get(self.stats, {})
        in_slot = slot and pack_slot(slot) in self.bpf.maps.get(self.counters, {})
        return Stats(passed_packets=3 * (by_id + bool(in_slot)))

    def claim_slot(self, cgroup_id, used, netns=0):
        held = self.bpf.maps.setdefault(self.slots, {})
        for slot in free_slots(used):
            if pack_slot(slot) not in held:
                held[pack_slot(slot)] = SLOT_OWNER.pack(cgroup_id, netns)
                return slot
        return 0

    def slot_owner(self, slot):
        raw = self.bpf.maps.get(self.slots, {}).get(pack_slot(slot))
        return SLOT_OWNER.unpack(raw) if raw is not None else None

    def move_slot(self, slot, old, new, netns):
        if not slot or self.slot_owner(slot) != (old, netns):
            return False
        self.bpf.maps.setdefault(self.slots, {})[pack_slot(slot)] = SLOT_OWNER.pack(new, netns)
        return True

    def release_slot(self, slot, cgroup_id, netns):
        if slot and self.slot_owner(slot) == (cgroup_id, netns):
            self.bpf.maps.get(self.slots, {}).pop(pack_slot(slot), None)

    def open_ring(self, netns):
        self.bpf.journal.append(("maps", "open_ring", netns))
        return 99

    def close_ring(self, netns):
        self.bpf.journal.append(("maps", "close_ring", netns))
        self.closed_rings.append(netns)


class FakeBpf:
    BPF_CGROUP_INET_INGRESS = 0

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.maps: dict[int, dict[bytes, bytes]] = {}
        self.attached: dict[tuple, set] = {}

    def map_lookup(self, fd, key, size):
        return self.maps.get(fd, {}).get(bytes(key))

    def map_update(self, fd, key, value):
        self.journal.append(("bpf", "update", fd, bytes(key), bytes(value)))
        self.maps.setdefault(fd, {})[bytes(key)] = bytes(value)

    def map_delete(self, fd, key):
        self.journal.append(("bpf", "delete", fd, bytes(key)))
        return self.maps.get(fd, {}).pop(bytes(key), None) is not None

    def map_keys(self, fd, size):
        return list(self.maps.get(fd, {}))

    def obj_get(self, path):
        return 7

    def prog_id(self, fd):
        return 42

    def prog_query(self, cfd, kind):
        return []

    def prog_attach(self, fd, cfd, kind):
        self.journal.append(("bpf", "prog_attach", kind))

    # what tests read
    def policy_of(self, maps: FakeMaps, cgroup_id: int) -> Policy | None:
        raw = self.maps.get(maps.policy, {}).get(pack_key(cgroup_id))
        return Policy.unpack(raw) if raw else None


class FakeProgs:
    def __init__(self, journal: Journal, fail: list | None = None) -> None:
        self.journal = journal
        self.fail = fail if fail is not None else []

    def attach(self, path):
        if self.fail:
            raise self.fail.pop(0)
        self.journal.append(("progs", "attach", path[len(ROOT):].strip("/")))

    def detach(self, path):
        self.journal.append(("progs", "detach", path[len(ROOT):].strip("/")))


class FakePins:
    def __init__(self, journal: Journal, bpf: FakeBpf) -> None:
        self.path = PINS
        self.sets = {PINS: FakeMaps(10, bpf)}
        self.progs = {PINS: FakeProgs(journal)}
        self.relay_program = True
        self.journal = journal

    def pin(self, name):
        return f"{self.path}/{name}"

    def ensure(self):
        self.journal.append(("pins", "ensure"))

    def has(self, name):
        return self.relay_program

    def attach_ingress(self, name, cgroup_path):
        self.journal.append(("pins", "attach_ingress", name, cgroup_path[len(ROOT):].strip("/")))

    def maps_for(self, pinset):
        return self.sets.get(pinset)

    def progs_for(self, pinset):
        return self.progs.get(pinset)

    def listed(self):
        return sorted(self.sets)

    def add(self, pinset: str, base: int, bpf: FakeBpf, journal: Journal) -> FakeMaps:
        self.sets[pinset] = FakeMaps(base, bpf)
        self.progs[pinset] = FakeProgs(journal)
        return self.sets[pinset]


class FakeProcs:
    def __init__(self) -> None:
        self.living: set[int] = set()
        self.netns: dict[int, int] = {}

    def alive(self, pid):
        return pid in self.living

    def netns_of(self, pid):
        return self.netns.get(pid, 4026531840)

    @staticmethod
    def own_pid():
        return 1


class FakeWatch:
    def __init__(self) -> None:
        self.watched: dict[str, str] = {}
        self.missed: set[str] = set()
        self.changed: set[str] = set()

    def sync(self, paths):
        self.watched = dict(paths)
        out, self.missed = self.missed & set(paths), set()
        return out

    def drain(self):
        out, self.changed = self.changed, set()
        return out

    def fileno(self):
        return -1


class FakeEventLog:
    path = "/run/netleak/events.jsonl"

    def __init__(self) -> None:
        self.lines: list[dict] = []
        self.fail = False

    def append(self, events):
        if self.fail:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.lines.extend(events)


class FakeRelay:
    instances: list["FakeRelay"] = []     # of the World made last
    journal: Journal = Journal()

    def __init__(self, redirect_fd, route, events, port=0, netns=0, make=None) -> None:
        self.route, self.events, self.port = route, events, port
        self.forgotten: list[int] = []
        self.started = self.closed = False
        self.ports = (1021, 1022, 1023)
        self.fail = None
        FakeRelay.instances.append(self)

    def start(self):
        if self.fail:
            raise self.fail
        FakeRelay.journal.append(("relay", "start"))
        self.started = True

    def forget(self, cgroup_id):
        self.forgotten.append(cgroup_id)

    def close(self):
        FakeRelay.journal.append(("relay", "close"))
        self.closed = True


class FakeUnits:
    """systemd: transient scopes, made in the fake cgroup tree."""

    def __init__(self, journal: Journal, cgroups: FakeCgroups) -> None:
        self.journal = journal
        self.cgroups = cgroups
        self.gone: set[str] = set()
        self.broken = False                 # systemd does not answer

    def write_dropin(self, unit, text):
        self.journal.append(("units", "write_dropin", unit, text))
        if self.broken:
            raise NetleakError("no answer from systemd to Reload (TimeoutError)")

    def remove_dropin(self, unit):
        self.journal.append(("units", "remove_dropin", unit))
        if self.broken:
            raise NetleakError("no answer from systemd to Reload (TimeoutError)")

    def loaded(self, unit):
        self.journal.append(("units", "loaded", unit))
        if self.broken:
            raise NetleakError("no answer from systemd to GetUnit (TimeoutError)")
        return unit not in self.gone

    def start_scope(self, name, pid, description, delegate=False):
        self.journal.append(("units", "start_scope", name, pid, delegate))
        if name in self.gone:
            raise NetleakError(f"systemd refused StartTransientUnit: {name}")
        rel = f"netleak.slice/{name}"
        self.cgroups.add(rel, populated=True)
        return rel


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class World:
    """Every role of a daemon on fakes. cfg: Config overrides."""

    def __init__(self, state: State | None = None, **cfg) -> None:
        self.journal = Journal()
        FakeRelay.instances, FakeRelay.journal = [], self.journal
        self.cfg = Config.from_env({})
        for name, value in cfg.items():
            assert hasattr(self.cfg, name), name
            setattr(self.cfg, name, value)
        self.store = FakeStore(self.journal, state)
        self.net = FakeNet(self.journal)
        self.cgroups = FakeCgroups(self.journal)
        self.bpf = FakeBpf(self.journal)
        self.pins = FakePins(self.journal, self.bpf)
        self.procs = FakeProcs()
        self.clock = Clock()
        self.cgroups.clock = self.clock
        self.watch = FakeWatch()
        self.events = FakeEventLog()
        self.resolvers: dict[int, tuple] = {}
        self.here = 4026531840
        self.units = FakeUnits(self.journal, self.cgroups)
        self.roles = wire(self.cfg, self.store, net=self.net, cgroups=self.cgroups,
                          bpf=self.bpf, pins=self.pins, procs=self.procs, clock=self.clock,
                          watch=self.watch, event_log=self.events,
                          resolvers=lambda index: self.resolvers.get(index, ()),
                          here_netns=lambda: self.here, make_relay=FakeRelay,
                          units=self.units, netleak_cli="/usr/bin/netleak")
        r = self.roles
        self.holder, self.links, self.sessions = r.holder, r.links, r.sessions
        self.reaper, self.gc, self.requests, self.relays = (r.reaper, r.collector,
                                                            r.requests, r.relays)
        self.ring = r.ring
        self.holder.netns = NETNS
        self.holder.load()
        self.maps = self.pins.sets[PINS]
        self.journal.clear()

    @property
    def state(self) -> State:
        return self.holder.state

    def exec_request(self, sid="s1", iface="wg0", cgroup=None, populated=False, **extra):
        """What netleak-exec sends for a cgroup it made (the cgroup made here)."""
        cgroup = cgroup or f"netleak/exec-{sid}-77"
        cid = self.cgroups.add(cgroup, populated=populated)
        msg = {"op": "open", "id": sid, "iface": iface, "cgroup": cgroup, "cgroup_id": cid,
               "join": True, "peer_pid": 77}
        msg.update(extra)
        return msg

    def open(self, sid="s1", iface="wg0", **extra) -> dict:
        return self.sessions.open(self.exec_request(sid, iface, **extra))

    def attach_request(self, sid="a1", iface="wg0", cgroup="system.slice/app.service",
                       populated=True, **extra):
        cid = self.cgroups.add(cgroup, populated=populated)
        msg = {"op": "open", "id": sid, "iface": iface, "cgroup": cgroup, "cgroup_id": cid,
               "owned": False, "peer_pid": 88}
        msg.update(extra)
        return msg

    def policy(self, cgroup_id: int) -> Policy | None:
        return self.bpf.policy_of(self.maps, cgroup_id)

    def daemon(self):
        """The loop over these roles (netlink's events and the cookie faked)."""
        from netleak_hook.daemon.loop import Daemon

        def cookie():
            self.journal.append(("kernel", "netns_cookie"))
            return NETNS
        return Daemon(self.cfg, self.store, self.roles, FakeEvents(), cookie)


class FakeEvents:
    def __init__(self) -> None:
        self.batches: list[list] = []

    def get(self):
        return self.batches.pop(0) if self.batches else []

    def fileno(self):
        return -1


class Conn:
    """One end of a socket pair, as a listener's accept() hands it out, that
    notes its reply in the journal."""

    def __init__(self, journal: Journal, request: bytes) -> None:
        self.journal = journal
        self.ours, self.theirs = socket.socketpair()
        self.theirs.sendall(request)
        self.theirs.shutdown(socket.SHUT_WR)
        self.reply = b""

    def __getattr__(self, name):
        return getattr(self.ours, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ours.close()
        self.theirs.close()

    def sendall(self, data):
        self.journal.append(("conn", "reply", data))
        self.reply += data


class Listener:
    def __init__(self, conns: list[Conn]) -> None:
        self.conns = conns

    def accept(self):
        if not self.conns:
            raise OSError(errno.EAGAIN, "nothing to accept")
        return self.conns.pop(0), None
