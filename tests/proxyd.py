"""A small SOCKS5 (RFC 1928, user/password of RFC 1929) and HTTP CONNECT
proxy for the tests, run as a script in a lab namespace. It imports nothing
from the project: an independent implementation to check its client.

  proxyd.py --kind socks5|http --listen ADDR:PORT [--listen ...]
            [--source ADDR ...] [--user U [--password P]]
            [--hosts NAME=ADDR ...] [--log FILE]

  --listen   repeatable; IPv6 in brackets ([2001:db8::1]:1080, [::]:0).
             Port 0 picks a free port. IPv6 listeners are IPv6-only, so
             0.0.0.0:P and [::]:P can both be given.
  --source   outgoing connections are bound to this address (at most one
             per family; the one of the destination's family is used).
  --user, --password
             require authentication: SOCKS5 method 2 only (RFC 1929), HTTP
             Proxy-Authorization: Basic (else 407). Without: SOCKS5 method 0,
             HTTP no authentication.
  --hosts    NAME=ADDR, the only names the proxy resolves (SOCKS5 ATYP 3,
             HTTP CONNECT host names); no system resolver. A name given
             several times is tried address by address, in order. Unknown
             names: SOCKS5 reply 4, HTTP 502.
  --log      append the connect lines to FILE too.

Prints "ready PORT [PORT...]" (the --listen order) once listening, then one
line per tunnel request, to stdout and to the --log file:

  connect KIND CLIENT DEST_HOST DEST_PORT RESULT

CLIENT is ADDR:PORT ([ADDR]:PORT for IPv6), DEST_HOST is what the client
asked for (a name, or an address without brackets), RESULT is "ok" or one
word: an errno name (ECONNREFUSED, ENETUNREACH, EHOSTUNREACH, ETIMEDOUT...),
unknown-host, unsupported-command-N, auth-required or auth-failed (HTTP; a
SOCKS5 client that fails authentication never gets to ask). The line is in
the --log file before the client gets its answer (stdout is written by a
thread of its own, so a reader that stops reading never stalls the proxy).

SOCKS5 replies: 5 refused, 3 network unreachable, 4 host unreachable (also
unknown names and connect timeouts), 7 command not supported (all but
CONNECT), 8 address type not supported, 1 anything else. Once a tunnel is
open, both directions are copied with splice(2) through a pipe, one thread
each; an EOF is passed on as a half-close, a reset as a reset.
"""
from __future__ import annotations

import argparse
import base64
import ctypes
import errno
import fcntl
import hmac
import ipaddress
import os
import queue
import resource
import selectors
import signal
import socket
import struct
import sys
import threading
import time

HANDSHAKE_TIMEOUT = 30.0
CONNECT_TIMEOUT = 10.0
LINGER_SECONDS = 2.0
MAX_HEAD = 64 * 1024
PIPE_SIZES = (1 << 20, 256 << 10)
IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)
SPLICE_F_MOVE = getattr(os, "SPLICE_F_MOVE", 1)

# SOCKS5 reply codes (RFC 1928 section 6)
REP_OK, REP_FAILURE, REP_NET_UNREACH, REP_HOST_UNREACH = 0, 1, 3, 4
REP_REFUSED, REP_COMMAND, REP_ATYP = 5, 7, 8


class Stop(Exception):
    """SIGTERM or SIGINT."""


class Unknown(Exception):
    """A destination name not in --hosts."""


# ---------------------------------------------------------------- settings

class Config:
    kind = "socks5"
    sources: dict[int, str] = {}
    hosts: dict[str, list[str]] = {}
    credential: bytes | None = None     # b"user:password" when required
    user = b""
    password = b""


CFG = Config()


def split_hostport(text: str) -> tuple[str, str]:
    """'[v6]:port' or 'host:port' as (host, port); ValueError if neither."""
    if text.startswith("["):
        end = text.find("]")
        if end < 0 or text[end + 1:end + 2] != ":":
            raise ValueError(text)
        return text[1:end], text[end + 2:]
    host, sep, port = text.rpartition(":")
    if not sep or ":" in host:
        raise ValueError(text)
    return host, port


def parse_port(text: str, allow_zero: bool) -> int:
    if not text.isdigit() or len(text) > 5:
        raise ValueError(text)
    port = int(text)
    if not (0 if allow_zero else 1) <= port <= 0xFFFF:
        raise ValueError(text)
    return port


def literal(host: str) -> str | None:
    """HOST as a canonical IPv4/IPv6 address string, or None if no address."""
    try:
        a = ipaddress.ip_address(host)
    except ValueError:
        return None
    return str(a)


