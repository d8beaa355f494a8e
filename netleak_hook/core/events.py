"""Blocked-attempt events, pure: the kernel's record (struct nl_event in
bpf/netleak.h) decoded, its JSON form and BCC-style columns. The log the
daemon keeps of them is rundir/eventlog.py.
"""
from __future__ import annotations

import ipaddress
import time

from . import abi
from .errors import one_line

EVENT_SIZE = abi.EVENT.size

REASONS = abi.REASON.names      # enum nl_reason: code -> name
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
             f"may at once ({abi.SESSION_REDIRECTS:,}): refused until some close",
    "deny": "held by one of the session's --deny rules (io.netleak.deny): refused at "
            "connect or sendmsg, dropped otherwise",
}
HOOKS = abi.HOOK.names          # enum nl_hook
FAMILIES = {2: "ipv4", 10: "ipv6"}
PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 58: "icmp6", 132: "sctp"}



def decode(raw: bytes) -> dict:
    """One kernel record as a plain dict (times still in boot-clock ns)."""
    e = abi.EVENT.unpack(raw)
    family, daddr, proto = e["family"], e["daddr"], e["protocol"]
    if family == 2:
        addr: str | None = str(ipaddress.IPv4Address(daddr[:4]))
    elif family == 10:
        addr = str(ipaddress.IPv6Address(daddr))
    else:
        addr = None
    if addr is not None and not any(daddr):
        addr = None     # the socket hook has no destination
    return {
        "boot_ns": e["time_ns"], "cgroup_id": e["cgroup"], "sock_cgroup_id": e["sock_cgroup"],
        "pid": e["pid"] or None,
        "comm": e["comm"].split(b"\0", 1)[0].decode("utf-8", "replace") or None,
        "reason": REASONS.get(e["reason"], str(e["reason"])),
        "hook": HOOKS.get(e["hook"], str(e["hook"])),
        "family": FAMILIES.get(family, str(family) if family else None),
        "protocol": PROTOCOLS.get(proto, str(proto) if proto else None),
        "daddr": addr, "dport": e["dport"] or None, "suppressed": e["suppressed"],
        "rule_index": e["rule"] if e["reason"] == abi.REASON_DENY else None,
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
    rules, at = s.get("deny") or (), ev.get("rule_index")
    return {
        "time": iso(ts), "ts": round(ts, 6),
        "session": s.get("id"), "container": s.get("container") or None,
        "cgroup": s.get("cgroup"), "cgroup_id": ev["cgroup_id"], "iface": s.get("iface"),
        "pid": ev["pid"], "comm": ev["comm"],
        "family": ev["family"], "protocol": ev["protocol"],
        "daddr": ev["daddr"], "dport": ev["dport"],
        "reason": ev["reason"], "hook": ev["hook"], "suppressed": ev["suppressed"],
        # the --deny rule that held it, as the session keeps it
        "rule": rules[at] if at is not None and at < len(rules) else None,
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
            f"{one_line(dest_text(ev))}" +
            (f" ({one_line(ev['rule'])})" if ev.get("rule") else ""))


def held_back(ev: dict) -> str | None:
    """The note printed before an event that follows suppressed ones."""
    n = ev.get("suppressed") or 0
    if not n:
        return None
    return f"# {n} more events of session {ev.get('session') or '-'} suppressed by the rate limit"


def matches(ev: dict, session: str | None) -> bool:
    """--session: an id, or its unique prefix as status prints it."""
    return session is None or (ev.get("session") or "").startswith(session)
