"""A tiny DNS server for the tests, run as a script in a lab namespace.

  dnsd.py serve ADDR...          answer every A query with 192.0.2.77 and
                                 every AAAA with 2001:db8::77 (UDP and TCP)
  dnsd.py forward LISTEN UPSTREAM
                                 a stub resolver: relay UDP queries to
                                 UPSTREAM:53 by the main routing table (the
                                 path a DNS leak takes)

Prints "ready" once listening.
"""
from __future__ import annotations

import select
import socket
import struct
import sys

A_ANSWER = socket.inet_pton(socket.AF_INET, "192.0.2.77")
AAAA_ANSWER = socket.inet_pton(socket.AF_INET6, "2001:db8::77")


def answer(query: bytes) -> bytes:
    """A reply to QUERY (one question), or b"" when it is not one."""
    if len(query) < 12:
        return b""
    qid, _, qdcount = struct.unpack("!HHH", query[:6])
    if qdcount != 1:
        return b""
    at = 12
    while at < len(query) and query[at]:
        at += 1 + query[at]
    question = query[12:at + 5]
    if len(question) < at - 12 + 5:
        return b""
    qtype = struct.unpack("!H", query[at + 1:at + 3])[0]
    rdata = {1: A_ANSWER, 28: AAAA_ANSWER}.get(qtype)
    head = struct.pack("!HHHHHH", qid, 0x8180, 1, 1 if rdata else 0, 0, 0)
    if not rdata:
        return head + question
    return head + question + struct.pack("!HHHIH", 0xC00C, qtype, 1, 60, len(rdata)) + rdata


def query(name: str, qtype: int = 1, qid: int = 0x4E4C) -> bytes:
    """A query for NAME (used by the tests' clients)."""
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + labels + struct.pack("!HH", qtype, 1)


def recv_exact(c: socket.socket, n: int) -> bytes:
    """N bytes from a stream, or fewer if it ends first."""
    data = b""
    while len(data) < n:
        chunk = c.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def serve(addrs: list[str]) -> None:
    socks = []
    for addr in addrs:
        fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
        u = socket.socket(fam, socket.SOCK_DGRAM)
        u.bind((addr, 53))
        t = socket.socket(fam, socket.SOCK_STREAM)
        t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        t.bind((addr, 53))
        t.listen(16)
        socks += [u, t]
    print("ready", flush=True)
    while True:
        for s in select.select(socks, [], [])[0]:
            if s.type == socket.SOCK_DGRAM:
                data, peer = s.recvfrom(4096)
                reply = answer(data)
                if reply:
                    try:
                        s.sendto(reply, peer)
                    except OSError:     # no route back (a test took the link away)
                        pass
                continue
            c, _ = s.accept()
            c.settimeout(2)
            try:
                size = struct.unpack("!H", recv_exact(c, 2))[0]
                reply = answer(recv_exact(c, size))
                c.sendall(struct.pack("!H", len(reply)) + reply)
            except (OSError, struct.error):
                pass
            c.close()


def forward(listen: str, upstream: str) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((listen, 53))
    print("ready", flush=True)
    while True:
        data, peer = s.recvfrom(4096)
        up = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        up.settimeout(2)
        try:
            up.sendto(data, (upstream, 53))
            s.sendto(up.recv(4096), peer)
        except OSError:
            pass
        up.close()


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(sys.argv[2:])
    else:
        forward(sys.argv[2], sys.argv[3])
