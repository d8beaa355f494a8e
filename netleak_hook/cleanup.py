"""`netleak cleanup`: remove what netleak keeps on this machine between
sessions, once none runs (what a package's removal runs, and what an admin
runs before taking netleak off by hand).

Between sessions netleak keeps: a daemon per network namespace that has
had one (on demand it exits after a minute without sessions), the pinned
programs and maps (so the next start needs no compile), the run
directories, its parent cgroup, and an interface's rules and routes for
NETLEAK_LINGER_SECONDS after its last session. All of it goes: this
namespace's leftovers are collected first (`netleak gc`, by its daemon),
every daemon is stopped (a clean stop gives lingering rules back), then
the pins, the run directories and the parent cgroup are removed. Refused
while any namespace has a session (a pinned service counts): ending them
is the user's call, and their kill switch needs the pins' programs.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from .core.errors import NetleakError
from .kernel.systemd import SLICE

SERVICE = "netleak-daemon.service"
STOP_SECONDS = 15.0    # a clean stop gives lingering rules back


def run_dirs(root: str, configured: str | None) -> list[str]:
    """Every namespace's run directory under ROOT (net-*), and CONFIGURED
    (NETLEAK_RUN_DIR) when set."""
    found = []
    try:
        found = sorted(os.path.join(root, n) for n in os.listdir(root) if n.startswith("net-"))
    except OSError:
        pass
    if configured and configured not in found and os.path.isdir(configured):
        found.append(configured)
    return found


def sessions_of(stores, root: str = "") -> dict[str, int]:
    """Run directory -> its sessions that still stand, of those that have
    any: a service pinned by name stands while stopped; another session
    once its cgroup is gone does not (a daemon that died left it; ROOT:
    the cgroup2 mount, "" to count every session)."""
    busy = {}
    for store in stores:
        n = sum(1 for sess in store.load().sessions.values()
                if standing(sess, root))
        if n:
            busy[store.path] = n
    return busy


def standing(sess, root: str) -> bool:
    if sess.pinned or not root:
        return True
    return os.path.isdir(os.path.join(root, sess.cgroup.lstrip("/")))


def refusal(busy: dict[str, int]) -> str:
    """The one line that says why cleanup does nothing (BUSY: sessions_of's)."""
    total = sum(busy.values())
    where = ", ".join(sorted(busy))
    return (f"{total} session{'s' if total != 1 else ''} still run{'' if total != 1 else 's'} "
            f"({where}): end them (netleak status, netleak detach), then run "
            f"'netleak cleanup' again")


def service_state(systemctl=shutil.which("systemctl")) -> str:
    """The daemon's systemd service's ActiveState ("" without systemd): a
    service that runs, or is about to (activating, a restart due), would
    bring a daemon back while cleanup works."""
    if not systemctl or not os.path.isdir("/run/systemd/system"):
        return ""
    r = subprocess.run([systemctl, "show", "--property=ActiveState", "--value", SERVICE],
                       capture_output=True, text=True, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else ""


def is_daemon(pid: int) -> bool:
    """Whether PID runs netleak's daemon (a pid file written in another
    PID namespace names someone else here)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
    except OSError:
        return False
    return b"netleak_hook.daemon" in argv or (
        any(a.endswith(b"netleak") for a in argv[:2]) and b"daemon" in argv)


def stop_daemon(store) -> bool:
    """Stop STORE's daemon (SIGTERM; SIGKILL if it has not gone after
    STOP_SECONDS); whether one ran."""
    pid = store.daemon_pid()
    if pid is None or not is_daemon(pid):
        return False
    from .kernel.proc import running
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        while time.monotonic() < deadline:
            if not running(pid):
                return True
            time.sleep(0.05)
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    return True


def stop_slice(systemctl=shutil.which("systemctl")) -> bool:
    """Stop the slice of sessions' and on-demand daemons' scopes (systemd
    keeps an empty slice active); whether it was active. Only once no
    session runs: stopping it stops what is in it."""
    if not systemctl or not os.path.isdir("/run/systemd/system"):
        return False
    r = subprocess.run([systemctl, "is-active", "--quiet", SLICE], capture_output=True,
                       timeout=10)
    if r.returncode != 0:
        return False
    subprocess.run([systemctl, "stop", SLICE], capture_output=True, timeout=60)
    return True


def remove_dropins(top: str = "/run/systemd/system") -> list[str]:
    """The drop-ins netleak wrote to pin services by name (left by a service
    pinned when its state went); the paths removed."""
    from .daemon.units import DROPIN_HEAD
    gone = []
    try:
        names = os.listdir(top)
    except OSError:
        return gone
    for d in names:
        path = os.path.join(top, d, "netleak.conf")
        try:
            with open(path) as f:
                mine = f.readline().startswith(DROPIN_HEAD)
        except OSError:
            continue
        if mine:
            os.unlink(path)
            gone.append(path)
            try:
                os.rmdir(os.path.dirname(path))
            except OSError:
                pass
    return gone


def is_pinset(name: str) -> bool:
    """Whether NAME is one of netleak's pin sets (v1-<12 hex digits>, or
    the -new folder a compile fills before its rename)."""
    stem = name[:-4] if name.endswith("-new") else name
    version, dash, digest = stem.partition("-")
    return (dash == "-" and version[:1] == "v" and version[1:].isdigit()
            and len(digest) == 12 and all(c in "0123456789abcdef" for c in digest))


def has_pinsets(bpf_dir: str) -> bool:
    try:
        return any(is_pinset(n) for n in os.listdir(bpf_dir))
    except OSError:
        return False


def remove_pinsets(bpf_dir: str, remove) -> int:
    """netleak's pin sets in BPF_DIR removed (whatever else a NETLEAK_BPF_DIR
    set by hand holds stays), and BPF_DIR once empty; how many. Programs
    stay attached to live cgroups: only their names go."""
    try:
        names = [n for n in os.listdir(bpf_dir) if is_pinset(n)]
    except OSError:
        return 0
    for n in names:
        remove(os.path.join(bpf_dir, n))
    try:
        os.rmdir(bpf_dir)
    except OSError:
        pass
    return len(names)


def netleaks_file(name: str) -> bool:
    """Whether NAME is a file netleak makes in a run directory (the state,
    the daemon's socket, lock, pid and log, the hook's and the events' logs
    with their turned-over halves, a crash's temporary state)."""
    from .rundir.eventlog import LOG_NAME
    from .rundir.store import Store
    base = name[:-2] if name.endswith(".1") else name
    if base in (Store.STATE, Store.SOCKET, Store.LOCK, Store.PID, Store.LOG, "hook.log",
                LOG_NAME):
        return True
    parts = name.split(".")
    return len(parts) == 4 and parts[0] == "" and parts[2].isdigit() and parts[3] == "tmp"


def clear_run_dir(path: str, ours: bool) -> bool:
    """PATH's netleak files removed, and PATH with them when nothing else is
    in it; whether it is gone. OURS: a directory netleak made below its own
    run root (net-*), removed whole. A NETLEAK_RUN_DIR set by hand may hold
    other files: those stay, and so does the directory."""
    if ours:
        shutil.rmtree(path, ignore_errors=True)
        return not os.path.exists(path)
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return True
    for name in names:
        if netleaks_file(name):
            try:
                os.unlink(os.path.join(path, name))
            except FileNotFoundError:
                pass
    try:
        os.rmdir(path)
    except OSError:
        return False
    return True


def _stores(cfg):
    """(this namespace's run directory, every Store cleanup looks at)."""
    from .rundir.store import DEFAULT_RUN_ROOT, Store, run_dir
    here = run_dir(cfg)
    dirs = run_dirs(DEFAULT_RUN_ROOT, cfg.run_dir)
    if here not in dirs and os.path.isdir(here):
        dirs.append(here)
    return here, [Store(d) for d in dirs]


def check(cfg) -> None:
    """NetleakError when cleanup would be refused: a session runs in some
    namespace (what a package's removal asks before it stops anything)."""
    _, stores = _stores(cfg)
    try:
        for s in stores:
            s.check()               # a run directory others may write: refused
        busy = sessions_of(stores, cgroup_root())
    finally:
        for s in stores:
            s.close()
    if busy:
        raise NetleakError(refusal(busy))


def cleanup(cfg, environ) -> list[str]:
    """Everything netleak keeps, removed (see the module's text); what was
    done, a line each. NetleakError when a session runs or the service
    would bring a daemon back."""
    from . import client
    from .kernel import cgroupfs, pinning
    from .rundir.store import DEFAULT_RUN_ROOT
    state = service_state()
    if state not in ("", "inactive", "failed"):
        raise NetleakError(f"{SERVICE} is {state}: stop it first (systemctl stop {SERVICE})")
    check(cfg)
    here, stores = _stores(cfg)
    done: list[str] = []
    locks: list[int] = []
    try:
        # this namespace's leftovers, collected by its daemon (one is started
        # for it if none runs), before every daemon stops
        mine = [s for s in stores if s.path == here]
        if mine and (client.ping(mine[0]) or has_pinsets(cfg.bpf_dir)):
            report = client.request_starting_daemon(mine[0], {"op": "gc"})["report"]
            done.append("this namespace's leftovers collected")
            if report.get("sessions"):
                raise NetleakError(refusal({here: report["sessions"]}))
        for s in stores:
            if stop_daemon(s):
                done.append(f"daemon of {s.path} stopped")
            # held to the end: a daemon started meanwhile says "busy"
            fd = s.take_lock()
            if fd is not None:
                locks.append(fd)
        populated = cgroupfs.populated(os.path.join(cgroup_root() or "/nonexistent", SLICE))
        if populated is False and stop_slice():
            done.append(f"{SLICE} stopped")
        dropins = remove_dropins()
        if dropins:
            done.append(f"{len(dropins)} drop-ins of pinned services removed")
            if os.path.isdir("/run/systemd/system") and shutil.which("systemctl"):
                subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=60)
        if os.path.isdir(cfg.bpf_dir):
            with pinning.compile_lock(cfg.bpf_dir):     # no compile halfway through
                gone = remove_pinsets(cfg.bpf_dir, pinning.remove_pins_set)
            if gone:
                done.append(f"{gone} pin sets in {cfg.bpf_dir} removed")
            try:
                os.rmdir(cfg.bpf_dir)
            except OSError:
                pass
    finally:
        for fd in locks:
            os.close(fd)
        for s in stores:
            s.close()
    for s in stores:
        ours = os.path.dirname(s.path) == DEFAULT_RUN_ROOT
        if clear_run_dir(s.path, ours):
            done.append(f"run directory {s.path} removed")
        else:
            done.append(f"run directory {s.path} kept: files netleak did not make are in it")
    if cfg.run_dir is None:
        try:
            os.rmdir(DEFAULT_RUN_ROOT)
        except OSError:
            pass
    root = cgroup_root()
    parent = cgroupfs.abspath(root, cfg.cgroup_parent) if root else ""
    if parent and os.path.isdir(parent):
        if cgroupfs.remove_tree(parent):
            done.append(f"cgroup {parent} removed")
        else:
            done.append(f"cgroup {parent} kept: a process still runs in it")
    return done


def cgroup_root() -> str:
    """The cgroup2 mount ("" when there is none)."""
    from .kernel import cgroupfs
    try:
        return cgroupfs.find_cgroup2()
    except (OSError, NetleakError):
        return ""
