"""Putting a new cgroup under control for netleak-exec (service layer).

Kept free of heavy imports: it is on netleak-exec's warm path.
"""
from __future__ import annotations

import os

from .core.config import Config
from .core.errors import NO_SCOPE, NetleakError
from .kernel import cgroupfs
from .core.lifecycle import exec_cgroup_name, new_session_id, own_unit_cgroup
from .rundir.store import Store, run_dir


def open_exec_session(cfg: Config, iface: str, via4: str | None,
                      via6: str | None, guards: dict | None = None) -> str:
    """Create a cgroup, have the daemon protect it, and move this process in.

    On any failure before the move, everything made here is undone; after
    the move the daemon's reaper owns the clean-up.
    """
    root = cgroupfs.find_cgroup2()
    store = Store(run_dir(cfg))
    store.check()       # a run directory others may write: refused before anything is made
    sid = new_session_id()
    from .kernel import systemd as sd     # light: os and time only
    systemd = sd.running()
    unit = _own_unit(root) if systemd else None
    if systemd:
        try:
            return _open_in_unit(store, cfg, root, unit, sid, iface, via4, via6, guards)
        except NetleakError as e:
            # a daemon that cannot reach systemd (one in a container without
            # the host's /run/systemd): a cgroup of netleak's own, as elsewhere
            if unit is not None or not str(e).startswith(NO_SCOPE):
                raise
            sid = new_session_id()
    return _open_own_cgroup(store, cfg, root, sid, iface, via4, via6, guards)


def _open_own_cgroup(store: Store, cfg: Config, root: str, sid: str, iface: str,
                     via4: str | None, via6: str | None, guards: dict | None) -> str:
    """Without systemd: a cgroup netleak makes under its parent, protected
    by the daemon, this process moved in."""
    rel = f"{cfg.cgroup_parent.strip('/')}/{exec_cgroup_name(sid, os.getpid())}"
    path = cgroupfs.abspath(root, rel)
    home = cgroupfs.abspath(root, cgroupfs.of_pid(os.getpid()))
    try:
        cgroupfs.make(path)
    except OSError as e:
        raise NetleakError(f"cannot create cgroup {path}: {e.strerror}") from None
    moving = None
    try:
        msg = {"op": "open", "id": sid, "iface": iface, "via4": via4, "via6": via6,
               "cgroup": rel, "cgroup_id": cgroupfs.cgroup_id(path), "owned": True,
               "join": True, **(guards or {})}
        moving = _move_in_background(path)
        from . import client    # json and socket: imported while the move waits
        # The daemon protects the cgroup, then moves this process (the
        # socket's peer, as the kernel reports it) into it: one round trip,
        # and the session counts as committed only once the workload is
        # inside. A daemon started on demand starts in HOME, not in here.
        reply = client.request_starting_daemon(store, msg, autostart=cfg.autostart,
                                               home=home, meanwhile=_ahead)
        client.check_guards(msg, reply)
        _wait(moving)
        if cgroupfs.of_pid(os.getpid()) != rel:
            raise NetleakError(f"this process did not land in cgroup {rel}")
    except BaseException:
        if moving is not None:
            _wait(moving)
        _abort(store, sid)
        try:
            if cgroupfs.of_pid(os.getpid()) == rel:
                cgroupfs.join(home)
        except (OSError, NetleakError):
            pass
        try:
            cgroupfs.remove_tree(path)
        except OSError:
            pass
        cgroupfs.remove_if_empty(os.path.dirname(path))
        raise
    return sid


def _own_unit(root: str) -> str | None:
    """The systemd unit's cgroup this process runs in alone, if any."""
    pid = os.getpid()
    rel = cgroupfs.of_pid(pid)
    # the unit and the cgroups above it (not core.plan's ancestors: that
    # module needs dataclasses, off this path)
    parts = rel.split("/")
    above = ["/".join(parts[:i]) for i in range(len(parts), 0, -1)]
    delegated = bool(cgroupfs.delegated(root, above))
    return own_unit_cgroup(rel, cgroupfs.procs(cgroupfs.abspath(root, rel)), pid,
                           True, delegated)


def _open_in_unit(store: Store, cfg: Config, root: str, rel: str | None, sid: str,
                  iface: str, via4: str | None, via6: str | None,
                  guards: dict | None) -> str:
    """On a systemd host the session is a unit: the one this process runs
    in alone (REL), or a transient scope the daemon has systemd make for
    it, this process moved in. Either is protected by the daemon before
    COMMAND runs; systemd owns the cgroup, so the unit stays whole, and
    stops whole."""
    from . import client
    msg = {"op": "open", "id": sid, "iface": iface, "via4": via4, "via6": via6,
           **(guards or {})}
    if rel is not None:
        msg.update(cgroup=rel, cgroup_id=cgroupfs.cgroup_id(cgroupfs.abspath(root, rel)),
                   owned=False, unit=rel.rpartition("/")[2])
    else:
        msg.update(scope=True)
    home = cgroupfs.abspath(root, cgroupfs.of_pid(os.getpid()))
    try:
        reply = client.request_starting_daemon(store, msg, autostart=cfg.autostart,
                                               home=home)
        client.check_guards(msg, reply)
        if cgroupfs.of_pid(os.getpid()) != str(reply.get("cgroup") or "").strip("/"):
            raise NetleakError(f"this process is not in the session's cgroup "
                               f"/{reply.get('cgroup')}: not starting the command")
    except BaseException:
        _abort(store, sid)
        raise
    return sid


def _abort(store: Store, sid: str) -> None:
    """Tell the daemon the set-up of SID is given up (best effort: a daemon
    that cannot be told rolls it back itself). No contextlib here: with
    functools and collections it would cost every start."""
    from . import client
    try:
        client.request(store, {"op": "abort", "id": sid}, timeout=5)
    except Exception:
        pass


def _ahead() -> None:
    """While the daemon sets up (and the move waits for the kernel): import
    ctypes, which confining COMMAND needs next (~2 ms of CPU that would
    otherwise come after the reply)."""
    import ctypes  # noqa: F401


def _wait(moving) -> None:
    """Until the background move is over (it gives up after 10 s)."""
    if moving.acquire(timeout=10):
        moving.release()


def _move_in_background(path: str):
    """Start moving this process into PATH in a thread; returns a lock that
    is free once the move is done (or failed).

    A move waits for an RCU grace period in the kernel (10-20 ms: the first
    writer of cgroup_threadgroup_rwsem after a quiet spell), the larger part
    of a warm start. Begun here, it passes while the daemon sets the cgroup
    up. Nothing runs in the cgroup before the daemon has protected it: this
    process only waits for the reply, and execs only after it. The daemon's
    own move of this process stays what commits the session.

    The thread only writes to a descriptor opened here, and this thread
    waits until it is about to: a thread that still needs the interpreter
    lock would wait for it (up to its 5 ms switch interval) while this one
    imports and talks to the daemon, and the wait would start that late.
    """
    import _thread
    done = _thread.allocate_lock()
    done.acquire()
    try:
        fd = os.open(os.path.join(path, "cgroup.procs"), os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        done.release()      # the daemon's move then does it, or says why not
        return done
    line = b"%d\n" % os.getpid()
    going = _thread.allocate_lock()
    going.acquire()

    def move() -> None:
        try:
            going.release()
            os.write(fd, line)      # the lock is free during the wait
        except OSError:
            pass        # the daemon's move then does it, or says why not
        finally:
            os.close(fd)
            done.release()
    _thread.start_new_thread(move, ())
    going.acquire(timeout=1)
    return done
