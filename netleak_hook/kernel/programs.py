"""Pinned BPF programs and maps, opened: attached to and detached from
cgroups, maps read and written.

Everything here is bpf(2) through `bpfsys`, so the warm path needs neither
BCC nor LLVM; compiling and pinning is `pinning`'s part, whose names are
importable from here too.
"""
from __future__ import annotations

import contextlib
import errno
import os

from ..core.errors import NetleakError
from . import bpfsys
from .pinning import (
    BASE_PINS, BPF_FS_MAGIC, BPF_SRC_DIR, LEVELS, MAPS, OWN_PROGRAMS, PIN_FIX, PINS,
    PROGRAMS, RING_PAGES, SOURCES, TYPED, Pinset, _compile_main, cflags, compile_and_pin,
    ensure_bpffs, ensure_pinned, pinset_name, remove_pins, render_source, source_text)

# pinning's names stay importable from here, as before the two were apart
__all__ = [
    "BASE_PINS", "BPF_FS_MAGIC", "BPF_SRC_DIR", "LEGACY", "LEVELS", "MAPS", "Maps",
    "OWN_PROGRAMS", "PIN_FIX", "PINS", "PROGRAMS", "Pinset", "Programs", "RING_PAGES",
    "SOURCES", "TYPED", "cflags", "compile_and_pin", "ensure_bpffs", "ensure_pinned",
    "pinset_name", "remove_pins", "render_source", "source_text"]

# programs an earlier version pinned and attached that this one has not:
# detached all the same (a cgroup netleak releases keeps none of them)
LEGACY = (("prog_sockops", bpfsys.BPF_CGROUP_SOCK_OPS),)


class Programs:
    """Open program fds of a pin set, for attaching and detaching."""

    HOOKS = tuple((f"prog_{name}", atype) for name, _, atype in PROGRAMS)

    def __init__(self, pins: Pinset) -> None:
        self.pins = pins
        self.fds: dict[str, int] = {}
        # an older version's pin set has other programs: those it has
        self.hooks = tuple((n, t) for n, t in self.HOOKS + LEGACY
                           if n in BASE_PINS or os.path.exists(pins.pin(n)))
        try:
            for name, _ in self.hooks:
                self.fds[name] = bpfsys.obj_get(pins.pin(name))
        except OSError as e:
            self.close()
            raise NetleakError(
                f"cannot open pinned programs in {pins.path}: {e.strerror}; "
                f"run 'netleak gc' and retry") from None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def attached(self, cgroup_fd: int, name: str, attach_type: int) -> bool:
        mine = bpfsys.prog_id(self.fds[name])
        return mine in bpfsys.prog_query(cgroup_fd, attach_type)

    def attach(self, cgroup_path: str) -> None:
        """Attach both programs (ALLOW_MULTI: others' programs stay)."""
        cfd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, atype in self.hooks:
                try:
                    bpfsys.prog_attach(self.fds[name], cfd, atype)
                except OSError as e:
                    # the same program attached twice is EINVAL/EEXIST
                    if e.errno in (errno.EINVAL, errno.EEXIST) and self.attached(cfd, name, atype):
                        continue
                    if e.errno == errno.EPERM:
                        raise NetleakError(
                            f"another tool holds {cgroup_path} or one of its parents "
                            f"exclusively (a BPF program attached without "
                            f"BPF_F_ALLOW_MULTI; 'bpftool cgroup tree' shows it): netleak "
                            f"cannot add its own; have that tool attach with "
                            f"BPF_F_ALLOW_MULTI") from None
                    raise NetleakError(
                        f"cannot attach {name} to {cgroup_path}: {e.strerror}") from None
        finally:
            os.close(cfd)

    def detach(self, cgroup_path: str) -> None:
        """Detach ours; 'not attached' and 'cgroup gone' count as done.

        Only when ours is attached: on a cgroup another tool holds without
        ALLOW_MULTI, the kernel's detach removes whatever program is there.
        """
        try:
            cfd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            for name, atype in self.hooks:
                if not self.attached(cfd, name, atype):
                    continue
                try:
                    bpfsys.prog_detach(self.fds[name], cfd, atype)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.EINVAL):
                        raise
        finally:
            os.close(cfd)


