"""Replacing a file others read (a hooks.d file, a .prom file) atomically."""
from __future__ import annotations

import contextlib
import os
import tempfile


def replace(path: str, text: str, mode: int = 0o644) -> None:
    """Write TEXT to PATH by a rename: readers see the old file or the new
    one, never half of either. The directory must exist."""
    fd, tmp = tempfile.mkstemp(prefix=".netleak-", dir=os.path.dirname(os.path.abspath(path)))
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
