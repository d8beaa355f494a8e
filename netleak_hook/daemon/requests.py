"""Requests: one JSON line in, one out, on the daemon's socket (root only);
the requester named by its peer credentials; an op table."""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import struct

from ..core.errors import NetleakError
from .notes import log

MAX_REQUEST = 65536


def os_refusal(e: OSError, sessions: int) -> str:
    """What a request that failed on a system call is told."""
    if e.errno in (errno.EMFILE, errno.ENFILE):
        return (f"the netleak daemon ran out of open files ({sessions} sessions, one "
                f"each): raise its limit (LimitNOFILE= for the service, 'ulimit -n' "
                f"where it is started on demand) and restart it")
    return f"bad request: {e}"


def peer_pid(conn: socket.socket) -> int:
    """The requester as the kernel names it (SO_PEERCRED); 0 when unknown."""
    try:
        return struct.unpack("3i", conn.getsockopt(
            socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
    except OSError:
        return 0


def read_line(conn: socket.socket) -> bytes:
    buf = b""
    while not buf.endswith(b"\n") and len(buf) < MAX_REQUEST:
        chunk = conn.recv(MAX_REQUEST)
        if not chunk:
            break
        buf += chunk
    return buf


class Requests:
    """OPS maps each request's "op" to what answers it."""

    def __init__(self, holder, sessions, reaper, collector, log_file: str,
                 connections=None) -> None:
        self.holder = holder
        self.log_file = log_file
        self.ops = {
            "ping": lambda msg: {"ok": True, "pid": os.getpid()},
            "open": sessions.open,
            "abort": sessions.abort,
            "detach": sessions.detach,
            # a hint (OCI poststop): the reaper runs anyway
            "reap": lambda msg: {"ok": True, "reaped": reaper.reap()},
            "gc": lambda msg: {"ok": True, "report": collector.report()},
        }
        if connections is not None:
            self.ops["connections"] = connections.answer

    def accept(self, listener: socket.socket) -> None:
        """Answer one request, then save what it changed (the commit of a
        session is saved after its reply)."""
        try:
            conn, _ = listener.accept()
        except OSError:
            return
        pid = peer_pid(conn)
        with conn:
            conn.settimeout(2.0)
            try:
                raw = read_line(conn)
            except OSError as e:
                reply = self.refusal(e)
            else:
                reply = self.answer(raw, pid)
            with contextlib.suppress(OSError):
                conn.sendall(json.dumps(reply).encode() + b"\n")
        self.holder.save_if_dirty()

    def answer(self, raw: bytes, pid: int) -> dict:
        """The reply to RAW, a request from process PID; never raises."""
        try:
            msg = json.loads(raw or b"{}")
            if isinstance(msg, dict):
                msg["peer_pid"] = pid
            return self.dispatch(msg)
        except Exception as e:
            return self.refusal(e)

    def refusal(self, e: Exception) -> dict:
        if isinstance(e, NetleakError):
            return {"ok": False, "error": e.message}
        if isinstance(e, OSError):
            return {"ok": False, "error": os_refusal(e, len(self.holder.state.sessions))}
        if isinstance(e, ValueError):
            return {"ok": False, "error": f"bad request: {e}"}
        # never let one request kill the daemon
        log.error("request failed", exc_info=e)
        return {"ok": False, "error": f"netleak daemon error: {e}; see {self.log_file}"}

    def dispatch(self, msg) -> dict:
        if not isinstance(msg, dict):
            raise ValueError("a request is one JSON object")
        op = msg.get("op")
        answer = self.ops.get(op) if isinstance(op, str) else None
        if answer is None:
            raise NetleakError(f"unknown request {op!r}")
        return answer(msg)
