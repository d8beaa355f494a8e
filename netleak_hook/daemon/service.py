"""The daemon as a service: its lock, limits, logging and own cgroup, the
request socket, signals, and `main` (`python -m netleak_hook.daemon`)."""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import socket
import sys

from ..core.config import Config
from ..core.errors import NetleakError
from ..kernel import cgroupfs, systemd
from ..rundir import logfile, logfmt
from ..rundir.store import Store, run_dir
from .loop import Daemon, open_daemon
from .notes import log

DAEMON_CGROUP = "daemon"  # under the cgroup parent: an auto-started daemon's home
TAKE_OVER_SECONDS = 10    # how long a service waits for the daemon it replaces


class Notifier:
    """systemd's notification protocol (sd_notify(3)) for a Type=notify
    service: READY=1 once requests are served, WATCHDOG=1 at half the
    watchdog's period, STOPPING=1. Without $NOTIFY_SOCKET, nothing."""

    def __init__(self, environ, clock=None) -> None:
        import time
        self.clock = clock or time.monotonic
        addr = environ.get("NOTIFY_SOCKET") or ""
        self.addr = "\0" + addr[1:] if addr.startswith("@") else addr
        usec = environ.get("WATCHDOG_USEC") or ""
        pid = environ.get("WATCHDOG_PID") or ""
        mine = not pid or pid == str(os.getpid())
        self.interval = int(usec) / 2e6 if usec.isdigit() and mine else 0.0
        self.last = 0.0

    def send(self, text: str) -> None:
        if not self.addr:
            return
        with contextlib.suppress(OSError):
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(text.encode(), self.addr)

    def tick(self) -> None:
        """Called from each turn of the daemon's loop."""
        now = self.clock()
        if self.interval and now - self.last >= self.interval:
            self.last = now
            self.send("WATCHDOG=1")


def take_over(store: Store, timeout: float = TAKE_OVER_SECONDS):
    """The lock of a daemon that runs already (one started on demand): it is
    asked to yield (it exits as on SIGTERM, its sessions stay in the kernel
    and the state file), then the lock is taken; None if it would not. The
    ask is repeated (a client may start another daemon in between); one too
    old to know it gets SIGTERM."""
    import time
    deadline = time.monotonic() + timeout
    asked = 0.0
    while time.monotonic() < deadline:
        lock = store.take_lock()
        if lock is not None:
            return lock
        if time.monotonic() - asked >= 1.0:
            asked = time.monotonic()
            ask_to_yield(store)
        time.sleep(0.05)
    return None


def ask_to_yield(store: Store) -> None:
    """One "yield" request to the daemon on STORE's socket (root's only);
    SIGTERM to it when it does not know the request."""
    import json
    import struct
    with contextlib.suppress(OSError, ValueError):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as s:
            s.settimeout(5)
            s.connect(store.socket_path)
            pid, uid, _ = struct.unpack("3i", s.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))
            if uid != 0:
                return
            s.sendall(json.dumps({"op": "yield"}).encode() + b"\n")
            reply = json.loads(s.recv(4096).decode() or "{}")
            if not reply.get("ok") and "unknown" in str(reply.get("error", "")):
                log.info("the daemon that runs (pid %d) predates hand-overs: SIGTERM", pid)
                os.kill(pid, signal.SIGTERM)


def listen(store: Store) -> socket.socket:
    """The daemon's socket, in the checked run directory, for root only."""
    store.remove(Store.SOCKET)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    old = os.umask(0o077)
    try:
        s.bind(store.socket_path)
    finally:
        os.umask(old)
    s.listen(64)
    return s


