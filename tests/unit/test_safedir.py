"""Which directories netleak trusts with its state (pure decisions)."""
from __future__ import annotations

import os
import stat

import pytest

from netleak_hook.rundir import safedir


def st(mode: int, uid: int = 0) -> os.stat_result:
    return os.stat_result((mode, 1, 1, 1, uid, 0, 0, 0, 0, 0))


D = stat.S_IFDIR


@pytest.mark.parametrize("mode,uid,leaf,why", [
    (D | 0o700, 0, True, None),
    (D | 0o755, 0, True, None),
    (D | 0o755, 0, False, None),
    (D | 0o1777, 0, False, None),                           # /tmp, as a parent
    (D | 0o1777, 0, True, "may be written by its group and others (mode 1777)"),
    (D | 0o777, 0, False, "may be written by its group and others (mode 0777)"),
    (D | 0o702, 0, True, "may be written by others (mode 0702)"),
    (D | 0o770, 0, False, "may be written by its group (mode 0770)"),
    (D | 0o700, 1000, True, "belongs to uid 1000, not root"),
    (D | 0o1777, 1000, False, "belongs to uid 1000, not root"),  # a user's sticky dir
    (stat.S_IFLNK | 0o777, 0, True, "is a symbolic link"),
    (stat.S_IFREG | 0o600, 0, True, "is not a directory"),
])
def test_problem(mode, uid, leaf, why):
    assert safedir.problem(st(mode, uid), leaf) == why


def test_refusals_are_one_line_and_say_what_to_do(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("the real walk needs the files to be root's")
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    from netleak_hook.core.errors import NetleakError
    with pytest.raises(NetleakError) as e:
        safedir.open_dir(str(d / "run"), "run directory", "set NETLEAK_RUN_DIR", create=True)
    assert "\n" not in e.value.message
    assert e.value.message.endswith("set NETLEAK_RUN_DIR")
    assert not (d / "run").exists()         # nothing made below a directory refused