def family_of(addr: str) -> int:
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def name_key(name: str) -> str:
    return name.rstrip(".").lower()


def show(raw: bytes) -> str:
    """RAW as one printable log word."""
    if not raw:
        return '""'
    return "".join(chr(b) if 0x21 <= b <= 0x7E and b != 0x5C else f"\\x{b:02x}"
                   for b in raw)


def show_peer(addr: tuple) -> str:
    host = addr[0].split("%", 1)[0]
    return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"


# ---------------------------------------------------------------- logging

_stdout_lines: queue.Queue[str] = queue.Queue()
_log_lock = threading.Lock()
_log_file = None


def _stdout_writer() -> None:
    while True:
        line = _stdout_lines.get()
        try:
            sys.stdout.write(line)
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        finally:
            _stdout_lines.task_done()


def log(kind: str, client: tuple, host: str, port: int, result: str) -> None:
    line = f"connect {kind} {show_peer(client)} {host} {port} {result}\n"
    if _log_file is not None:
        with _log_lock:
            try:
                _log_file.write(line)
                _log_file.flush()
            except (OSError, ValueError) as e:
                print(f"proxyd: --log: {e}", file=sys.stderr, flush=True)
    _stdout_lines.put(line)


def result_word(err: BaseException) -> str:
    if isinstance(err, Unknown):
        return "unknown-host"
    if isinstance(err, TimeoutError) and not getattr(err, "errno", None):
        return "ETIMEDOUT"
    code = getattr(err, "errno", None)
    return errno.errorcode.get(code, "error") if code else "error"


def socks_rep(err: BaseException) -> int:
    if isinstance(err, Unknown):
        return REP_HOST_UNREACH
    if isinstance(err, TimeoutError) and not getattr(err, "errno", None):
        return REP_HOST_UNREACH
    code = getattr(err, "errno", None)
    if code == errno.ECONNREFUSED:
        return REP_REFUSED
    if code == errno.ENETUNREACH:
        return REP_NET_UNREACH
    if code in (errno.EHOSTUNREACH, errno.ETIMEDOUT, errno.EHOSTDOWN):
        return REP_HOST_UNREACH
    return REP_FAILURE


# ---------------------------------------------------------------- sockets

class Reader:
    """Buffered reads from the client during the handshake; what is left in
    the buffer afterwards came pipelined with the request."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buf = sock, b""

    def more(self) -> bool:
        chunk = self.sock.recv(65536)
        self.buf += chunk
        return bool(chunk)

    def exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            if not self.more():
                raise EOFError
        head, self.buf = self.buf[:n], self.buf[n:]
        return head


def resolve(host: str) -> list[str]:
    """The addresses for HOST: itself if an address, else from --hosts."""
    addr = literal(host)
    if addr is not None:
        return [addr]
    found = CFG.hosts.get(name_key(host))
    if not found:
        raise Unknown(host)
    return found


def open_outgoing(addrs: list[str], port: int) -> socket.socket:
    """A connected socket to one of ADDRS (in order), bound to --source."""
    last: BaseException = OSError(errno.EHOSTUNREACH, "no address")
    for addr in addrs:
        fam = family_of(addr)
        s = socket.socket(fam, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            source = CFG.sources.get(fam)
            if source:
                try:
                    s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
                except OSError:
                    pass
                s.bind((source, 0))
            s.settimeout(CONNECT_TIMEOUT)
            s.connect((addr, port))
            s.settimeout(None)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return s
        except OSError as e:
            s.close()
            last = e
    raise last


def refuse(sock: socket.socket, answer: bytes) -> None:
    """Send ANSWER and close, draining what the client still sends for a
    moment so that the answer is not lost to a reset."""
    try:
        sock.settimeout(LINGER_SECONDS)
        if answer:
            sock.sendall(answer)
        sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + LINGER_SECONDS
        taken = 0
        while taken < (1 << 20):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            sock.settimeout(left)
            chunk = sock.recv(65536)
            if not chunk:
                break
            taken += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()


# ---------------------------------------------------------------- relay

def _libc_connect():
    try:
        fn = ctypes.CDLL(None, use_errno=True).connect
        fn.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint)
        fn.restype = ctypes.c_int
        return fn
    except (OSError, AttributeError):
        return None


_CONNECT = _libc_connect()
_UNSPEC = ctypes.create_string_buffer(16)       # a sockaddr, sa_family 0


def reset(sock: socket.socket) -> bool:
    """Abort SOCK: a reset to its peer (no FIN before it), and every thread
    blocked on it woken; connect(AF_UNSPEC) does both (tcp_disconnect).
    False if that failed: then SO_LINGER 0 makes the close a reset, and
    shutdown(SHUT_RD) wakes the readers (silently), not a blocked writer."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    if _CONNECT is not None:
        try:
            if _CONNECT(sock.fileno(), _UNSPEC, 16) == 0:
                return True
        except (OSError, ValueError):
            pass
    try:
        sock.shutdown(socket.SHUT_RD)
    except OSError:
        pass
    return False


