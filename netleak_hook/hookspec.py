"""The hooks.d file podman and CRI-O read (OCI hooks schema 1.0.0), and the
self-contained hook the node agent gives the host.

hooks/netleak.json in the source tree is spec(DEFAULT_PATH); `netleak
install-hook` writes the same with the installed hook's path filled in.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import zipapp

from .rundir import files
from .core.config import VARIABLES
from .core.oci import ANNOTATION_IFACE, ANNOTATION_PROXY

FILE_NAME = "netleak.json"
DEFAULT_HOOKS_DIR = "/usr/share/containers/oci/hooks.d"
DEFAULT_PATH = "/usr/local/bin/netleak-hook"
ZIPAPP_NAME = "netleak-hook.pyz"
# createRuntime: the container's process exists in its cgroup and has not run
# its first instruction (runc, crun and CRI-O run it; podman passes it on).
# poststop: a hint to the reaper, which needs none.
STAGES = ("createRuntime", "poststop")
TIMEOUT = 30


def spec(path: str, args: list[str] | None = None,
         env: dict[str, str] | None = None) -> dict:
    """The hooks.d document running PATH with ARGS (argv[0] first) and ENV."""
    hook: dict = {"path": path, "args": args or [os.path.basename(path)],
                  "timeout": TIMEOUT}
    if env:
        hook["env"] = [f"{k}={v}" for k, v in sorted(env.items())]
    # either annotation, in one pattern (the patterns of several keys would
    # all have to match)
    names = "|".join(re.escape(a) for a in (ANNOTATION_IFACE, ANNOTATION_PROXY))
    pattern = f"^({names})$"
    return {"version": "1.0.0", "hook": hook,
            "when": {"annotations": {pattern: ".*"}}, "stages": list(STAGES)}


def passed_on(environ: dict[str, str]) -> dict[str, str]:
    """The NETLEAK_* settings of ENVIRON the hook (and a daemon it starts)
    must see too."""
    return {k: environ[k] for k in VARIABLES if environ.get(k)}


def render(doc: dict) -> str:
    return json.dumps(doc, indent=2) + "\n"


def write(hooks_dir: str, doc: dict) -> str:
    """Write DOC as HOOKS_DIR/netleak.json, atomically; returns the path."""
    os.makedirs(hooks_dir, exist_ok=True)
    target = os.path.join(hooks_dir, FILE_NAME)
    files.replace(target, render(doc))
    return target


def build_zipapp(target: str) -> None:
    """netleak-hook as one file that any python3 (3.9+) runs with its
    standard library alone: the hook imports neither BCC, pyroute2 nor click.
    Written as files.replace writes (a fresh file, its mode set on the
    descriptor, then renamed): the directory may be one others can write."""
    pkg = os.path.dirname(os.path.abspath(__file__))
    with tempfile.TemporaryDirectory() as tmp:
        shutil.copytree(pkg, os.path.join(tmp, "netleak_hook"),
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        where = os.path.dirname(os.path.abspath(target))
        fd, part = tempfile.mkstemp(prefix=".netleak-hook-", dir=where)
        try:
            with os.fdopen(fd, "wb") as f:
                zipapp.create_archive(tmp, f, interpreter="/usr/bin/env python3",
                                      main="netleak_hook.hook:main")
                f.flush()
                os.fchmod(f.fileno(), 0o755)
            os.rename(part, target)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(part)
            raise
