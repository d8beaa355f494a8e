"""Logs that stay small: the cap, the turn-over, held-back repeats, links."""
from __future__ import annotations

import logging
import os

import pytest

from netleak_hook.rundir import logfile
from netleak_hook.core.errors import NetleakError


def _dir(path) -> int:
    return os.open(str(path), os.O_RDONLY | os.O_DIRECTORY)


def test_capped_file_turns_over_and_stays_under_twice_its_cap(tmp_path):
    f = logfile.CappedFile(_dir(tmp_path), "x.log", 1000)
    for i in range(500):
        f.write(b"%05d %s\n" % (i, b"y" * 40))
    f.close()
    sizes = {n: os.path.getsize(tmp_path / n) for n in os.listdir(tmp_path)}
    assert set(sizes) == {"x.log", "x.log.1"}
    assert all(s <= 1000 for s in sizes.values())
    last = (tmp_path / "x.log").read_bytes().splitlines()[-1]
    assert last.startswith(b"00499")


def test_capped_file_follows_a_turn_over_by_another_writer(tmp_path):
    d = _dir(tmp_path)
    a, b = logfile.CappedFile(d, "x.log", 100), logfile.CappedFile(d, "x.log", 100)
    a.write(b"a" * 60 + b"\n")
    b.write(b"b" * 60 + b"\n")      # turns the file over
    a.write(b"c\n")                 # into the new file, not the moved one
    assert (tmp_path / "x.log").read_bytes() == b"b" * 60 + b"\nc\n"


def test_capped_file_refuses_a_link(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("keep\n")
    (tmp_path / "x.log").symlink_to(victim)
    with pytest.raises(NetleakError, match="symbolic link"):
        logfile.append_capped(_dir(tmp_path), "x.log", b"no\n", 100, str(tmp_path))
    assert victim.read_text() == "keep\n"


def test_new_files_are_root_only(tmp_path):
    logfile.append_capped(_dir(tmp_path), "x.log", b"a\n", 100)
    assert os.stat(tmp_path / "x.log").st_mode & 0o777 == 0o600


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def _records(n: int, msg: str = "relay: %s", level: int = logging.WARNING):
    return [logging.LogRecord("netleak.relay", level, __file__, 1, msg, (i,), None)
            for i in range(n)]


def test_repeats_are_held_back_and_counted():
    clock = Clock()
    f = logfile.RepeatFilter(burst=3, period=60, clock=clock)
    passed = [r for r in _records(1000) if f.filter(r)]
    assert len(passed) == 3
    clock.t += 61
    nxt = _records(1)[0]
    assert f.filter(nxt)
    assert nxt.getMessage() == "relay: 0 [997 more like it suppressed]"


def test_other_kinds_and_info_lines_are_not_held_back():
    f = logfile.RepeatFilter(burst=1, period=60, clock=Clock())
    assert all(f.filter(r) for r in _records(50, "session %s", logging.INFO))
    a, b = _records(1, "one %s")[0], _records(1, "two %s")[0]
    assert f.filter(a) and f.filter(b)
    assert not f.filter(_records(1, "one %s")[0])


def test_the_filter_forgets_when_too_many_kinds():
    f = logfile.RepeatFilter(burst=1, period=60, clock=Clock())
    for i in range(logfile.RepeatFilter.MAX_KINDS + 10):
        f.filter(_records(1, f"kind {i} %s")[0])
    assert len(f.kinds) <= logfile.RepeatFilter.MAX_KINDS


def test_a_write_larger_than_the_cap_keeps_its_newest_lines(tmp_path):
    f = logfile.CappedFile(_dir(tmp_path), "x.log", 100)
    f.write(b"".join(b"%04d %s\n" % (i, b"z" * 20) for i in range(50)))
    f.close()
    sizes = [os.path.getsize(tmp_path / n) for n in ("x.log", "x.log.1")]
    assert all(s <= 100 for s in sizes)
    assert (tmp_path / "x.log").read_bytes().splitlines()[-1].startswith(b"0049")
