"""Blocked-attempt events: the kernel's record (struct nl_event in
bpf/netleak.h), its JSON form, BCC-style columns, and the event log the
daemon keeps in its run directory for `netleak events` to read.

Decoding and rendering are pure; `EventLog` and `follow` are the only file
I/O here.
"""
from __future__ import annotations

import ipaddress
import json
import os
import struct
import time
from typing import Callable, Iterator

from .errors import one_line

# struct nl_event: time_ns, cgroup, sock_cgroup, pid, suppressed, reason,
# hook, family, protocol, dport, pad, daddr[16], comm[16]
_EVENT = struct.Struct("<QQQIIBBBBHH16s16s")
EVENT_SIZE = _EVENT.size

REASONS = {1: "kill-switch", 2: "wrong-device", 3: "no-policy", 4: "netns", 5: "no-dns",
           6: "no-network", 7: "proxy", 8: "source", 9: "mptcp", 10: "limit"}
REASON_TEXT = {
    "kill-switch": "the interface is down or gone: only loopback may be used",
    "wrong-device": "the packet would have left by another interface",
    "no-policy": "the cgroup is attached but has no policy entry: fail closed",
    "netns": "a socket was opened in another network namespace",
    "no-dns": "DNS to a loopback resolver, and no resolver of the session's to send it "
              "to (--dns, io.netleak.dns): refused, as the stub would forward it by the "
              "default route",
    "no-network": "no-network mode (--block): only loopback may be used",
    "proxy": "proxy mode (--proxy, io.netleak.proxy): only TCP (through the proxy) and "
             "DNS (answered by netleak) may leave; UDP and the rest are refused",
    "source": "a source address that is not this machine's (IP_FREEBIND, IP_TRANSPARENT, "
              "ip_nonlocal_bind): refused or dropped, as whatever answers it would answer "
              "by the default route",
    "mptcp": "an MPTCP socket: refused (its subflows would not follow the session's "
             "routing); programs fall back to TCP",
    "limit": "the session holds as many sockets sent to a resolver or the relay as it "
             "may at once (8,192): refused until some close",
}
HOOKS = {1: "egress", 2: "socket", 3: "connect", 4: "sendmsg", 5: "setsockopt"}
FAMILIES = {2: "ipv4", 10: "ipv6"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}

LOG_NAME = "events.jsonl"
LOG_MAX_BYTES = 1 << 20     # then the log turns over into events.jsonl.1


def decode(raw: bytes) -> dict:
    """One kernel record as a plain dict (times still in boot-clock ns)."""
    (t, cgroup, sock_cgroup, pid, suppressed, reason, hook, family, proto, dport, _,
     daddr, comm) = _EVENT.unpack_from(raw)
    if family == 2:
        addr: str | None = str(ipaddress.IPv4Address(daddr[:4]))
    elif family == 10:
        addr = str(ipaddress.IPv6Address(daddr))
    else:
        addr = None
    if addr is not None and not any(daddr):
        addr = None     # the socket hook has no destination
    return {
        "boot_ns": t, "cgroup_id": cgroup, "sock_cgroup_id": sock_cgroup,
        "pid": pid or None,
        "comm": comm.split(b"\0", 1)[0].decode("utf-8", "replace") or None,
        "reason": REASONS.get(reason, str(reason)),
        "hook": HOOKS.get(hook, str(hook)),
        "family": FAMILIES.get(family, str(family) if family else None),
        "protocol": PROTOCOLS.get(proto, str(proto) if proto else None),
        "daddr": addr, "dport": dport or None, "suppressed": suppressed,
    }


def boot_offset() -> float:
    """Seconds to add to CLOCK_BOOTTIME to get the wall clock."""
    return time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)


def iso(ts: float) -> str:
    """UTC, ISO 8601, microseconds."""
    t = time.gmtime(ts)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(ts % 1 * 1e6):06d}Z"


def enrich(ev: dict, offset: float, session: dict | None) -> dict:
    """The JSON line of one event: the kernel's fields plus what the daemon
    knows of the session (SESSION: id, container, cgroup, iface)."""
    ts = ev["boot_ns"] / 1e9 + offset
    s = session or {}
    return {
        "time": iso(ts), "ts": round(ts, 6),
        "session": s.get("id"), "container": s.get("container") or None,
        "cgroup": s.get("cgroup"), "cgroup_id": ev["cgroup_id"], "iface": s.get("iface"),
        "pid": ev["pid"], "comm": ev["comm"],
        "family": ev["family"], "protocol": ev["protocol"],
        "daddr": ev["daddr"], "dport": ev["dport"],
        "reason": ev["reason"], "hook": ev["hook"], "suppressed": ev["suppressed"],
    }