class Maps:
    """Open map fds of a pin set."""

    def __init__(self, pins: Pinset) -> None:
        self.pins = pins
        self.policy = bpfsys.obj_get(pins.pin("map_policy"))
        self.stats = bpfsys.obj_get(pins.pin("map_stats"))
        # an older version's pin set has no rings and shorter counters
        self.rings = (bpfsys.obj_get(pins.pin("map_rings"))
                      if os.path.exists(pins.pin("map_rings")) else -1)
        self.redirect = (bpfsys.obj_get(pins.pin("map_redirect"))
                         if os.path.exists(pins.pin("map_redirect")) else -1)
        self.redirect_n = (bpfsys.obj_get(pins.pin("map_redirect_n"))
                           if os.path.exists(pins.pin("map_redirect_n")) else -1)
        self.locals = (bpfsys.obj_get(pins.pin("map_locals"))
                       if os.path.exists(pins.pin("map_locals")) else -1)
        # an older version's pin set counts by cgroup id only
        self.counters = (bpfsys.obj_get(pins.pin("map_counters"))
                         if os.path.exists(pins.pin("map_counters")) else -1)
        self.slots = (bpfsys.obj_get(pins.pin("map_slots"))
                      if self.counters >= 0 and os.path.exists(pins.pin("map_slots")) else -1)
        # socket storage of each UDP socket of a session (netleak connections)
        self.flows = (bpfsys.obj_get(pins.pin("map_flows"))
                      if os.path.exists(pins.pin("map_flows")) else -1)
        self.stats_size = bpfsys.map_value_size(self.stats)
        self.ncpus = bpfsys.possible_cpus()

    def close(self) -> None:
        for fd in (self.policy, self.stats, self.rings, self.redirect, self.redirect_n,
                   self.locals, self.counters, self.slots, self.flows):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def read_stats(self, cgroup_id: int, slot: int = 0):
        """The counters of the session of CGROUP_ID and SLOT, summed over
        CPUs (policy.Stats): its slot's, plus what was counted under its
        cgroup id (verdicts with no policy entry); zeros when none yet."""
        from ..core.policy import Stats, pack_key, pack_slot
        size = self.stats_size * self.ncpus
        total = Stats()
        raw = bpfsys.map_lookup(self.stats, pack_key(cgroup_id), size)
        if raw:
            total = Stats.unpack_percpu(raw, self.ncpus, self.stats_size)
        if slot and self.counters >= 0:
            raw = bpfsys.map_lookup(self.counters, pack_slot(slot), size)
            if raw:
                total = total + Stats.unpack_percpu(raw, self.ncpus, self.stats_size)
        return total

    def claim_slot(self, cgroup_id: int, used, netns: int = 0) -> int:
        """A slot of the map `counters` for the session of CGROUP_ID, its
        counters zeroed, held in the name of the daemon of NETNS; 0 when
        every one is taken (or this pin set has none): the session is then
        counted by cgroup id. USED: slots known taken. The kernel arbitrates
        (BPF_NOEXIST) between daemons."""
        from ..core.policy import SLOT_OWNER, free_slots, pack_slot
        if self.slots < 0:
            return 0
        owner = SLOT_OWNER.pack(cgroup_id, netns)
        for slot in free_slots(used):
            try:
                bpfsys.map_update(self.slots, pack_slot(slot), owner, bpfsys.BPF_NOEXIST)
            except OSError as e:
                if e.errno == errno.EEXIST:
                    continue
                if e.errno == errno.E2BIG:      # the map is full
                    return 0
                raise
            try:
                self.zero_slot(slot)
            except OSError:
                self.release_slot(slot, cgroup_id, netns)
                raise
            return slot
        return 0

    def slot_owner(self, slot: int) -> tuple[int, int] | None:
        """(cgroup id, netns cookie) holding SLOT; None when it is free."""
        from ..core.policy import SLOT_OWNER, pack_slot
        raw = bpfsys.map_lookup(self.slots, pack_slot(slot), SLOT_OWNER.size)
        return SLOT_OWNER.unpack(raw) if raw is not None else None

    def zero_slot(self, slot: int) -> None:
        from ..core.policy import pack_slot
        bpfsys.map_update(self.counters, pack_slot(slot), bytes(self.stats_size * self.ncpus))

    def move_slot(self, slot: int, old: int, new: int, netns: int) -> bool:
        """SLOT is now held by cgroup NEW (a pinned unit's new cgroup), if
        OLD of NETNS held it; False when it did not (it was given back)."""
        from ..core.policy import SLOT_OWNER, pack_slot
        if not slot or self.slots < 0 or self.slot_owner(slot) != (old, netns):
            return False
        bpfsys.map_update(self.slots, pack_slot(slot), SLOT_OWNER.pack(new, netns))
        return True

    def release_slot(self, slot: int, cgroup_id: int, netns: int) -> None:
        """Give SLOT back if CGROUP_ID of NETNS holds it ("already free",
        or another's now, is done)."""
        from ..core.policy import pack_slot
        if slot and self.slots >= 0 and self.slot_owner(slot) == (cgroup_id, netns):
            bpfsys.map_delete(self.slots, pack_slot(slot))

    def open_ring(self, netns: int) -> int:
        """The event ring of network namespace NETNS (a cookie), created and
        registered when there is none yet; a ring left by a reader that
        died is reused, with what it holds. Returns an fd."""
        if self.rings < 0:
            raise OSError(errno.ENOENT, "this pin set has no event rings")
        key = netns.to_bytes(8, "little")
        raw = bpfsys.map_lookup(self.rings, key, 4)
        if raw is not None:
            with contextlib.suppress(OSError):
                return bpfsys.map_fd_by_id(int.from_bytes(raw, "little"))
        from .ringbuf import ring_size
        fd = bpfsys.ringbuf_create(ring_size(RING_PAGES), b"netleak_events")
        try:
            bpfsys.map_update(self.rings, key, fd.to_bytes(4, "little"))
        except OSError:
            os.close(fd)
            raise
        return fd

    def close_ring(self, netns: int) -> None:
        """Unregister NETNS's ring: events of its sessions are then counted
        as lost until a reader registers again."""
        if self.rings >= 0:
            with contextlib.suppress(OSError):
                bpfsys.map_delete(self.rings, netns.to_bytes(8, "little"))


if __name__ == "__main__":
    import sys
    sys.exit(_compile_main(sys.argv[1:]))
