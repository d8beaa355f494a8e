"""Proxy URLs for proxy mode (pure): `socks5://[user:pass@]host:port`,
`socks5h://...` (names resolved by the proxy) and `http://host:port`
(CONNECT)."""
from __future__ import annotations

import dataclasses

from .errors import NetleakError

SCHEMES = ("socks5", "socks5h", "http")
EXAMPLE = "e.g. socks5://127.0.0.1:1080 or http://192.0.2.1:3128"


@dataclasses.dataclass(frozen=True)
class ProxySpec:
    scheme: str
    host: str           # an address, or a name (resolved outside the session)
    port: int
    user: str = ""
    password: str = ""

    @property
    def remote_dns(self) -> bool:
        """Names go to the proxy unresolved (socks5h)."""
        return self.scheme == "socks5h"

    @property
    def takes_names(self) -> bool:
        """The proxy is asked for host names (socks5h, and http's CONNECT);
        socks5 takes addresses only."""
        return self.scheme != "socks5"

    def url(self, secret: bool = False) -> str:
        """The URL back; the password shown only when SECRET."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = ""
        if self.user:
            from urllib.parse import quote
            auth = quote(self.user, safe="") + (
                ":" + (quote(self.password, safe="") if secret else "***")
                if self.password else "") + "@"
        return f"{self.scheme}://{auth}{host}:{self.port}"


def parse(url: str, what: str = "--proxy") -> ProxySpec:
    """Check a proxy URL; NetleakError says what is wrong in one line."""
    from urllib.parse import unquote, urlsplit
    shown = repr(masked(url)[:60])
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise NetleakError(f"{what} {shown}: the scheme must be one of "
                           f"{', '.join(s + '://' for s in SCHEMES)} ({EXAMPLE})")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise NetleakError(f"{what} {shown}: {e} ({EXAMPLE})") from None
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise NetleakError(f"{what} {shown}: give only scheme, host and port ({EXAMPLE})")
    host = parts.hostname or ""
    if not host or "%" in host:
        raise NetleakError(f"{what} {shown}: no proxy host (a %zone is not taken) "
                           f"({EXAMPLE})")
    if not _host_ok(host):
        raise NetleakError(f"{what} {shown}: {host!r} is neither an address nor a host "
                           f"name ({EXAMPLE})")
    if port is None or port == 0:
        raise NetleakError(f"{what} {shown}: give the proxy's port ({EXAMPLE})")
    user = unquote(parts.username or "")
    password = unquote(parts.password or "")
    if len(user.encode("utf-8", "surrogateescape")) > 255 or \
            len(password.encode("utf-8", "surrogateescape")) > 255:
        raise NetleakError(f"{what}: user name and password are at most 255 bytes each")
    if password and not user:
        raise NetleakError(f"{what} {shown}: a password needs a user name")
    return ProxySpec(scheme, host, port, user, password)


def masked(url: str) -> str:
    """URL with its password (if any) as ***: for messages and logs."""
    head, sep, rest = url.partition("://")
    if not sep:
        return url
    netloc, slash, tail = rest.partition("/")
    if "@" in netloc:
        auth, _, host = netloc.rpartition("@")
        if ":" in auth:
            netloc = f"{auth.split(':', 1)[0]}:***@{host}"
    return head + sep + netloc + slash + tail


def _host_ok(host: str) -> bool:
    """An IP address, or a DNS name of letters, digits and hyphens."""
    import ipaddress
    import re
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    label = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
    return len(host) <= 253 and re.fullmatch(rf"{label}(\.{label})*\.?", host) is not None


def resolve(spec: ProxySpec) -> str:
    """The proxy's address: its host if that is one, else the first address
    this machine's resolver gives for it."""
    import ipaddress
    import socket
    try:
        return str(ipaddress.ip_address(spec.host))
    except ValueError:
        pass
    try:
        found = socket.getaddrinfo(spec.host, spec.port, type=socket.SOCK_STREAM)
    except OSError as e:
        raise NetleakError(f"cannot look up the proxy {spec.host!r}: {e.strerror or e}; "
                           f"give its address instead") from None
    return str(found[0][4][0])


def is_local(addr: str) -> bool:
    """ADDR is this machine's (the proxy runs here): loopback, or an address
    of one of this namespace's interfaces, which the kernel also delivers
    by loopback."""
    import ipaddress
    import socket
    a = ipaddress.ip_address(addr)
    if a.is_loopback or (a.version == 6 and a.ipv4_mapped is not None and
                         a.ipv4_mapped.is_loopback):
        return True
    with socket.socket(socket.AF_INET6 if a.version == 6 else socket.AF_INET,
                       socket.SOCK_DGRAM) as s:
        try:
            s.bind((addr, 0))
        except OSError:
            return False
    return True


PASSWORD_VARIABLE = "NETLEAK_PROXY_PASSWORD"
MAX_FILE_BYTES = 4096


def with_password(url: str, password: str, what: str = "--proxy") -> str:
    """URL with PASSWORD put in, for a URL that names a user and no
    password; URL unchanged when PASSWORD is empty."""
    if not password:
        return url
    spec = parse(url, what)
    if not spec.user:
        raise NetleakError(f"{PASSWORD_VARIABLE} is set but the proxy URL names no user: "
                           f"give one (socks5://USER@HOST:PORT), or unset it")
    if spec.password:
        raise NetleakError(f"the proxy URL has a password and {PASSWORD_VARIABLE} is set "
                           f"too: keep one of them")
    return dataclasses.replace(spec, password=password).url(secret=True)


def has_password(url: str) -> bool:
    """Whether URL carries a password (it may be malformed: then no)."""
    try:
        return bool(parse(url).password)
    except NetleakError:
        return False


def url_from_file_text(text: str, path: str) -> str:
    """The proxy URL a --proxy-file holds: its first line that is neither
    empty nor a # comment."""
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    raise NetleakError(f"--proxy-file {path}: no proxy URL in it (one line such as "
                       f"socks5h://user:password@192.0.2.8:1080)")


def file_problem(mode: int, uid: int, regular: bool) -> str | None:
    """Why a --proxy-file of these attributes must not hold a password
    (pure): it must be root's own, a plain file no one else may read."""
    if not regular:
        return "is not a regular file"
    if uid != 0:
        return f"belongs to uid {uid}, not root: chown root"
    if mode & 0o077:
        return f"may be read or written by others (mode {mode & 0o7777:04o}): chmod 600"
    return None


def read_url_file(path: str, detail: bool = True) -> str:
    """The proxy URL of a root-only file, so its password never appears on
    a command line (/proc/PID/cmdline is every local user's to read).
    Without DETAIL (a caller who is not root, through sudo), any refusal
    says the same, and so nothing of a file the caller may not read."""
    if not detail:
        try:
            return read_url_file(path)
        except NetleakError:
            raise NetleakError(f"--proxy-file {path}: not a file netleak takes (root's, "
                               f"mode 600, one proxy URL in it)") from None
    import os
    import stat
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as e:
        raise NetleakError(f"--proxy-file {path}: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        why = file_problem(st.st_mode, st.st_uid, stat.S_ISREG(st.st_mode))
        if why:
            raise NetleakError(f"--proxy-file {path} {why}: it holds the proxy's password")
        raw = os.read(fd, MAX_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(raw) > MAX_FILE_BYTES:
        raise NetleakError(f"--proxy-file {path}: longer than {MAX_FILE_BYTES} bytes; it "
                           f"holds one proxy URL")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise NetleakError(f"--proxy-file {path}: not UTF-8 text") from None
    return url_from_file_text(text, path)
