"""Tunable values, read from the environment (pure).

A plain class rather than a dataclass: this module is on netleak-exec's
warm path, and importing dataclasses (with inspect) costs ~9 ms there.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~3 ms at import: only for checkers
    from typing import Mapping

from .errors import NetleakError

# Defaults chosen clear of what other tools use: wg-quick (mark/table 51820),
# Tailscale (mark 0x80000/0xff0000, table 52, rules 5210-5310), Mullvad
# (mark 0x6d6f6c65, table 1836018789), systemd-networkd and NetworkManager
# (small table numbers, rules at 0/32766/32767).
DEFAULT_MARK_BASE = 0x6E6C0000      # "nl" in the high half; slot in the low half
DEFAULT_TABLE_BASE = 28200
DEFAULT_RULE_PRIORITY = 1700        # before main (32766) and before Tailscale
DEFAULT_MAX_INTERFACES = 64
# proxy mode's relay: TCP and DNS on this port, refused DNS on the next; below
# 1024 so no unprivileged program can take them while the daemon is away
# (1021-1022: RFC 4727's experiment ports)
DEFAULT_RELAY_PORT = 1021
# how long an interface's set-up (rules, table routes) is kept once its last
# session ended, for the next command on it to start without making it anew
DEFAULT_LINGER_SECONDS = 5.0
MAX_LINGER_SECONDS = 3600.0

# (environment variable, attribute, kind: "str", "int", "float" or "bool")
_ENV = (
    ("NETLEAK_RUN_DIR", "run_dir", "str"),
    ("NETLEAK_BPF_DIR", "bpf_dir", "str"),
    ("NETLEAK_CGROUP_PARENT", "cgroup_parent", "str"),
    ("NETLEAK_MARK_BASE", "mark_base", "int"),
    ("NETLEAK_TABLE_BASE", "table_base", "int"),
    ("NETLEAK_RULE_PRIORITY", "rule_priority", "int"),
    ("NETLEAK_LOG_FILE", "log_file", "str"),
    ("NETLEAK_RECONCILE_SECONDS", "reconcile_seconds", "float"),
    ("NETLEAK_AUTOSTART", "autostart", "bool"),
    ("NETLEAK_EVENT_RATE", "event_rate", "int"),
    ("NETLEAK_RELAY_PORT", "relay_port", "int"),
    ("NETLEAK_LINGER_SECONDS", "linger_seconds", "float"),
)


# every variable netleak reads, for those who pass the settings on
VARIABLES = tuple(name for name, _, _ in _ENV)


class Config:
    """Everything an operator may tune; see README "Configuration"."""

    __slots__ = ("run_dir", "bpf_dir", "cgroup_parent", "mark_base", "table_base",
                 "rule_priority", "max_interfaces", "log_file", "reconcile_seconds", "autostart",
                 "event_rate", "relay_port", "linger_seconds")

    def __init__(self, run_dir: str | None = None, bpf_dir: str = "/sys/fs/bpf/netleak",
                 cgroup_parent: str = "netleak", mark_base: int = DEFAULT_MARK_BASE,
                 table_base: int = DEFAULT_TABLE_BASE,
                 rule_priority: int = DEFAULT_RULE_PRIORITY,
                 max_interfaces: int = DEFAULT_MAX_INTERFACES,
                 log_file: str | None = None, reconcile_seconds: float = 1.0,
                 autostart: bool = True, event_rate: int = 50,
                 relay_port: int = DEFAULT_RELAY_PORT,
                 linger_seconds: float = DEFAULT_LINGER_SECONDS) -> None:
        self.run_dir = run_dir            # None: /run/netleak/net-<netns inode>
        self.bpf_dir = bpf_dir
        self.cgroup_parent = cgroup_parent  # under the cgroup2 mount
        self.mark_base = mark_base
        self.table_base = table_base
        self.rule_priority = rule_priority
        self.max_interfaces = max_interfaces
        self.log_file = log_file          # None: <run dir>/daemon.log
        # the daemon's full pass (every session, every binding, orphan
        # cgroups) behind the event-driven work, in case an event was missed
        self.reconcile_seconds = reconcile_seconds
        # netleak-exec and netleak-hook start a daemon when none answers
        self.autostart = autostart
        # blocked-attempt events per session and second (0: none); the
        # rest are counted as suppressed
        self.event_rate = event_rate
        self.relay_port = relay_port
        # an interface no session uses any more keeps its rules and routes
        # this long (0: removed at once)
        self.linger_seconds = linger_seconds

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"Config({fields})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Config) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> "Config":
        """Read NETLEAK_* variables; bad values raise NetleakError."""
        kw: dict = {}
        for name, attr, kind in _ENV:
            raw = env.get(name)
            if raw is None or raw == "":
                continue
            if kind == "bool":
                if raw not in ("0", "1"):
                    raise NetleakError(f"{name}={raw!r} must be 1 or 0")
                kw[attr] = raw == "1"
                continue
            try:
                kw[attr] = (int(raw, 0) if kind == "int" else
                            float(raw) if kind == "float" else raw)
            except ValueError:
                what = "an integer (0x... allowed)" if kind == "int" else "a number"
                raise NetleakError(
                    f"{name}={raw!r} is not a number: set it to {what} "
                    f"or unset it") from None
        cfg = cls(**kw)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.mark_base & 0xFFFF or not 0 < self.mark_base <= 0xFFFF0000:
            raise NetleakError(
                f"NETLEAK_MARK_BASE={self.mark_base:#x} must have its low 16 bits "
                f"clear (e.g. 0x6e6c0000)")
        if not 256 <= self.table_base <= 0xFFFFFFFF - self.max_interfaces:
            raise NetleakError(
                f"NETLEAK_TABLE_BASE={self.table_base} must be between 256 and "
                f"{0xFFFFFFFF - self.max_interfaces} (0-255 are the kernel's)")
        if not 1 <= self.rule_priority <= 32000:
            raise NetleakError(
                f"NETLEAK_RULE_PRIORITY={self.rule_priority} must be between 1 and "
                f"32000, before the main table's rule")
        if not 0.1 <= self.reconcile_seconds <= 86400:
            raise NetleakError(
                f"NETLEAK_RECONCILE_SECONDS={self.reconcile_seconds:g} must be "
                f"between 0.1 and 86400")
        if not 0 <= self.event_rate <= 100000:
            raise NetleakError(
                f"NETLEAK_EVENT_RATE={self.event_rate} must be between 0 (no events) "
                f"and 100000 per second")
        if not 1 <= self.relay_port <= 1022:
            raise NetleakError(
                f"NETLEAK_RELAY_PORT={self.relay_port} must be between 1 and 1022 (it and "
                f"the next port, privileged ones, serve proxy mode's relay)")
        if not 0 <= self.linger_seconds <= MAX_LINGER_SECONDS:
            raise NetleakError(
                f"NETLEAK_LINGER_SECONDS={self.linger_seconds:g} must be between 0 (an "
                f"interface's set-up goes with its last session) and {MAX_LINGER_SECONDS:g}")
        rel = self.cgroup_parent.strip("/")
        if not rel or {".", ".."} & set(rel.split("/")):
            raise NetleakError(
                f"NETLEAK_CGROUP_PARENT={self.cgroup_parent!r} must be a relative "
                f"cgroup path such as 'netleak'")