def raise_open_files() -> None:
    """Each session keeps its cgroup.events open: lift the soft limit on
    open files (often 1,024) to the hard one."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1 << 20 if hard == resource.RLIM_INFINITY else min(hard, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def setup_logging(store: Store, cfg: Config, foreground: bool) -> None:
    """daemon.log in the run directory (or NETLEAK_LOG_FILE), capped and
    never through a link; repeated warnings held back."""
    if cfg.log_file:
        where = os.path.dirname(os.path.abspath(cfg.log_file))
        dir_fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        target = logfile.CappedFile(dir_fd, os.path.basename(cfg.log_file),
                                    logfile.DAEMON_LOG_MAX, where)
    else:
        target = logfile.CappedFile(store.dir_fd(create=True), Store.LOG,
                                    logfile.DAEMON_LOG_MAX, store.path)
    target.write(b"")       # a link in its place is refused now, not at the first line
    handlers: list[logging.Handler] = [logfile.CappedHandler(target)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    fmt = logfmt.Formatter()
    repeats = logfile.RepeatFilter()
    for h in handlers:
        h.setFormatter(fmt)
        h.addFilter(repeats)
    logging.basicConfig(level=logging.INFO, handlers=handlers, force=True)


def settle(root: str, parent: str, own_cgroup: bool, on_systemd: bool,
           units=None) -> str:
    """Where the daemon lives; returns the cgroup its relay's goes under.

    On a systemd host every process of it is in a unit: one started on
    demand (OWN_CGROUP) asks for a transient scope of its own in
    netleak.slice, delegated so the relay's cgroup may go below it; one
    systemd runs (the service, Delegate=yes) is in its unit already.
    Elsewhere an auto-started daemon moves into PARENT/daemon. ROOT: the
    cgroup2 mount; UNITS: systemd (kernel.systemd.Systemd), opened here if
    not given."""
    if not on_systemd:
        if own_cgroup:
            leave_callers_cgroup(parent)
        return parent
    pid = os.getpid()
    if own_cgroup:
        sd = units or systemd.Systemd()
        try:
            rel = sd.start_scope(daemon_scope_name(pid), pid,
                                 "netleak daemon (started on demand)", delegate=True)
        except NetleakError as e:
            log.warning("no unit of its own (%s): moving into %s/%s instead", e, parent,
                        DAEMON_CGROUP)
            leave_callers_cgroup(parent)
            return parent
        finally:
            if units is None:
                sd.close()
    else:
        rel = cgroupfs.of_pid(pid)
        if not rel:
            return parent          # the root cgroup: no home to make cgroups in
    return cgroupfs.abspath(root, rel)


def daemon_scope_name(pid: int) -> str:
    """The transient scope of a daemon started on demand (one per network
    namespace may run, so the name is its PID's)."""
    return f"netleak-daemon-{pid}.scope"


def leave_callers_cgroup(parent: str) -> None:
    """An auto-started daemon would otherwise live in the cgroup of
    whoever ran netleak first: a unit's stop would kill it, and that
    cgroup could never be attached."""
    path = os.path.join(parent, DAEMON_CGROUP)
    try:
        if not os.path.isdir(path):
            cgroupfs.make(path)
        cgroupfs.join(path)
    except OSError as e:
        log.warning("staying in the caller's cgroup (cannot join %s: %s)", path,
                    e.strerror)


def leave_own_cgroup(root: str, parent: str) -> None:
    """On the way out: back to the root cgroup, so the daemon's own (and
    the parent, once empty) can go."""
    path = os.path.join(parent, DAEMON_CGROUP)
    with contextlib.suppress(OSError, NetleakError):
        if cgroupfs.of_pid(os.getpid()) == os.path.relpath(path, root):
            cgroupfs.join(root)
    cgroupfs.remove_if_empty(path)
    cgroupfs.remove_if_empty(parent)


def serve(cfg: Config, idle_exit: float = 0.0, foreground: bool = False,
          own_cgroup: bool = False, report: int = -1, replace: bool = False) -> int:
    """Run the daemon of this network namespace until stopped.

    own_cgroup: move into a cgroup of its own (for a daemon netleak starts
    on demand: a transient scope on a systemd host, else one under the
    cgroup parent; one run by systemd stays in its unit).
    REPORT: a descriptor to say, in one line, whether it started ("ready",
    "busy" when another daemon runs, or why not), then closed. REPLACE: a
    daemon that runs already (started on demand) hands over to this one (a
    service's start), instead of this one giving up.
    """
    def tell(line: str) -> None:
        nonlocal report
        if report >= 0:
            with contextlib.suppress(OSError):
                os.write(report, line.encode("utf-8", "replace") + b"\n")
                os.close(report)
            report = -1

    store = Store(run_dir(cfg))
    try:
        store.ensure_dir()
        setup_logging(store, cfg, foreground)
    except NetleakError as e:
        print(f"netleak daemon: {e}", file=sys.stderr)
        tell(e.message)
        return 125
    raise_open_files()
    lock = store.take_lock()
    if lock is None and replace:
        log.info("a daemon already runs for %s: asking it to hand over", store.path)
        lock = take_over(store)
        if lock is None:
            log.error("the daemon that runs for %s did not hand over in %ds: stop it "
                      "(pid in %s)", store.path, TAKE_OVER_SECONDS, store.path)
            return 1
    if lock is None:
        log.info("a daemon already runs for %s", store.path)
        tell("busy")
        return 0
    notifier = Notifier(os.environ)
    on_systemd = systemd.running()
    d: Daemon | None = None

    def stop(signum, frame):
        if d is not None:
            d.stopping = True
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        d = open_daemon(cfg, store, idle_exit=idle_exit)
        d.start(listen, settle=lambda parent: settle(d.cgroups.root, parent, own_cgroup,
                                                     on_systemd))
        tell("ready")
        notifier.send(f"READY=1\nSTATUS=serving {len(d.state.sessions)} sessions\n"
                      f"MAINPID={os.getpid()}")
        d.run(tick=notifier.tick)
        notifier.send("STOPPING=1")
        d.close()
    except NetleakError as e:
        log.error("%s", e)
        tell(e.message)
        return 125
    finally:
        tell("")
        with contextlib.suppress(OSError):
            store.remove(Store.SOCKET)
        with contextlib.suppress(OSError):
            store.remove(Store.PID)
        if own_cgroup and d is not None:
            leave_own_cgroup(d.cgroups.root, d.parent)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="netleak daemon")
    p.add_argument("--idle-exit", type=float, default=0.0)
    p.add_argument("--foreground", action="store_true")
    p.add_argument("--own-cgroup", action="store_true")
    p.add_argument("--report-fd", type=int, default=-1)
    p.add_argument("--replace", action="store_true")
    a = p.parse_args(argv)
    try:
        cfg = Config.from_env(os.environ)
    except NetleakError as e:
        print(f"netleak daemon: {e}", file=sys.stderr)
        if a.report_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(a.report_fd, e.message.encode() + b"\n")
        return 125
    return serve(cfg, idle_exit=a.idle_exit, foreground=a.foreground,
                 own_cgroup=a.own_cgroup, report=a.report_fd, replace=a.replace)