def make_pipe() -> tuple[int, int, int]:
    r, w = os.pipe2(os.O_CLOEXEC)
    for size in PIPE_SIZES:
        try:
            fcntl.fcntl(w, F_SETPIPE_SZ, size)
            break
        except OSError:
            continue
    try:
        size = fcntl.fcntl(w, F_GETPIPE_SZ)
    except OSError:
        size = 65536
    return r, w, size


class Tunnel:
    def __init__(self, client: socket.socket, dest: socket.socket) -> None:
        self.client, self.dest = client, dest
        self._lock = threading.Lock()
        self._aborted = False
        self._ended = {client: threading.Event(), dest: threading.Event()}

    def abort(self, dead: socket.socket, src: socket.socket) -> None:
        """DEAD failed (reset, timeout...) in the pump reading SRC: reset
        the other side, and wake everything blocked on either."""
        with self._lock:
            if self._aborted:
                return
            self._aborted = True
        other = self.dest if dead is self.client else self.client
        other_reset = reset(other)
        if reset(dead) and other_reset:
            return
        # fallback: a pump blocked writing to a full socket is not woken yet
        peer_pump = self._ended[self.dest if src is self.client else self.client]
        if not peer_pump.wait(1.0):
            for s in (other, dead):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def pump(self, src: socket.socket, dst: socket.socket) -> None:
        """Copy SRC to DST until EOF (then half-close DST) or an error."""
        sfd, dfd = src.fileno(), dst.fileno()
        r = w = -1
        try:
            try:
                r, w, size = make_pipe()
            except OSError:                 # out of descriptors: give up
                self.abort(src, src)
                return
            while True:
                try:
                    n = os.splice(sfd, w, size, flags=SPLICE_F_MOVE)
                except OSError:
                    self.abort(src, src)
                    return
                if n == 0:
                    break
                while n:
                    try:
                        n -= os.splice(r, dfd, n, flags=SPLICE_F_MOVE)
                    except OSError:
                        self.abort(dst, src)
                        return
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        finally:
            for fd in (r, w):
                if fd >= 0:
                    os.close(fd)
            self._ended[src].set()

    def run(self) -> None:
        back = threading.Thread(target=self.pump, args=(self.dest, self.client),
                                daemon=True)
        try:
            back.start()
        except RuntimeError:                # no thread to be had
            reset(self.dest)
            reset(self.client)
            self.client.close()
            self.dest.close()
            return
        try:
            self.pump(self.client, self.dest)
        finally:
            back.join()
            self.client.close()
            self.dest.close()


def open_tunnel(client: socket.socket, dest: socket.socket, answer: bytes,
                pipelined: bytes) -> None:
    """Answer the client, pass on what it sent early, then relay."""
    try:
        client.settimeout(None)
        client.sendall(answer)
        if pipelined:
            dest.sendall(pipelined)
    except OSError:
        reset(dest)
        dest.close()
        client.close()
        return
    Tunnel(client, dest).run()


# ---------------------------------------------------------------- SOCKS5

def socks_reply(rep: int, bound: tuple | None = None) -> bytes:
    if bound is None:
        return bytes([5, rep, 0, 1]) + bytes(6)
    host = bound[0].split("%", 1)[0]
    fam = family_of(host)
    atyp = 4 if fam == socket.AF_INET6 else 1
    return bytes([5, rep, 0, atyp]) + socket.inet_pton(fam, host) \
        + struct.pack("!H", bound[1])


