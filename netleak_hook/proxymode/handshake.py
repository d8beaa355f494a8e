"""Client handshakes for proxy mode, sans I/O: SOCKS5 (RFC 1928, with the
user/password method of RFC 1929) and HTTP CONNECT (RFC 9110 9.3.6).

A Handshake says what to send (start, then whatever feed returns) and
reads what the proxy answers, in pieces of any size; once `done`, the
tunnel is open and `leftover` holds the destination's first bytes."""
from __future__ import annotations

import base64
import ipaddress
import struct

from ..core.errors import one_line

MAX_HEADERS = 16 * 1024

# RFC 1928 section 6, REP
SOCKS_REPLIES = {
    1: "general SOCKS server failure",
    2: "connection not allowed by ruleset",
    3: "network unreachable",
    4: "host unreachable",
    5: "connection refused by destination",
    6: "TTL expired",
    7: "command not supported",
    8: "address type not supported",
}
_NO_AUTH, _USER_PASS, _NO_METHOD = 0x00, 0x02, 0xFF
_ATYP_IPV4, _ATYP_NAME, _ATYP_IPV6 = 1, 3, 4


class ProxyError(Exception):
    """The proxy refused, or answered something else than the protocol."""

    def __init__(self, message: str) -> None:
        message = one_line(message)
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _destination(host: str) -> tuple[int, bytes]:
    """HOST as a SOCKS5 ATYP and address bytes; ProxyError when unusable."""
    if ":" in host:
        try:
            a = ipaddress.IPv6Address(host)
        except ValueError:
            raise ProxyError(f"destination {host[:60]!r} is not an IPv6 address "
                             f"(give it without brackets or %zone)") from None
        if a.scope_id:
            raise ProxyError(f"destination {host[:60]!r}: a %zone is not taken")
        return _ATYP_IPV6, a.packed
    try:
        return _ATYP_IPV4, ipaddress.IPv4Address(host).packed
    except ValueError:
        pass
    name = host.encode("utf-8", "surrogateescape")
    if not name:
        raise ProxyError("no destination host")
    if len(name) > 255:
        raise ProxyError(f"destination name is {len(name)} bytes long: at most 255")
    if not all(0x21 <= b <= 0x7E for b in name):
        raise ProxyError(f"destination {host[:60]!r} is not a host name")
    return _ATYP_NAME, name


def _credential(text: str, what: str) -> bytes:
    """TEXT as RFC 1929 takes it: UTF-8, at most 255 bytes."""
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise ProxyError(f"the proxy {what} is {len(raw)} bytes long: at most 255")
    return raw


