"""The event log the daemon keeps in its run directory (events.jsonl, turned
over into events.jsonl.1), and its reading for `netleak events`."""
from __future__ import annotations

import json
import os
import time
from typing import Callable, Iterator

from .logfile import CappedFile

LOG_NAME = "events.jsonl"
LOG_MAX_BYTES = 1 << 20     # then the log turns over into events.jsonl.1


class EventLog:
    """Append-only JSON lines in the run directory (by its descriptor, never
    through a link), turned over at LOG_MAX_BYTES into one older file."""

    def __init__(self, dir_fd: int, where: str = "", max_bytes: int = LOG_MAX_BYTES) -> None:
        self.path = os.path.join(where, LOG_NAME)
        self.file = CappedFile(dir_fd, LOG_NAME, max_bytes, where)

    def append(self, events: list[dict]) -> None:
        if not events:
            return
        self.file.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode())

    def close(self) -> None:
        self.file.close()


def _parse(lines: list[bytes]) -> Iterator[dict]:
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue        # a line cut by a crash
        if isinstance(ev, dict) and "reason" in ev and "ts" in ev:
            yield ev


def recorded(run_dir: str) -> list[dict]:
    """Every event still in the log, oldest first."""
    out: list[dict] = []
    for name in (LOG_NAME + ".1", LOG_NAME):
        try:
            with open(os.path.join(run_dir, name), "rb") as f:
                out.extend(_parse(f.read().splitlines()))
        except FileNotFoundError:
            pass
    return out


def follow(run_dir: str, emit: Callable[[dict], None], stop: Callable[[], bool],
           poll: float = 0.1) -> None:
    """Call EMIT for each event appended from now on, across turn-overs,
    until STOP() says so."""
    path = os.path.join(run_dir, LOG_NAME)
    f = None
    partial = b""

    def reopen(at_end: bool):
        try:
            g = open(path, "rb")
        except FileNotFoundError:
            return None
        if at_end:
            g.seek(0, os.SEEK_END)
        return g

    def take(chunk: bytes) -> None:
        nonlocal partial
        *done, partial = (partial + chunk).split(b"\n")
        for ev in _parse(done):
            emit(ev)

    f = reopen(at_end=True)
    try:
        while not stop():
            chunk = f.read() if f else b""
            if chunk:
                take(chunk)
                continue
            # at the end of the file we hold: has the log turned over?
            try:
                st = os.stat(path)
                moved = f is None or (st.st_dev, st.st_ino) != (
                    os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
            except FileNotFoundError:
                moved = False
            if moved:
                if f:       # what was appended just before the turn-over
                    take(f.read())
                    f.close()
                f, partial = reopen(at_end=False), b""
                continue
            time.sleep(poll)
    finally:
        if f:
            f.close()
