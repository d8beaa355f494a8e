"""The proxy part's traffic: a sink and a source, a bulk sender, a bulk
fetcher and a connect loop.

Plain Python with nothing of netleak in it (the baseline runs it outside
netleak, so no netleak code may be in its path). The same program runs
under `netleak-exec --proxy` (its connect() goes to netleak's relay, which
speaks to the proxy) and outside it with --socks (it speaks SOCKS5 to the
proxy itself, no authentication, as the relay does: greeting, then the
request once the method is chosen).

  bulk.py sink ADDR PORT
      accepts; on each connection sends one line ("hi"), reads until end
      of file (recv_into a 1 MiB buffer), then answers "BYTES CPU" (bytes
      read, CPU seconds of its thread) and closes. Prints "ready" once
      listening.
  bulk.py send HOST PORT [--socks PROXY:PORT] (--seconds S | --bytes N)
      connects, reads the greeting, prints "start", sends from a 1 MiB
      memoryview for S seconds or N bytes, half-closes and waits for the
      sink's count: prints one JSON line {bytes, seconds, gbit, cpu,
      sink_cpu}, timed from the greeting to the count (everything sent
      has arrived).
  bulk.py source ADDR PORT
      accepts; on each connection reads one line, "SECONDS", answers one
      line ("hi"), sends from a 1 MiB buffer for that long (0: nothing),
      half-closes and waits for the client to close. The client speaks
      first, as an HTTP client does (a server that greets first meets
      Nagle's algorithm behind a proxy that writes its SOCKS5 reply and the
      greeting apart: a delayed ACK's 40 ms in every first byte). Prints
      "ready" once listening.
  bulk.py fetch HOST PORT [--socks PROXY:PORT] --seconds S
      connects (and SOCKS5), asks the source for S seconds of data, reads
      its "hi", prints "start" and reads the rest to the end of file
      (recv_into a 1 MiB buffer): prints one JSON line {bytes, seconds,
      mbps, cpu}, timed from the "hi" to the end of file (MB: 10^6 bytes).
  bulk.py connects HOST PORT N [--socks PROXY:PORT]
      N times in a row, with a source: connect (and SOCKS5), ask for 0
      seconds and read the "hi", timed; then half-close, read to the end
      and close, untimed. Prints one JSON line {n, median_ms, p25_ms,
      p75_ms, min_ms, max_ms}.

Every socket operation has a timeout (--timeout, 10 s): a stalled path
fails with a message and exit status 1, never hangs.
"""
from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import threading
import time

CHUNK = 1 << 20
GREETING = b"hi\n"


class Failed(Exception):
    pass


def recv_exact(s: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        more = s.recv(n - len(buf))
        if not more:
            raise Failed(f"connection closed after {len(buf)} of {n} bytes")
        buf += more
    return buf


def recv_line(s: socket.socket, limit: int = 256) -> bytes:
    """One line (the peer sends nothing else until we write)."""
    buf = b""
    while not buf.endswith(b"\n"):
        more = s.recv(limit)
        if not more:
            raise Failed(f"connection closed before a full line ({buf[:60]!r})")
        buf += more
        if len(buf) > limit:
            raise Failed(f"no end of line in {buf[:60]!r}")
    return buf


def socks5(s: socket.socket, host: str, port: int) -> None:
    """RFC 1928 CONNECT, method 0 (no authentication), IPv4 or IPv6."""
    s.sendall(b"\x05\x01\x00")
    if recv_exact(s, 2) != b"\x05\x00":
        raise Failed("the proxy refused method 0 (no authentication)")
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    atyp = 4 if fam == socket.AF_INET6 else 1
    s.sendall(bytes([5, 1, 0, atyp]) + socket.inet_pton(fam, host) + port.to_bytes(2, "big"))
    ver, rep, _, atyp = recv_exact(s, 4)
    if ver != 5 or rep != 0:
        raise Failed(f"SOCKS5 reply {rep} (version {ver})")
    if atyp == 1:
        recv_exact(s, 4 + 2)
    elif atyp == 4:
        recv_exact(s, 16 + 2)
    elif atyp == 3:
        recv_exact(s, recv_exact(s, 1)[0] + 2)
    else:
        raise Failed(f"SOCKS5 reply with address type {atyp}")


def split(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]"), int(port)


def open_conn(host: str, port: int, via: str | None, timeout: float,
              ask: bytes = b"") -> socket.socket:
    """Connected to HOST:PORT (through the SOCKS5 proxy VIA), ASK sent
    (a source's request), the greeting read."""
    target = split(via) if via else (host, port)
    fam = socket.AF_INET6 if ":" in target[0] else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        s.connect(target)
        if via:
            socks5(s, host, port)
        if ask:
            s.sendall(ask)
        line = recv_exact(s, len(GREETING))     # data may follow at once
        if line != GREETING:
            raise Failed(f"greeting {line[:60]!r}, expected {GREETING!r}")
        return s
    except BaseException:
        s.close()
        raise


def finish(s: socket.socket, timeout: float) -> bytes:
    """Half-close, then everything the sink still says, until it closes."""
    s.shutdown(socket.SHUT_WR)
    s.settimeout(timeout)
    out = b""
    while True:
        more = s.recv(4096)
        if not more:
            return out
        out += more


# ----- sink -----

def serve(c: socket.socket) -> None:
    buf = bytearray(CHUNK)
    n = 0
    try:
        c.settimeout(120)
        c.sendall(GREETING)
        t0 = time.thread_time()
        while True:
            got = c.recv_into(buf)
            if not got:
                break
            n += got
        c.sendall(f"{n} {time.thread_time() - t0:.6f}\n".encode())
    except OSError:
        pass
    finally:
        c.close()


def source_serve(c: socket.socket) -> None:
    mv = memoryview(bytearray(CHUNK))
    try:
        c.settimeout(120)
        seconds = float(recv_line(c, 64))
        c.sendall(GREETING)
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            c.send(mv)
        c.shutdown(socket.SHUT_WR)
        c.recv(1)               # until the client closes: nothing is cut short
    except (OSError, ValueError, Failed):
        pass
    finally:
        c.close()


def sink(addr: str, port: int, handler=serve) -> int:
    fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, port))
    s.listen(1024)
    threading.stack_size(512 * 1024)
    print("ready", flush=True)
    while True:
        c, _ = s.accept()
        threading.Thread(target=handler, args=(c,), daemon=True).start()


