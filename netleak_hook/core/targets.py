"""Which existing cgroup the user means: --cgroup PATH, --pid PID or
--unit UNIT (pure, with the outside world passed in)."""
from __future__ import annotations

import os
import re
import subprocess
from typing import Callable

from .errors import NetleakError

UNIT_SUFFIXES = (".service", ".scope", ".slice", ".socket", ".mount", ".swap")
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.\\@-]+$")


def cgroup_rel(path: str, mount: str) -> str:
    """A cgroup path as the user wrote it -> path relative to the cgroup2
    mount ('' is the root cgroup). Accepts the full filesystem path, or a
    path as systemd and /proc/PID/cgroup print it ('/system.slice/x')."""
    if not path or "\0" in path:
        raise NetleakError("empty cgroup path: give e.g. --cgroup /system.slice/foo.service")
    if any(part == ".." for part in path.split("/")):
        raise NetleakError(f"cgroup path {path!r} contains '..': give it without")
    norm = os.path.normpath(path)
    mount = os.path.normpath(mount)
    if norm == mount:
        return ""
    if norm.startswith(mount + "/"):
        norm = norm[len(mount):]
    elif norm.startswith("/sys/fs/cgroup"):
        raise NetleakError(f"{path!r} is not under the cgroup v2 mount {mount}: give a "
                           f"path below it, or one relative to it")
    return "" if norm in (".", "/") else norm.strip("/")


def unit_name(name: str) -> str:
    """A systemd unit name, '.service' added when no type is given (as
    systemctl does)."""
    if not name or len(name) > 255 or not _UNIT_RE.fullmatch(name):
        raise NetleakError(f"{name!r} is not a systemd unit name: give e.g. "
                           f"--unit myjob.scope or --unit nginx.service")
    return name if name.endswith(UNIT_SUFFIXES) else name + ".service"


Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


def _run(argv: list[str]) -> "subprocess.CompletedProcess[str]":
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def unit_cgroup(name: str, run: Runner = _run) -> str:
    """The cgroup of a running unit, as systemd reports it."""
    unit = unit_name(name)
    try:
        r = run(["systemctl", "show", "--property=ControlGroup", "--value", unit])
    except FileNotFoundError:
        raise NetleakError("systemctl not found: --unit needs systemd; give --cgroup "
                           "PATH or --pid PID instead") from None
    except subprocess.TimeoutExpired:
        raise NetleakError("systemctl did not answer within 10s: give --cgroup PATH "
                           "or --pid PID instead") from None
    if r.returncode != 0:
        why = (r.stderr.strip().splitlines() or ["no reason given"])[0]
        raise NetleakError(f"systemd cannot tell the cgroup of {unit} ({why}): give "
                           f"--cgroup PATH or --pid PID instead")
    cg = r.stdout.strip()
    if not cg:
        raise NetleakError(f"{unit} is not running (systemd gives it no cgroup): start "
                           f"it first")
    return cg


def pid_cgroup(pid: int, read: Callable[[str], str]) -> str:
    """The cgroup v2 path of a process, from /proc/PID/cgroup."""
    if pid <= 0:
        raise NetleakError(f"--pid {pid}: give the PID of a running process")
    try:
        text = read(f"/proc/{pid}/cgroup")
    except (FileNotFoundError, ProcessLookupError):
        raise NetleakError(f"no process {pid}: give the PID of a running process") from None
    except OSError as e:
        raise NetleakError(f"cannot read the cgroup of process {pid} ({e.strerror}): "
                           f"run as root") from None
    for line in text.split("\n"):     # as the kernel writes it; a name may hold U+2028
        hier, _, rest = line.partition(":")
        ctrl, _, path = rest.partition(":")
        if hier == "0" and ctrl == "":
            return path
    raise NetleakError(f"process {pid} is in no cgroup v2: is cgroup v2 mounted?")


def resolve(mount: str, *, cgroup: str | None = None, pid: int | None = None,
            unit: str | None = None, run: Runner = _run,
            read: Callable[[str], str] | None = None) -> str:
    """Exactly one of cgroup, pid, unit -> path relative to the mount."""
    given = [x for x in (cgroup, pid, unit) if x is not None]
    if len(given) != 1:
        raise NetleakError("give exactly one of --cgroup PATH, --pid PID, --unit UNIT")
    if pid is not None:
        path = pid_cgroup(pid, read or _read)
    elif unit is not None:
        path = unit_cgroup(unit, run)
    else:
        assert cgroup is not None
        path = cgroup
    return cgroup_rel(path, mount)


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()
