"""When a session is over, and what a crash left behind (pure).

Light on imports: netleak-exec names its cgroup with this module.
"""
from __future__ import annotations

import os

TYPE_CHECKING = False
if TYPE_CHECKING:  # dataclasses (via state) stay off netleak-exec's path
    from .state import Session

SETUP_GRACE = 30.0   # seconds an uncommitted session may stay empty
EXEC_PREFIX = "exec-"


def new_session_id() -> str:
    """Ten hex digits, random: a session's id (and its cgroup's name)."""
    return os.urandom(5).hex()


def should_reap(s: Session, populated: bool | None, requester_alive: bool,
                now: float) -> bool:
    """True when the session's cgroup will see no more of its workload.

    populated is None when the cgroup is gone. A committed session (its
    cgroup has held the workload) ends when the cgroup is empty. Before
    that, a cgroup netleak made is still being set up: it is rolled back only
    if its requester died or the set-up took far too long (a crash
    mid-setup). A cgroup the user attached may be empty on purpose (made
    ready before its processes start): it stays until it empties after use
    or disappears.
    """
    if s.pinned:
        return False    # a unit pinned by name: it may be restarting (see unit_gone)
    if populated is None:
        return True
    if populated:
        return False
    if s.committed:
        return True
    if not s.owned:
        return False
    return not requester_alive or now - s.created > SETUP_GRACE


def reap_cause(s: Session, populated: bool | None) -> str:
    """Why a session should_reap chose ends, for the daemon's log."""
    if populated is None:
        return "cgroup-gone"
    return "empty" if s.committed else "setup-abandoned"


UNIT_SUFFIXES = (".scope", ".service")


def own_unit_cgroup(rel: str, procs: list[int], pid: int, systemd: bool,
                    delegated: bool) -> str | None:
    """The cgroup netleak-exec (process PID, in cgroup REL with PROCS) takes
    as its session's: on a systemd host, the unit it runs in alone
    (`systemd-run --scope netleak-exec ...`, a service whose command it is),
    so the workload stays in that unit. None: a cgroup of netleak's own is
    made, as on hosts without systemd, and where REL is shared (a login
    shell's scope) or lies in a subtree a user may rearrange (DELEGATED)."""
    name = rel.rpartition("/")[2]
    if not systemd or delegated or not name.endswith(UNIT_SUFFIXES):
        return None
    return rel if procs == [pid] else None


def exec_cgroup_name(sid: str, pid: int) -> str:
    """Name of the cgroup netleak-exec makes: the creator's PID in it lets a
    crash's leftovers be told from a set-up in progress."""
    return f"{EXEC_PREFIX}{sid}-{pid}"


def exec_cgroup_creator(name: str) -> int | None:
    """The creator's PID from an exec cgroup name; None if not one of ours."""
    if not name.startswith(EXEC_PREFIX):
        return None
    sid, _, pid = name[len(EXEC_PREFIX):].rpartition("-")
    if not (sid.isascii() and sid.isalnum()) or not (pid.isdigit() and pid[0] != "0"):
        return None
    return int(pid)


def orphan_cgroup_removable(name: str, claimed: bool, populated: bool | None,
                            creator_alive: bool, age: float) -> bool:
    """Whether a child of the cgroup parent is a netleak-exec leftover that
    no session claims and nothing uses: its creator died before handing it
    to the daemon, or the set-up has taken far too long."""
    if claimed or populated is not False or exec_cgroup_creator(name) is None:
        return False
    return not creator_alive or age > SETUP_GRACE


def merge_reports(earlier: dict, later: dict) -> dict:
    """Two gc reports as one: lists joined, counts added, the later's
    snapshot values (sessions) kept."""
    out = dict(later)
    for k, v in earlier.items():
        if k == "sessions" or k not in later:
            out.setdefault(k, v)
        elif isinstance(v, list):
            out[k] = v + later[k]
        elif isinstance(v, int):
            out[k] = v + later[k]
    return out
