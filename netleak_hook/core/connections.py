"""`netleak connections`: one row per socket of the controlled sessions,
its table, and what --follow streams (pure).

The kernel keeps the figures per socket: TCP's in its own tcp_info (bytes
acknowledged and received, segments), UDP's in netleak's socket storage
(`flows`, bpf/netleak.h: struct nl_flowstat), both read by one socket
diagnostics dump; nothing is sent per packet. A row's DIAG is a socket of
that dump (kernel/sockdiag.Diag, taken by its attributes).
"""
from __future__ import annotations

import socket

from . import abi

TCP_STATES = {1: "established", 2: "syn-sent", 3: "syn-recv", 4: "fin-wait1",
              5: "fin-wait2", 6: "time-wait", 7: "closed", 8: "close-wait", 9: "last-ack",
              11: "closing"}
UDP_STATES = {1: "connected", 7: "unconnected"}
UPDATE_EVERY = 1.0      # --follow: a connection's updates at most this often (seconds)


def endpoint(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def flowstat(raw: bytes | None) -> dict | None:
    """A socket's struct nl_flowstat, or None."""
    if not raw or len(raw) < abi.FLOWSTAT.size:
        return None
    return abi.FLOWSTAT.unpack(raw)


def row(diag, session: dict, owner: tuple[int, str, str] | None = None,
        redirect: tuple[str, int] | None = None, name: str | None = None,
        boot_now_ns: int = 0) -> dict:
    """The row of one socket of SESSION (id, iface). OWNER: (pid, comm,
    user) of a process holding it; REDIRECT: where the program asked to
    connect, when the programs sent it to the relay (proxy mode) or to a
    resolver; NAME: the host name a proxy-mode program asked for."""
    tcp = diag.protocol == socket.IPPROTO_TCP
    fs = flowstat(diag.storage)
    if tcp and diag.tcp is not None:
        acked, received, segs_out, segs_in = diag.tcp
        # the SYN (and a FIN) count as a byte each in what is acknowledged
        tx_bytes, rx_bytes = max(0, acked - 1), received
        tx_packets, rx_packets = segs_out, segs_in
    elif fs is not None:
        tx_bytes, rx_bytes = fs["tx_bytes"], fs["rx_bytes"]
        tx_packets, rx_packets = fs["tx_packets"], fs["rx_packets"]
    else:
        tx_bytes = rx_bytes = tx_packets = rx_packets = 0
    pid, comm, user = owner or ((fs["pid"] or None) if fs else None, None, None)
    connected = diag.dport != 0
    first = fs["first_ns"] if fs else 0
    return {
        "session": session.get("id"), "iface": session.get("iface") or None,
        "pid": pid, "comm": comm, "user": user,
        "proto": "tcp" if tcp else "udp",
        "family": "ipv4" if diag.family == socket.AF_INET else "ipv6",
        "local": endpoint(diag.src, diag.sport),
        "remote": endpoint(diag.dst, diag.dport) if connected else None,
        "dest": endpoint(*redirect) if redirect else None,
        "name": name,
        "state": (TCP_STATES if tcp else UDP_STATES).get(diag.state, str(diag.state)),
        "tx_bytes": tx_bytes, "rx_bytes": rx_bytes,
        "tx_packets": tx_packets, "rx_packets": rx_packets,
        "age": round((boot_now_ns - first) / 1e9, 1) if first and boot_now_ns >= first
        else None,
        "cookie": diag.cookie,
    }


def traffic(r: dict) -> int:
    return r["tx_bytes"] + r["rx_bytes"]


def ordered(rows: list[dict]) -> list[dict]:
    """By traffic, the busiest first (then by session and socket)."""
    return sorted(rows, key=lambda r: (-traffic(r), r["session"] or "", r["cookie"]))


def far_end(r: dict) -> str:
    """What the program talks to: in proxy mode the name it asked for (or
    the real destination), not the relay."""
    if r.get("name") and r.get("dest"):
        return f"{r['name']}:{r['dest'].rsplit(':', 1)[1]}"
    return r.get("dest") or r.get("remote") or "*"


def size_text(n: int) -> str:
    for unit, size in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if n >= size:
            v = n / size
            return f"{v:.1f}{unit}" if v < 10 else f"{int(v)}{unit}"
    return str(n)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


HEAD = (f"{'SESSION':<8} {'PID':>7} {'COMM':<10} {'PROTO':<5} {'TX':>6} {'RX':>6} "
        f"{'AGE':>5} {'STATE':<5} ")


def table(rows: list[dict], width: int = 80) -> str:
    """The rows under WIDTH columns, busiest first; the far end takes what
    is left (its start cut when long)."""
    from .errors import one_line
    room = max(12, width - len(HEAD) - 1)
    lines = [HEAD + "REMOTE"]
    for r in ordered(rows):
        proto = r["proto"] + ("6" if r["family"] == "ipv6" else "")
        age = "-" if r["age"] is None else _age(r["age"])
        lines.append(
            f"{one_line(r['session'] or '-'):<8.8} {r['pid'] or '-':>7} "
            f"{one_line(r['comm'] or '-'):<10.10} {proto:<5} "
            f"{size_text(r['tx_bytes']):>6} {size_text(r['rx_bytes']):>6} {age:>5} "
            f"{r['state'][:5]:<5} {_fit(one_line(far_end(r)), room)}")
    return "\n".join(lines)


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


class Follow:
    """What --follow prints: first the current rows ("current"), then each
    connection's "open", its "update"s (at most one every EVERY seconds,
    and only when its figures moved) and its "close" (with the last
    figures seen)."""

    FIGURES = ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets", "state")

    def __init__(self, every: float = UPDATE_EVERY) -> None:
        self.every = every
        self.known: dict[int, dict] = {}     # cookie -> the row last printed
        self.sent: dict[int, float] = {}     # cookie -> when it was last printed
        self.latest: dict[int, dict] = {}    # cookie -> the row last seen
        self.started = False

    def step(self, rows: list[dict], now: float) -> list[dict]:
        out: list[dict] = []
        seen = {r["cookie"]: r for r in rows}
        self.latest.update(seen)
        for cookie, r in seen.items():
            old = self.known.get(cookie)
            if old is None:
                out.append({"event": "open" if self.started else "current", **r})
            elif any(old[k] != r[k] for k in self.FIGURES) and \
                    now - self.sent.get(cookie, 0.0) >= self.every:
                out.append({"event": "update", **r})
            else:
                continue
            self.known[cookie] = r
            self.sent[cookie] = now
        for cookie in [c for c in self.known if c not in seen]:
            self.known.pop(cookie)
            out.append({"event": "close", **self.latest.pop(cookie)})
            self.sent.pop(cookie, None)
        self.started = True
        return out


def counts(rows: list[dict]) -> dict[tuple[str, str], int]:
    """Connections by (session, protocol), for the metrics."""
    out: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["session"], r["proto"])
        out[key] = out.get(key, 0) + 1
    return out
