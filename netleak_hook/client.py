"""Talking to the daemon of this network namespace; starting it if absent.

Kept light (no pyroute2, no BCC): it is on netleak-exec's warm path.
"""
from __future__ import annotations

import os
import sys
import time

# the C module: socket.py (enum, selectors) would add milliseconds to every
# start, and a plain Unix stream socket needs nothing of it
import _socket

from .core.errors import NetleakError
from .rundir.store import Store

START_TIMEOUT = 20.0     # a first start may compile the BPF programs
REQUEST_TIMEOUT = 30.0


NO_DAEMON = (FileNotFoundError, ConnectionRefusedError, ConnectionResetError)


class _Decoding:
    """What the C scanner of json reads off its decoder (json's defaults)."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = {"-Infinity": float("-inf"), "Infinity": float("inf"),
                      "NaN": float("nan")}.__getitem__


def dumps(obj) -> str:
    """json.dumps(OBJ) by json's C encoder, without importing the json
    package: its decoder imports re, milliseconds of every start."""
    try:
        import _json
        encode = _json.make_encoder({}, _unencodable, _json.encode_basestring_ascii, None,
                                    ": ", ", ", False, False, True)
    except (ImportError, AttributeError, TypeError):   # not CPython: the package
        import json
        return json.dumps(obj)
    return "".join(encode(obj, 0))


def loads(text: bytes | str):
    """json.loads(TEXT) by json's C scanner (see dumps); ValueError when it
    is not one JSON value."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    try:
        import _json
        scan = _json.make_scanner(_Decoding)
    except (ImportError, AttributeError, TypeError):
        import json
        return json.loads(text)
    start = len(text) - len(text.lstrip(" \t\n\r"))
    try:
        obj, end = scan(text, start)
    except StopIteration:
        raise ValueError("not JSON") from None
    if text[end:].strip(" \t\n\r"):
        raise ValueError("extra data after JSON")
    return obj


def _unencodable(obj):
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def request(store: Store, msg: dict, timeout: float = REQUEST_TIMEOUT) -> dict:
    """Send one request, return the reply; NetleakError on a refusal."""
    try:
        return _request(store, msg, timeout)
    except NO_DAEMON:
        raise NetleakError(f"no netleak daemon answers at {store.socket_path}: "
                           f"'netleak gc' starts one (or start the netleak-daemon "
                           f"service)") from None


def _request(store: Store, msg: dict, timeout: float = REQUEST_TIMEOUT,
             meanwhile=None) -> dict:
    if not store.check():       # refuses a directory others may write
        raise FileNotFoundError(store.path)
    reply = _roundtrip(store.socket_path, msg, timeout, meanwhile)
    if not reply.get("ok"):
        raise NetleakError(reply.get("error") or "the netleak daemon refused the request")
    return reply


def request_starting_daemon(store: Store, msg: dict, autostart: bool = True,
                            home: str | None = None, meanwhile=None) -> dict:
    """Like request(), but start the daemon first when none listens
    (unless AUTOSTART is off: then say who should have started it). HOME:
    the cgroup directory the daemon starts in, when not the caller's.
    MEANWHILE(): called once the request is sent, before the reply is
    read (work that would otherwise wait for it)."""
    try:
        return _request(store, msg, meanwhile=meanwhile)
    except NO_DAEMON:
        # none listens, or one was exiting (idle) as we connected
        if not autostart:
            raise NetleakError(
                f"no netleak daemon answers at {store.socket_path} and "
                f"NETLEAK_AUTOSTART=0: start it (the netleak-daemon service or the "
                f"netleak agent container)") from None
        ensure_daemon(store, home=home)
    return request(store, msg)


def connections(store: Store, session: str | None = None) -> list[dict]:
    """The sessions' connections (daemon/connview.py); none when no daemon
    runs (then no session does)."""
    try:
        reply = _request(store, {"op": "connections", "session": session})
    except NO_DAEMON:
        return []
    except NetleakError as e:
        if "unknown request" in e.message:
            raise NetleakError("the running netleak daemon is older than 'netleak "
                               "connections': stop it ('netleak gc' starts a new one) "
                               "and retry") from None
        raise
    return list(reply.get("connections") or ())


def check_guards(msg: dict, reply: dict) -> None:
    """A daemon older than --dns/--allow/--block ignores them and replies
    ok: never let a session run believing it has guards it lacks."""
    if (msg.get("dns") or msg.get("allow") or msg.get("block")) and "block" not in reply:
        raise NetleakError("the running netleak daemon is older than --dns, --allow and "
                           "--block, and ignored them: stop it ('netleak gc' starts a "
                           "new one) and retry")
    if msg.get("proxy") and "proxy" not in reply:
        raise NetleakError("the running netleak daemon is older than --proxy, and ignored "
                           "it: stop it ('netleak gc' starts a new one) and retry")
    if msg.get("deny") and "deny" not in reply:
        raise NetleakError("the running netleak daemon is older than --deny, and ignored "
                           "it: stop it ('netleak gc' starts a new one) and retry")


