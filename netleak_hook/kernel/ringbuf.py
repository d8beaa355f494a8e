"""Reading a BPF ring buffer from Python (thin: mmap and two counters).

The kernel's layout (kernel/bpf/ringbuf.c): one read-write page holding the
consumer position, then one read-only page holding the producer position,
then the data, mapped twice in a row so a record that wraps reads as one.
Each record starts with an 8-byte header: its length, with a busy bit (the
producer has not committed it yet) and a discard bit, and a page offset.

BCC reads rings only of programs it compiled itself; these rings outlive
the reader (a daemon restarted after a crash drains what its predecessor
left), so netleak opens them by fd.
"""
from __future__ import annotations

import mmap
import os
import struct
from typing import Iterator

BUSY = 1 << 31
DISCARD = 1 << 30
HEADER = 8
_POS = struct.Struct("<Q")
_HDR = struct.Struct("<I")


class RingReader:
    """Consumer of one ring buffer map (fd kept open by the caller)."""

    def __init__(self, fd: int, size: int) -> None:
        page = mmap.PAGESIZE
        if size <= 0 or size % page or size & (size - 1):
            raise ValueError(f"ring size {size} is not a power-of-two number of pages")
        self.fd = fd
        self.size = size
        self.mask = size - 1
        self._cons = mmap.mmap(fd, page, mmap.MAP_SHARED,
                               mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        self._prod = mmap.mmap(fd, page + 2 * size, mmap.MAP_SHARED, mmap.PROT_READ,
                               offset=page)
        self._data = page      # offset of the data in _prod

    def fileno(self) -> int:
        return self.fd

    def records(self, limit: int = 4096) -> Iterator[bytes]:
        """Committed records, oldest first, each consumed once yielded."""
        cons = _POS.unpack_from(self._cons, 0)[0]
        for _ in range(limit):
            prod = _POS.unpack_from(self._prod, 0)[0]
            if cons >= prod:
                break
            off = self._data + (cons & self.mask)
            length = _HDR.unpack_from(self._prod, off)[0]
            if length & BUSY:
                break          # not committed yet: the next wake-up brings it
            n = length & ~(BUSY | DISCARD)
            record = None if length & DISCARD else self._prod[off + HEADER: off + HEADER + n]
            cons += (n + HEADER + 7) & ~7
            _POS.pack_into(self._cons, 0, cons)
            if record is not None:
                yield record

    def close(self) -> None:
        for m in (self._cons, self._prod):
            m.close()


def ring_size(pages: int) -> int:
    return pages * os.sysconf("SC_PAGE_SIZE")