def serve_socks(client: socket.socket, peer: tuple) -> None:
    rd = Reader(client)
    ver, nmethods = rd.exact(2)
    if ver != 5:
        client.close()
        return
    methods = rd.exact(nmethods)
    want = 2 if CFG.credential is not None else 0
    if want not in methods:
        refuse(client, b"\x05\xff")
        return
    client.sendall(bytes([5, want]))
    if want == 2:                       # RFC 1929
        ver, ulen = rd.exact(2)
        user = rd.exact(ulen)
        password = rd.exact(rd.exact(1)[0])
        good = ver == 1 and hmac.compare_digest(user, CFG.user) \
            and hmac.compare_digest(password, CFG.password)
        if not good:
            refuse(client, b"\x01\x01")
            return
        client.sendall(b"\x01\x00")
    ver, cmd, _, atyp = rd.exact(4)
    if ver != 5:
        client.close()
        return
    if atyp == 1:
        raw = rd.exact(4)
        host = socket.inet_ntop(socket.AF_INET, raw)
    elif atyp == 4:
        raw = rd.exact(16)
        host = socket.inet_ntop(socket.AF_INET6, raw)
    elif atyp == 3:
        raw = rd.exact(rd.exact(1)[0])
        host = raw.decode("utf-8", "surrogateescape")
    else:
        refuse(client, socks_reply(REP_ATYP))
        return
    (port,) = struct.unpack("!H", rd.exact(2))
    shown = show(raw) if atyp == 3 else host
    if cmd != 1:
        log("socks5", peer, shown, port, f"unsupported-command-{cmd}")
        refuse(client, socks_reply(REP_COMMAND))
        return
    try:
        dest = open_outgoing(resolve(host), port)
    except (OSError, Unknown) as e:
        log("socks5", peer, shown, port, result_word(e))
        refuse(client, socks_reply(socks_rep(e)))
        return
    try:
        bound = dest.getsockname()
    except OSError as e:
        log("socks5", peer, shown, port, result_word(e))
        dest.close()
        refuse(client, socks_reply(REP_FAILURE))
        return
    log("socks5", peer, shown, port, "ok")
    open_tunnel(client, dest, socks_reply(REP_OK, bound), rd.buf)


# ---------------------------------------------------------------- HTTP

def http_answer(code: int, reason: str, *extra: str) -> bytes:
    lines = [f"HTTP/1.1 {code} {reason}", *extra, "Content-Length: 0",
             "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1")


def serve_http(client: socket.socket, peer: tuple) -> None:
    rd = Reader(client)
    while True:
        ends = [(i, len(sep)) for sep in (b"\r\n\r\n", b"\n\n")
                if (i := rd.buf.find(sep)) >= 0]
        if ends:
            at, seplen = min(ends)
            head, rd.buf = rd.buf[:at], rd.buf[at + seplen:]
            break
        if len(rd.buf) > MAX_HEAD:
            refuse(client, http_answer(431, "Request Header Fields Too Large"))
            return
        if not rd.more():
            client.close()
            return
    lines = head.decode("latin-1").replace("\r\n", "\n").split("\n")
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        refuse(client, http_answer(400, "Bad Request"))
        return
    method, target, _ = parts
    if method != "CONNECT":
        refuse(client, http_answer(405, "Method Not Allowed", "Allow: CONNECT"))
        return
    try:
        host, port_text = split_hostport(target)
        port = parse_port(port_text, allow_zero=False)
        if not host:
            raise ValueError(target)
    except ValueError:
        refuse(client, http_answer(400, "Bad Request"))
        return
    shown = show(host.encode("latin-1"))
    if CFG.credential is not None:
        given = None
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep and name.strip().lower() == "proxy-authorization":
                given = value.strip()
        ok = False
        if given is not None:
            scheme, _, token = given.partition(" ")
            if scheme.lower() == "basic":
                try:
                    decoded = base64.b64decode(token.strip(), validate=True)
                    ok = hmac.compare_digest(decoded, CFG.credential)
                except ValueError:
                    ok = False
        if not ok:
            log("http", peer, shown, port,
                "auth-required" if given is None else "auth-failed")
            refuse(client, http_answer(407, "Proxy Authentication Required",
                                       'Proxy-Authenticate: Basic realm="test"'))
            return
    try:
        dest = open_outgoing(resolve(host), port)
    except (OSError, Unknown) as e:
        log("http", peer, shown, port, result_word(e))
        timeout = isinstance(e, TimeoutError) or getattr(e, "errno", None) == errno.ETIMEDOUT
        refuse(client, http_answer(504, "Gateway Timeout") if timeout
               else http_answer(502, "Bad Gateway"))
        return
    log("http", peer, shown, port, "ok")
    open_tunnel(client, dest, b"HTTP/1.1 200 Connection established\r\n\r\n", rd.buf)


# ---------------------------------------------------------------- main

def handle(client: socket.socket, peer: tuple) -> None:
    try:
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.settimeout(HANDSHAKE_TIMEOUT)
        (serve_socks if CFG.kind == "socks5" else serve_http)(client, peer)
    except (OSError, EOFError):
        client.close()
    except Exception as e:                          # never take the proxy down
        print(f"proxyd: {show_peer(peer)}: {type(e).__name__}: {e}",
              file=sys.stderr, flush=True)
        client.close()


