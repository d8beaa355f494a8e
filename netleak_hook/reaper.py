"""When a session is over (pure)."""
from __future__ import annotations

from .state import Session

SETUP_GRACE = 30.0   # seconds an uncommitted session may stay empty


def should_reap(s: Session, populated: bool | None, requester_alive: bool,
                now: float) -> bool:
    """True when the session's cgroup will see no more of its workload.

    populated is None when the cgroup is gone. A session not yet committed
    is still being set up: it is reaped only if its requester died or the
    set-up has taken far too long (a crash mid-setup).
    """
    if populated is None:
        return True
    if populated:
        return False
    if s.committed:
        return True
    return not requester_alive or now - s.created > SETUP_GRACE
