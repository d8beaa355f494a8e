"""Helpers shared by the unit and the privileged tests: pure, no fixtures,
nothing that needs root to import."""
from __future__ import annotations

from netleak_hook.core.state import Session


def make_session(**overrides) -> Session:
    """A Session with test defaults: session "s1" on wg0, in the cgroup
    netleak/exec-<id> (unless CGROUP is given), cgroup id 1, pin set "/p";
    OVERRIDES set any field."""
    fields = {"id": "s1", "iface": "wg0", "cgroup_id": 1, "pinset": "/p", **overrides}
    fields.setdefault("cgroup", f"netleak/exec-{fields['id']}")
    return Session(**fields)