class Handshake:
    """One handshake with a proxy, to open a tunnel to HOST:PORT."""

    def __init__(self, scheme: str, host: str, port: int,
                 user: str = "", password: str = "") -> None:
        if scheme not in ("socks5", "socks5h", "http"):
            raise ValueError(f"unknown proxy scheme {scheme!r}")
        if not 0 <= port <= 0xFFFF:
            raise ProxyError(f"destination port {port} is out of range")
        self.scheme, self.host, self.port = scheme, host, port
        self.user, self.password = user, password
        self._atyp, self._addr = _destination(host)
        if user or password:
            _credential(user, "user name")
            _credential(password, "password")
        self.done = False
        self.leftover = b""
        self.bound: tuple[str, int] | None = None
        self._buf = b""
        self._state = "greeting" if scheme != "http" else "status"

    @property
    def _what(self) -> str:
        return f"{self.scheme} proxy"

    def start(self) -> bytes:
        """The first bytes to send to the proxy."""
        if self.scheme == "http":
            return self._connect_http()
        methods = bytes([_NO_AUTH, _USER_PASS] if self.user else [_NO_AUTH])
        return bytes([5, len(methods)]) + methods

    def feed(self, data: bytes) -> bytes:
        """DATA from the proxy (b"": it closed); the bytes to send next.
        Once done, DATA only joins `leftover`."""
        if self.done:
            self.leftover += data
            return b""
        if not data:
            raise ProxyError(f"{self._what} closed the connection during the handshake")
        self._buf += data
        if self.scheme == "http":
            self._http_answer()
            return b""
        out = b""
        while not self.done:
            step = {"greeting": self._method, "auth": self._auth_status,
                    "reply": self._reply}[self._state]()
            if step is None:
                break
            out += step
        return out

    # SOCKS5

    def _take(self, n: int) -> bytes | None:
        """The next N buffered bytes, or None when not all are in yet."""
        if len(self._buf) < n:
            return None
        head, self._buf = self._buf[:n], self._buf[n:]
        return head

    def _version(self, got: int, want: int) -> None:
        if got != want:
            raise ProxyError(f"{self._what} answered version {got}, not {want}: "
                             f"is it a SOCKS5 proxy?")

    def _method(self) -> bytes | None:
        """The method selection (RFC 1928 section 3)."""
        msg = self._take(2)
        if msg is None:
            return None
        self._version(msg[0], 5)
        method = msg[1]
        if method == _NO_AUTH:
            return self._connect_socks()
        if method == _USER_PASS and self.user:
            self._state = "auth"
            user = _credential(self.user, "user name")
            password = _credential(self.password, "password")
            return bytes([1, len(user)]) + user + bytes([len(password)]) + password
        if method == _NO_METHOD:
            hint = ("check the user and password in --proxy" if self.user
                    else "give user:pass@ in the proxy URL")
            raise ProxyError(f"{self._what} accepts none of the offered "
                             f"authentication methods: {hint}")
        raise ProxyError(f"{self._what} chose authentication method {method}, "
                         f"which was not offered")

    def _auth_status(self) -> bytes | None:
        """The user/password status (RFC 1929 section 2)."""
        msg = self._take(2)
        if msg is None:
            return None
        self._version(msg[0], 1)
        if msg[1] != 0:
            raise ProxyError(f"{self._what} rejected the user name and password "
                             f"(status {msg[1]}): check the user and password in --proxy")
        return self._connect_socks()

    def _connect_socks(self) -> bytes:
        self._state = "reply"
        addr = bytes([len(self._addr)]) + self._addr if self._atyp == _ATYP_NAME \
            else self._addr
        return bytes([5, 1, 0, self._atyp]) + addr + struct.pack("!H", self.port)

    def _reply(self) -> bytes | None:
        """The CONNECT reply (RFC 1928 section 6): refusals as soon as seen."""
        if len(self._buf) >= 2:
            self._version(self._buf[0], 5)
            if self._buf[1] != 0:
                rep = self._buf[1]
                text = SOCKS_REPLIES.get(rep, "unassigned reply code")
                raise ProxyError(f"{self._what} refused: {text} (reply {rep})")
        if len(self._buf) < 5:
            return None
        atyp = self._buf[3]
        sizes = {_ATYP_IPV4: 4, _ATYP_IPV6: 16, _ATYP_NAME: 1 + self._buf[4]}
        if atyp not in sizes:
            raise ProxyError(f"{self._what} answered address type {atyp}, "
                             f"which SOCKS5 does not have")
        msg = self._take(4 + sizes[atyp] + 2)
        if msg is None:
            return None
        raw, (port,) = msg[4:-2], struct.unpack("!H", msg[-2:])
        if atyp == _ATYP_NAME:
            host = raw[1:].decode("utf-8", "replace")
        else:
            host = str(ipaddress.ip_address(raw))
        self.bound = (host, port)
        self._finish()
        return b""

    def _finish(self) -> None:
        self.done, self._state = True, "done"
        self.leftover, self._buf = self._buf, b""

    # HTTP CONNECT

    def _connect_http(self) -> bytes:
        host = f"[{self.host}]" if self._atyp == _ATYP_IPV6 else self.host
        target = f"{host}:{self.port}"
        lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
        if self.user:
            token = f"{self.user}:{self.password}".encode("utf-8", "surrogateescape")
            lines.append("Proxy-Authorization: Basic " + base64.b64encode(token).decode())
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")

    def _http_answer(self) -> None:
        """The status line and headers, up to the blank line."""
        if not self._buf.startswith(b"HTTP/"[:len(self._buf)]):
            raise ProxyError(f"{self._what} answered {self._shown()}, not HTTP")
        end = self._buf.find(b"\r\n\r\n")
        if (end + 4 if end >= 0 else len(self._buf)) > MAX_HEADERS:
            raise ProxyError(f"{self._what} sent more than "
                             f"{MAX_HEADERS // 1024} KiB of headers")
        if end < 0:
            return
        status = self._buf[:self._buf.find(b"\r\n")]
        parts = status.split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or \
                len(parts[1]) != 3 or not parts[1].isdigit():
            raise ProxyError(f"{self._what} answered {self._shown()}, not HTTP/1.x")
        code = int(parts[1])
        if not 200 <= code <= 299:
            reason = parts[2].decode("latin-1") if len(parts) > 2 else ""
            reason = "".join(c for c in reason if c.isprintable())[:60].strip()
            raise ProxyError(f"{self._what} answered {code} {reason}".rstrip()
                             + self._http_hint(code))
        self._buf = self._buf[end + 4:]
        self._finish()

    def _http_hint(self, code: int) -> str:
        if code != 407:
            return ""
        return (": check the user and password in --proxy" if self.user
                else ": give user:pass@ in the proxy URL")

    def _shown(self) -> str:
        line = self._buf.split(b"\r\n", 1)[0][:40].decode("latin-1")
        return repr(line)
