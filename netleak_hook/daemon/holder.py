"""The daemon's state, its saving, and the dirty flag: one holder every role shares."""
from __future__ import annotations

from ..core.state import Session, State

RECENT = 256           # ended sessions kept to name the events still in the ring


class Holder:
    """What the daemon knows of its sessions and bindings (STATE, a value
    replaced on each change), saved through STORE. NETNS is this network
    namespace's cookie, read once at start-up."""

    def __init__(self, store) -> None:
        self.store = store
        self.state = State()
        self.dirty = False              # state changed but not saved yet
        self.netns = 0
        self.recent: dict[int, Session] = {}    # cgroup id -> ended session

    def load(self) -> None:
        self.state = self.store.load()

    def save(self) -> None:
        self.store.save(self.state)
        self.dirty = False

    def save_later(self) -> None:
        """Saved after the reply (or the pass) that made the change."""
        self.dirty = True

    def save_if_dirty(self) -> None:
        if self.dirty:
            self.save()

    def remember_ended(self, s: Session) -> None:
        self.recent[s.cgroup_id] = s
        while len(self.recent) > RECENT:
            self.recent.pop(next(iter(self.recent)))
