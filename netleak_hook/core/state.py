"""Session bookkeeping as values, and their JSON form (pure)."""
from __future__ import annotations

import dataclasses
import json
from typing import Any

from .plan import Binding
from .policy import Policy

STATE_VERSION = 1


@dataclasses.dataclass(frozen=True)
class Session:
    """One controlled cgroup."""

    id: str
    iface: str
    cgroup: str            # path relative to the cgroup2 mount, no leading '/'
    cgroup_id: int
    pinset: str            # the pin directory the programs came from
    owned: bool = True     # netleak made the cgroup and removes it
    pid: int = 0           # the process that asked for it
    created: float = 0.0
    committed: bool = False  # the workload is in the cgroup (or was)
    container: str = ""    # OCI container id, for a session the hook opened
    block: bool = False    # no-network mode (iface is "")
    dns: tuple[str, ...] = ()    # resolvers its loopback DNS goes to
    dns_from: str = ""     # "user" (--dns, annotation) or "interface"
    allow: tuple[str, ...] = ()  # rules that may use the main table (netrules' texts)
    mark: int = 0          # a mark of its own (with --allow); 0: the interface's
    proxy: str = ""        # proxy mode: the proxy's URL (with its password)
    proxy_addr: str = ""   # the proxy's address, resolved when the session began
    unit: str = ""         # the systemd unit whose cgroup this is (systemd owns it)
    pinned: bool = False   # the unit pinned by name (attach --unit): kept across its restarts
    stats_slot: int = 0    # its counters' slot in its pin set's map `counters` (0: none)
    deny: tuple[str, ...] = ()   # rules refused and dropped, even by the interface

    @property
    def takes_names(self) -> bool:
        """Proxy mode with a proxy that is asked for host names (so its DNS
        gets stand-in addresses)."""
        from .proxyspec import parse
        return bool(self.proxy) and parse(self.proxy).takes_names

    @property
    def exec_session(self) -> bool:
        """netleak-exec's: it ends with its processes, never by detach."""
        return self.owned or (bool(self.unit) and not self.pinned)

    @property
    def what(self) -> str:
        """Where its traffic goes, for people."""
        if self.proxy:
            from .proxyspec import parse
            shown = parse(self.proxy).url()
            return f"{shown} via {self.iface}" if self.iface else shown
        return self.iface or "no network"


def policy_for(s: Session, base: Policy, relay: tuple[int, int, int] = (0, 0, 0)) -> Policy:
    """Session S's map entry: BASE (its interface's state, or no-network
    mode's) with what is S's own. RELAY: the relay's ports (TCP, DNS
    answered with names, DNS refused), for a proxy-mode session."""
    proxy = bool(s.proxy)
    tcp, names, refused = relay if proxy else (0, 0, 0)
    return dataclasses.replace(base, mark=s.mark or base.mark, block=s.block,
                               dns=s.dns, allow=s.allow, deny=s.deny, proxy=proxy,
                               relay_port=tcp,
                               dns_port=names if s.takes_names else refused,
                               stats_slot=s.stats_slot)


