"""Replacing a file others read (a hooks.d file, a .prom file) atomically,
in a directory another user may be able to write: the mode is set on the
open descriptor and nothing is ever done by name but the final rename, so
a link swapped in for the temporary file makes root change nothing else."""
from __future__ import annotations

import contextlib
import os
import tempfile


def replace(path: str, text: str, mode: int = 0o644) -> None:
    """Write TEXT to PATH by a rename: readers see the old file or the new
    one, never half of either. The directory must exist."""
    where = os.path.dirname(os.path.abspath(path))
    dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # O_EXCL, a fresh random name: never a file someone else put there
        fd, tmp = tempfile.mkstemp(prefix=".netleak-", dir=where)
        name = os.path.basename(tmp)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fchmod(f.fileno(), mode)
            # the rename replaces whatever has that name (a link too: the
            # link itself, never what it points to)
            os.rename(name, os.path.basename(path), src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