# ----- sender -----

def send(host: str, port: int, via: str | None, seconds: float | None,
         nbytes: int | None, timeout: float) -> dict:
    mv = memoryview(bytearray(CHUNK))
    s = open_conn(host, port, via, timeout)
    try:
        print("start", flush=True)
        t0 = time.perf_counter()
        c0 = time.process_time()
        sent = 0
        if seconds is not None:
            end = t0 + seconds
            while True:
                sent += s.send(mv)
                if time.perf_counter() >= end:
                    break
        else:
            while sent < nbytes:
                sent += s.send(mv[:min(CHUNK, nbytes - sent)])
        reply = finish(s, max(timeout, 30.0))
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        s.close()
    try:
        got, sink_cpu = reply.split()
        got, sink_cpu = int(got), float(sink_cpu)
    except ValueError:
        raise Failed(f"the sink answered {reply[:60]!r}, not its count") from None
    if got != sent:
        raise Failed(f"sent {sent} bytes, the sink counted {got}")
    return {"bytes": got, "seconds": dt, "gbit": got * 8 / dt / 1e9, "cpu": cpu,
            "sink_cpu": sink_cpu}


def fetch(host: str, port: int, via: str | None, seconds: float, timeout: float) -> dict:
    buf = bytearray(CHUNK)
    s = open_conn(host, port, via, timeout, f"{seconds}\n".encode())
    try:
        t0 = time.perf_counter()
        c0 = time.process_time()
        print("start", flush=True)
        s.settimeout(max(timeout, seconds + 30.0))
        got = 0
        while True:
            n = s.recv_into(buf)
            if not n:
                break
            got += n
        dt = time.perf_counter() - t0
        cpu = time.process_time() - c0
    finally:
        s.close()
    if not got:
        raise Failed("the source sent nothing")
    return {"bytes": got, "seconds": dt, "mbps": got / dt / 1e6, "cpu": cpu}


def connects(host: str, port: int, n: int, via: str | None, timeout: float) -> dict:
    ms = []
    for _ in range(n):
        t0 = time.perf_counter()
        s = open_conn(host, port, via, timeout, b"0\n")
        ms.append((time.perf_counter() - t0) * 1000)
        try:
            finish(s, timeout)
        finally:
            s.close()
    q = statistics.quantiles(ms, n=4) if len(ms) >= 2 else [ms[0]] * 3
    return {"n": n, "median_ms": statistics.median(ms), "p25_ms": q[0], "p75_ms": q[2],
            "min_ms": min(ms), "max_ms": max(ms)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="bench/bulk.py")
    sub = ap.add_subparsers(dest="mode", required=True)
    for name in ("sink", "source"):
        a = sub.add_parser(name)
        a.add_argument("addr")
        a.add_argument("port", type=int)
    for name in ("send", "fetch", "connects"):
        p = sub.add_parser(name)
        p.add_argument("host")
        p.add_argument("port", type=int)
        if name == "connects":
            p.add_argument("n", type=int)
        elif name == "fetch":
            p.add_argument("--seconds", type=float, required=True)
        else:
            how = p.add_mutually_exclusive_group(required=True)
            how.add_argument("--seconds", type=float)
            how.add_argument("--bytes", type=int)
        p.add_argument("--socks", metavar="PROXY:PORT", help="do the SOCKS5 handshake here")
        p.add_argument("--timeout", type=float, default=10.0)
    o = ap.parse_args(argv)
    try:
        if o.mode == "sink":
            return sink(o.addr, o.port)
        if o.mode == "source":
            return sink(o.addr, o.port, source_serve)
        if o.mode == "send":
            out = send(o.host, o.port, o.socks, o.seconds, o.bytes, o.timeout)
        elif o.mode == "fetch":
            out = fetch(o.host, o.port, o.socks, o.seconds, o.timeout)
        else:
            out = connects(o.host, o.port, o.n, o.socks, o.timeout)
    except (OSError, Failed) as e:
        print(f"bulk.py {o.mode}: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