def listen_on(text: str) -> socket.socket:
    host, port_text = split_hostport(text)
    port = parse_port(port_text, allow_zero=True)
    fam, kind, proto, _, addr = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM,
        flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV)[0]
    s = socket.socket(fam, kind | socket.SOCK_CLOEXEC, proto)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if fam == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(addr)
    s.listen(1024)
    s.setblocking(False)
    return s


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="SOCKS5 / HTTP CONNECT proxy for the tests")
    p.add_argument("--kind", required=True, choices=("socks5", "http"))
    p.add_argument("--listen", required=True, action="append", metavar="ADDR:PORT")
    p.add_argument("--source", action="append", default=[], metavar="ADDR")
    p.add_argument("--user")
    p.add_argument("--password", help="the password, or env:NAME to take it from the "
                   "environment variable NAME (off the command line)")
    p.add_argument("--hosts", action="extend", nargs="+", default=[], metavar="NAME=ADDR")
    p.add_argument("--log", metavar="FILE")
    args = p.parse_args(argv)
    for text in args.listen:
        try:
            host, port = split_hostport(text)
            parse_port(port, allow_zero=True)
            if literal(host.split("%", 1)[0]) is None:
                raise ValueError
        except ValueError:
            p.error(f"--listen {text!r}: want ADDR:PORT or [ADDR6]:PORT, ADDR numeric")
    sources: dict[int, str] = {}
    for text in args.source:
        addr = literal(text.strip("[]"))
        if addr is None:
            p.error(f"--source {text!r} is not an address")
        fam = family_of(addr)
        if fam in sources:
            p.error(f"--source: two addresses of one family ({sources[fam]}, {addr})")
        sources[fam] = addr
    hosts: dict[str, list[str]] = {}
    for text in args.hosts:
        name, sep, value = text.partition("=")
        addr = literal(value.strip().strip("[]"))
        if not sep or not name or addr is None:
            p.error(f"--hosts {text!r}: want NAME=ADDR with a numeric ADDR")
        hosts.setdefault(name_key(name), []).append(addr)
    if args.password is not None and args.password.startswith("env:"):
        args.password = os.environ.get(args.password[4:], "")
    if args.password is not None and args.user is None:
        p.error("--password needs --user")
    for what in ("user", "password"):
        v = getattr(args, what)
        if v is not None and len(v.encode("utf-8", "surrogateescape")) > 255:
            p.error(f"--{what} is longer than 255 bytes")
    CFG.kind, CFG.sources, CFG.hosts = args.kind, sources, hosts
    if args.user is not None:
        CFG.user = args.user.encode("utf-8", "surrogateescape")
        CFG.password = (args.password or "").encode("utf-8", "surrogateescape")
        CFG.credential = CFG.user + b":" + CFG.password
    return args


def main(argv: list[str] | None = None) -> int:
    global _log_file
    args = parse_args(argv)

    def stop(signum, frame):
        raise Stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:                                # each tunnel holds 6 descriptors
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (OSError, ValueError):
        pass
    threading.stack_size(512 * 1024)
    listeners = []
    try:
        if args.log:
            _log_file = open(args.log, "a", buffering=1, encoding="utf-8",
                             errors="backslashreplace")
        for text in args.listen:
            try:
                listeners.append(listen_on(text))
            except OSError as e:
                print(f"proxyd: --listen {text}: {e.strerror or e}", file=sys.stderr)
                return 1
        sel = selectors.DefaultSelector()
        for s in listeners:
            sel.register(s, selectors.EVENT_READ)
        print("ready", *(s.getsockname()[1] for s in listeners), flush=True)
        threading.Thread(target=_stdout_writer, daemon=True).start()
        while True:
            for key, _ in sel.select():
                try:
                    conn, peer = key.fileobj.accept()
                except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                    continue
                except OSError as e:          # EMFILE and the like: pause
                    print(f"proxyd: accept: {e}", file=sys.stderr, flush=True)
                    time.sleep(0.05)
                    continue
                threading.Thread(target=handle, args=(conn, peer), daemon=True).start()
    except (Stop, KeyboardInterrupt):
        pass
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        for s in listeners:
            s.close()
    deadline = time.monotonic() + 1.0         # let queued lines out
    while _stdout_lines.unfinished_tasks and time.monotonic() < deadline:
        time.sleep(0.01)
    with _log_lock:
        try:
            sys.stdout.flush()
        except (OSError, ValueError):
            pass
        if _log_file is not None:
            _log_file.close()
    # daemon threads may sit in splice(2): leave without waiting for them
    os._exit(0)


if __name__ == "__main__":
    sys.exit(main())