@dataclasses.dataclass(frozen=True)
class State:
    bindings: dict[str, Binding] = dataclasses.field(default_factory=dict)
    sessions: dict[str, Session] = dataclasses.field(default_factory=dict)
    # bound interfaces no session uses, kept until then (the daemon's clock):
    # the next session on one reuses its rules and routes
    lingering: dict[str, float] = dataclasses.field(default_factory=dict)

    def sessions_on(self, iface: str) -> list[Session]:
        return [s for s in self.sessions.values() if s.iface == iface]

    def with_session(self, s: Session) -> "State":
        """S added (or updated); its interface, if it lingered, is in use again."""
        lingering = self.lingering
        if s.iface in lingering:
            lingering = {k: v for k, v in lingering.items() if k != s.iface}
        return dataclasses.replace(self, sessions={**self.sessions, s.id: s},
                                   lingering=lingering)

    def without_session(self, sid: str) -> "State":
        return dataclasses.replace(
            self, sessions={k: v for k, v in self.sessions.items() if k != sid})

    def with_binding(self, b: Binding) -> "State":
        return dataclasses.replace(self, bindings={**self.bindings, b.iface: b})

    def without_binding(self, iface: str) -> "State":
        return dataclasses.replace(
            self, bindings={k: v for k, v in self.bindings.items() if k != iface},
            lingering={k: v for k, v in self.lingering.items() if k != iface})

    def unused_bindings(self) -> list[str]:
        """Interfaces no session uses any more: their rules and routes go
        (at once, or when their linger ends)."""
        used = {s.iface for s in self.sessions.values()}
        return sorted(set(self.bindings) - used)

    def with_lingering(self, lingering: dict[str, float]) -> "State":
        """The unused bindings to keep, each until its time (others' entries
        are not kept: a binding in use does not linger)."""
        unused = set(self.unused_bindings())
        return dataclasses.replace(
            self, lingering={k: v for k, v in lingering.items() if k in unused})


# why a session ended (daemon/sessions.py remove) when its interface's
# set-up may linger: its workload is over, and the next command on that
# interface may come soon; a set-up that failed, was given up or detached
# on purpose goes at once
LINGER_CAUSES = frozenset({"empty", "cgroup-gone", "unit-gone"})


def lingers_after(cause: str) -> bool:
    """Whether a session that ended so leaves its interface's set-up lingering."""
    return cause in LINGER_CAUSES


def unused_fate(state: State, now: float, linger: float,
                starting: str = "") -> tuple[dict[str, float], list[str]]:
    """What becomes of the bindings no session uses: (those kept lingering,
    each with its deadline; those to release now). STARTING: the interface
    that may start lingering now (its last session just ended for one of
    LINGER_CAUSES), for LINGER seconds (0: none does). One whose deadline
    passed goes, and so does one whose deadline lies further ahead than
    LINGER (the clock was set back, the linger shortened): nothing outlives
    the bound."""
    keep: dict[str, float] = {}
    release: list[str] = []
    for iface in state.unused_bindings():
        until = state.lingering.get(iface)
        if until is None and iface == starting and linger > 0:
            until = now + linger
        if until is not None and now < until <= now + linger:    # NaN: released
            keep[iface] = until
        else:
            release.append(iface)
    return keep, release


def to_json(state: State) -> str:
    """The state file: one line per binding and per session. json's C
    encoder does it (an indented dump falls back to pure Python, and
    dataclasses.asdict deep-copies): ~10x faster, which a daemon with a
    thousand sessions feels on every start."""
    def fields(obj: Any) -> dict:
        return vars(obj)       # the fields: these dataclasses have no slots

    def table(items: dict) -> str:
        rows = [f"  {json.dumps(k)}: {json.dumps(fields(v), sort_keys=True)}"
                for k, v in sorted(items.items())]
        return "{\n" + ",\n".join(rows) + "\n }" if rows else "{}"
    lingering = json.dumps(state.lingering, sort_keys=True)
    return (f'{{"version": {STATE_VERSION},\n "bindings": {table(state.bindings)},\n'
            f' "lingering": {lingering},\n'
            f' "sessions": {table(state.sessions)}}}\n')


def from_json(text: str) -> State:
    """Parse a state file; unknown fields are ignored, a bad file is empty."""
    try:
        doc: Any = json.loads(text) if text.strip() else {}
    except (ValueError, RecursionError):    # not JSON; too deep; a huge number
        return State()
    if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
        return State()

    def build(cls, raw: Any) -> Any:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v
                      for k, v in raw.items() if k in names})

    try:
        return State(
            bindings={k: build(Binding, v) for k, v in (doc.get("bindings") or {}).items()},
            sessions={k: build(Session, v) for k, v in (doc.get("sessions") or {}).items()},
            lingering={str(k): float(v) for k, v in (doc.get("lingering") or {}).items()},
        )
    except (AttributeError, TypeError, ValueError):
        return State()