def opened_state(reply: dict) -> str:
    """How a session on an interface starts, in a few words."""
    waiting = reply.get("waiting")
    if waiting == "interface":
        return "waiting for the interface to appear, kill switch on"
    if waiting == "gateway":
        return "waiting for a default route to learn the gateway from, kill switch on"
    return "kill switch on until it is up" if reply.get("killed") else "routed"


def _roundtrip(path: str, msg: dict, timeout: float, meanwhile=None) -> dict:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        s.connect(path)
        _check_peer(s, path)
        s.sendall(dumps(msg).encode() + b"\n")
        if meanwhile is not None:
            meanwhile()
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
    except _socket.timeout:
        raise NetleakError(
            f"the netleak daemon did not answer within {timeout:.0f}s: see "
            f"{os.path.dirname(path)}/daemon.log") from None
    except NO_DAEMON:
        raise       # no daemon (or one exiting): the caller may start one
    except OSError as e:
        raise NetleakError(f"cannot talk to the netleak daemon at {path}: {e.strerror or e} "
                           f"(a shorter NETLEAK_RUN_DIR helps if the path is long)") from None
    finally:
        s.close()
    try:
        return loads(buf)
    except ValueError:
        raise NetleakError(
            f"the netleak daemon closed the connection: see "
            f"{os.path.dirname(path)}/daemon.log") from None


class Impostor(NetleakError):
    """Something other than root's daemon answers on the daemon's socket."""


def _check_peer(s, path: str) -> None:
    """Only root's daemon is believed: whatever else answers there (a
    socket some user managed to put in place) is refused before it is
    told anything."""
    import struct
    _, uid, _ = struct.unpack("3i", s.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED,
                                                  struct.calcsize("3i")))
    if uid != 0:
        raise Impostor(f"the process answering at {path} runs as uid {uid}, not as "
                           f"root: it is no netleak daemon; remove the socket, and see who "
                           f"could put it there")


def ping(store: Store) -> bool:
    try:
        if not store.check():
            return False
        return bool(_roundtrip(store.socket_path, {"op": "ping"}, 2.0).get("ok"))
    except Impostor:
        raise
    except (OSError, NetleakError):
        return False


def ensure_daemon(store: Store, idle_exit: float = 60.0, home: str | None = None) -> None:
    """Start the daemon of this namespace when none answers, and wait for
    it; what keeps it from starting is said here, in one line."""
    if ping(store):
        return
    store.ensure_dir()
    compile_notice()
    r, w = os.pipe2(os.O_CLOEXEC)
    try:
        _spawn(store, idle_exit, home, w)
        os.close(w)
        w = -1
        said = _read_report(r, START_TIMEOUT)
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
    if said not in ("ready", "busy"):
        raise NetleakError(said or f"the netleak daemon did not start: see {store.log_file}")
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if ping(store):
            return
        time.sleep(0.02)
    raise NetleakError(f"the netleak daemon did not start: see {store.log_file}")


def compile_notice(err=None, environ=None) -> bool:
    """On a terminal, a line before a daemon's start that compiles the BPF
    programs (the first on this kernel takes a few seconds); whether it was
    said. Nothing when ERR (stderr) is no terminal, or the pins are there."""
    err = err or sys.stderr
    try:
        if not err.isatty():
            return False
        from .core.config import Config
        from .kernel import programs
        cfg = Config.from_env(os.environ if environ is None else environ)
        pins = programs.Pinset(os.path.join(cfg.bpf_dir, programs.pinset_name()))
        if pins.check() and pins.complete():
            return False
    except (OSError, ValueError, NetleakError):
        return False
    err.write("netleak: compiling the BPF programs for this kernel (once, a few seconds)\n")
    err.flush()
    return True


def _read_report(fd: int, timeout: float) -> str:
    """The daemon's one line about its start ("ready", "busy": another one
    runs, or why it cannot start); "" if it said nothing in time."""
    import select
    poll = select.poll()  # not select(): the pipe's number may be past 1023
    poll.register(fd, select.POLLIN)
    buf = b""
    deadline = time.monotonic() + timeout
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0 or not poll.poll(left * 1000):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode("utf-8", "replace").strip()


def _spawn(store: Store, idle_exit: float, home: str | None, report: int) -> None:
    """Double fork, so the daemon is nobody's child and outlives us. HOME:
    a cgroup directory to start in (netleak-exec may already be in its
    session's cgroup, which the daemon must never share). REPORT: where it
    says whether it started."""
    pid = os.fork()
    if pid:
        os.waitpid(pid, 0)
        return
    try:
        os.setsid()
        if os.fork():
            os._exit(0)
        if home:
            try:
                with open(os.path.join(home, "cgroup.procs"), "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError:
                pass        # the daemon leaves the caller's cgroup itself too
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.set_inheritable(report, True)
        env = dict(os.environ, NETLEAK_RUN_DIR=store.path)
        os.execve(sys.executable,
                  [sys.executable, "-m", "netleak_hook.daemon",
                   "--idle-exit", str(idle_exit), "--own-cgroup", "--report-fd", str(report)],
                  env)
    finally:
        os._exit(125)