def dest_text(ev: dict) -> str:
    addr, port = ev.get("daddr"), ev.get("dport")
    if not addr:
        return "-"
    if port is None:
        return addr
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


HEADER = f"{'TIME':<8} {'SESSION':<8} {'PID':>7} {'COMM':<10} {'REASON':<12} {'PROTO':<5} DEST"


def line(ev: dict) -> str:
    """One event in the columns of HEADER: under 80 characters for any
    IPv4 destination and short IPv6 ones (a long one is printed whole)."""
    clock = time.strftime("%H:%M:%S", time.localtime(ev["ts"]))
    proto = ev.get("protocol") or "-"
    if ev.get("family") == "ipv6" and proto in ("tcp", "udp"):
        proto += "6"
    # a workload names its own process (prctl PR_SET_NAME): shown escaped,
    # so no terminal control sequence of its choosing reaches the reader
    comm = one_line(ev.get("comm") or "-")
    return (f"{clock:<8} {one_line(ev.get('session') or '-'):<8.8} {ev.get('pid') or '-':>7} "
            f"{comm:<10.10} {one_line(str(ev['reason'])):<12.12} {proto:<5.5} "
            f"{one_line(dest_text(ev))}")


def held_back(ev: dict) -> str | None:
    """The note printed before an event that follows suppressed ones."""
    n = ev.get("suppressed") or 0
    if not n:
        return None
    return f"# {n} more events of session {ev.get('session') or '-'} suppressed by the rate limit"


# ---------- the log file ----------

class EventLog:
    """Append-only JSON lines in the run directory (by its descriptor, never
    through a link), turned over at LOG_MAX_BYTES into one older file."""

    def __init__(self, dir_fd: int, where: str = "", max_bytes: int = LOG_MAX_BYTES) -> None:
        from .logfile import CappedFile
        self.path = os.path.join(where, LOG_NAME)
        self.file = CappedFile(dir_fd, LOG_NAME, max_bytes, where)

    def append(self, events: list[dict]) -> None:
        if not events:
            return
        self.file.write("".join(json.dumps(e, sort_keys=True) + "\n" for e in events).encode())

    def close(self) -> None:
        self.file.close()


def _parse(lines: list[bytes]) -> Iterator[dict]:
    for raw in lines:
        try:
            ev = json.loads(raw)
        except ValueError:
            continue        # a line cut by a crash
        if isinstance(ev, dict) and "reason" in ev and "ts" in ev:
            yield ev


def recorded(run_dir: str) -> list[dict]:
    """Every event still in the log, oldest first."""
    out: list[dict] = []
    for name in (LOG_NAME + ".1", LOG_NAME):
        try:
            with open(os.path.join(run_dir, name), "rb") as f:
                out.extend(_parse(f.read().splitlines()))
        except FileNotFoundError:
            pass
    return out


def follow(run_dir: str, emit: Callable[[dict], None], stop: Callable[[], bool],
           poll: float = 0.1) -> None:
    """Call EMIT for each event appended from now on, across turn-overs,
    until STOP() says so."""
    path = os.path.join(run_dir, LOG_NAME)
    f = None
    partial = b""

    def reopen(at_end: bool):
        try:
            g = open(path, "rb")
        except FileNotFoundError:
            return None
        if at_end:
            g.seek(0, os.SEEK_END)
        return g

    def take(chunk: bytes) -> None:
        nonlocal partial
        *done, partial = (partial + chunk).split(b"\n")
        for ev in _parse(done):
            emit(ev)

    f = reopen(at_end=True)
    try:
        while not stop():
            chunk = f.read() if f else b""
            if chunk:
                take(chunk)
                continue
            # at the end of the file we hold: has the log turned over?
            try:
                st = os.stat(path)
                moved = f is None or (st.st_dev, st.st_ino) != (
                    os.fstat(f.fileno()).st_dev, os.fstat(f.fileno()).st_ino)
            except FileNotFoundError:
                moved = False
            if moved:
                if f:       # what was appended just before the turn-over
                    take(f.read())
                    f.close()
                f, partial = reopen(at_end=False), b""
                continue
            time.sleep(poll)
    finally:
        if f:
            f.close()


def matches(ev: dict, session: str | None) -> bool:
    """--session: an id, or its unique prefix as status prints it."""
    return session is None or (ev.get("session") or "").startswith(session)
