"""netleak-exec IFACE COMMAND...: run COMMAND with its traffic pinned to IFACE.

This is the hot path: it imports neither click nor pyroute2 nor BCC (each
would cost more than the whole warm start). The daemon owns netlink and the
maps; this process creates the cgroup, asks the daemon to protect it, joins
it, drops privileges, and execs COMMAND.
"""
from __future__ import annotations

import os
import sys

from . import __version__
from .core import validate
from .core.config import Config
from .core.errors import Exit, NetleakError

PROG = "netleak-exec"

USAGE = (f"{PROG} [OPTIONS] IFACE [--] COMMAND [ARG]...  or  "
         f"{PROG} --proxy URL [IFACE] [--] COMMAND...  or  {PROG} --block [--] COMMAND...")
PASSWORD_WARNING = (
    f"{PROG}: warning: the proxy password on the command line can be read by every local "
    f"user (/proc/PID/cmdline): put the URL in a root-only file (--proxy-file FILE) or the "
    f"password in NETLEAK_PROXY_PASSWORD\n")

HELP = f"""\
usage: {USAGE}

Run COMMAND so that everything it and its descendants send leaves through
IFACE, or is dropped. COMMAND is exec'd once protection is in place.

options:
  -u, --user USER  run COMMAND as USER (groups set, privileges dropped)
  --via ADDR       gateway on IFACE, once per IP family (default: learned from
                   the system's routes; point-to-point links need none)
  --dns ADDR       send DNS for loopback resolvers (127.0.0.53, ::1 ...) to ADDR
                   through IFACE instead; repeatable (default: IFACE's servers
                   as systemd-resolved knows them, or else such DNS is refused)
  --allow RULE     destinations that may use the main routing table (a printer
                   on the LAN): [CIDR][:PORT[-PORT]][/tcp|/udp], e.g.
                   192.168.1.0/24:631/tcp; repeatable, at most 8
  --deny RULE      refused and dropped, even through IFACE (same syntax, e.g.
                   :25/tcp or 10.0.0.0/8); repeatable, at most 8
  --block          no network at all: loopback only (and --allow); no IFACE
  --proxy URL      carry every TCP connection through this proxy, made in the
                   kernel (static binaries too): socks5://[USER:PASS@]HOST:PORT,
                   socks5h://... (the proxy resolves names) or http://HOST:PORT
                   (CONNECT); UDP and the rest are refused. IFACE is then
                   optional: given, the proxy is reached through it only.
                   A password given here can be read by every local user
                   while netleak-exec starts: prefer one of these two
  --proxy-file FILE  the proxy URL from FILE (its first line), which must be
                   root's and readable by root only (chmod 600)
                   NETLEAK_PROXY_PASSWORD=... in the environment: the
                   password for a URL that names a user and no password
                   (the variable is removed before COMMAND runs)
  --keep-fds       leave COMMAND the descriptors this process inherited (by
                   default those above fd 2 are closed, as sudo does: a
                   socket opened outside the session is nobody's to control)
  --version        print the version
  -h, --help       this help

examples:
  netleak-exec wg0 curl https://example.org    one command through wg0
  netleak-exec -u alice tun0 firefox           as alice, through tun0
  netleak-exec --via 192.0.2.1 eth1 -- ping -c1 203.0.113.5
  netleak-exec --dns 10.64.0.1 wg0 getent hosts example.org
  netleak-exec --allow 192.168.1.0/24:631/tcp wg0 firefox   the LAN printer only
  netleak-exec --deny :25/tcp wg0 ./job         no mail, not even through wg0
  netleak-exec --block make test                no network for the build
  netleak-exec --proxy socks5h://127.0.0.1:9050 curl https://example.org
  netleak-exec wg0 --proxy http://192.0.2.8:3128 ./static-go-binary

COMMAND keeps this process's PID, exit status and terminal. Exit status is
125 when netleak fails, 126 when COMMAND cannot run, 127 when not found.
"""


class Args:
    """The parsed command line."""

    def __init__(self) -> None:
        self.user: str | None = None
        self.via: list[str] = []
        self.dns: list[str] = []
        self.allow: list[str] = []
        self.deny: list[str] = []
        self.block = False
        self.proxy: str | None = None
        self.proxy_file: str | None = None
        self.keep_fds = False
        self.iface = ""
        self.command: list[str] = []
        self.action = "run"     # or "help", "version", "dump-bpf"


def parse(argv: list[str], is_interface=None) -> Args:
    """Options, then IFACE, then COMMAND untouched (like env and sudo); the
    one option taken after IFACE is --proxy (`IFACE --proxy URL COMMAND`).
    With --proxy before, IFACE is optional: the first word is one when an
    interface of that name exists (IS_INTERFACE) and a command follows.

    Not click or argparse: importing either costs more than half of the
    whole warm start of netleak-exec (nor the getopt module: see getopt).
    """
    a = Args()
    rest, ended = _options(a, argv)
    if a.action != "run":
        return a
    if a.block:
        a.command = rest
    elif a.proxy is not None or a.proxy_file is not None:
        if not ended and len(rest) >= 2 and rest[0] != "--" and \
                (is_interface or _is_interface)(rest[0]):
            a.iface, rest = rest[0], rest[1:]
        a.command = rest
    elif not rest:
        raise NetleakError(f"no IFACE given: {USAGE}")
    else:
        a.iface, a.command = rest[0], _proxy_after_iface(a, rest[1:])
    if a.command and a.command[0] == "--":
        a.command = a.command[1:]
    if not a.command:
        raise NetleakError(f"no COMMAND given: {USAGE}")
    return a


def _proxy_after_iface(a: Args, rest: list[str]) -> list[str]:
    """`IFACE --proxy URL COMMAND...` (or --proxy-file FILE): take the
    proxy; the rest."""
    for opt in ("--proxy", "--proxy-file"):
        if not rest or not (rest[0] == opt or rest[0].startswith(opt + "=")):
            continue
        if rest[0] == opt:
            if len(rest) < 2:
                raise NetleakError(f"option {opt} requires argument (see '{PROG} --help')")
            _take_proxy(a, opt, rest[1])
            return rest[2:]
        _take_proxy(a, opt, rest[0].split("=", 1)[1])
        return rest[1:]
    return rest


def _take_proxy(a: Args, opt: str, value: str) -> None:
    if a.proxy is not None or a.proxy_file is not None:
        raise NetleakError(f"{opt} given twice: one proxy carries a session (give --proxy "
                           f"or --proxy-file, once)")
    if not value:
        raise NetleakError(f"{opt} '': give a proxy URL, e.g. socks5h://127.0.0.1:9050"
                           if opt == "--proxy" else f"{opt} '': give a file's path")
    if opt == "--proxy":
        a.proxy = value
    else:
        a.proxy_file = value


SHORT_OPTIONS = "hu:"
LONG_OPTIONS = ("help", "user=", "via=", "version", "dump-bpf", "dns=", "allow=", "deny=",
                "block",
                "proxy=", "proxy-file=", "keep-fds")


def getopt(argv: list[str], shorts: str,
           longs: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str], bool]:
    """getopt.getopt's parse of ARGV (options up to the first word that is
    not one; `--` ends them; long options may be shortened to a unique
    prefix), with whether a `--` ended them. The module itself imports
    gettext, and with it re: a few milliseconds of every start.
    NetleakError with getopt's message when an option is wrong."""
    opts: list[tuple[str, str]] = []
    i = 0
    while i < len(argv) and argv[i].startswith("-") and argv[i] != "-":
        word = argv[i]
        i += 1
        if word == "--":
            return opts, argv[i:], True
        if word.startswith("--"):
            name, eq, value = word[2:].partition("=")
            full, has_arg = _long_option(name, longs)
            if has_arg and not eq:
                if i >= len(argv):
                    raise NetleakError(f"option --{full} requires argument")
                value, i = argv[i], i + 1
            elif eq and not has_arg:
                raise NetleakError(f"option --{full} must not have an argument")
            opts.append(("--" + full, value))
            continue
        rest = word[1:]
        while rest:
            ch, rest = rest[0], rest[1:]
            at = shorts.find(ch)
            if ch == ":" or at < 0:
                raise NetleakError(f"option -{ch} not recognized")
            value = ""
            if shorts.startswith(":", at + 1):
                if not rest:
                    if i >= len(argv):
                        raise NetleakError(f"option -{ch} requires argument")
                    rest, i = argv[i], i + 1
                value, rest = rest, ""
            opts.append(("-" + ch, value))
    return opts, argv[i:], False


def _long_option(name: str, longs: tuple[str, ...]) -> tuple[str, bool]:
    """The long option NAME stands for (itself or the one it is a unique
    prefix of), and whether it takes an argument."""
    found = [o for o in longs if o.startswith(name)]
    if not found:
        raise NetleakError(f"option --{name} not recognized")
    if name in found:
        return name, False
    if name + "=" in found:
        return name, True
    if len(found) > 1:
        raise NetleakError(f"option --{name} not a unique prefix")
    return found[0].rstrip("="), found[0].endswith("=")


def _options(a: Args, argv: list[str]) -> tuple[list[str], bool]:
    """Take the options at the start of ARGV into A; the rest, and whether
    a `--` ended them."""
    try:
        opts, rest, ended = getopt(argv, SHORT_OPTIONS, LONG_OPTIONS)
    except NetleakError as e:
        raise NetleakError(f"{e.message} (see '{PROG} --help')") from None
    for opt, val in opts:
        if opt in ("-h", "--help"):
            a.action = "help"
        elif opt == "--version":
            a.action = "version"
        elif opt == "--dump-bpf":
            a.action = "dump-bpf"
        elif opt in ("-u", "--user"):
            if a.user is not None:
                raise NetleakError(f"-u given twice ({a.user!r}, {val!r}): COMMAND runs as "
                                   f"one user; give one")
            a.user = val
        elif opt == "--via":
            a.via.append(val)
        elif opt == "--dns":
            a.dns.append(val)
        elif opt == "--allow":
            a.allow.append(val)
        elif opt == "--deny":
            a.deny.append(val)
        elif opt == "--block":
            a.block = True
        elif opt in ("--proxy", "--proxy-file"):
            _take_proxy(a, opt, val)
        elif opt == "--keep-fds":
            a.keep_fds = True
    return rest, ended


def resolve_command(name: str, path_env: str | None) -> str:
    """The file execv would run, or NetleakError with status 127/126."""
    if "/" in name:
        candidates = [name]
    else:
        candidates = [os.path.join(d or ".", name)
                      for d in (path_env or os.defpath).split(os.pathsep)]
    found_not_exec = None
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return c
            found_not_exec = found_not_exec or c
        elif os.path.isdir(c) and "/" in name:
            raise NetleakError(f"{name}: is a directory", Exit.CANNOT_EXEC)
    if found_not_exec:
        raise NetleakError(f"{found_not_exec}: permission denied (not executable)",
                           Exit.CANNOT_EXEC)
    raise NetleakError(f"{name}: command not found", Exit.NOT_FOUND)


def _is_interface(name: str) -> bool:
    # the C module: socket.py (enums, selectors) would add ~5 ms to every start
    import _socket
    try:
        _socket.if_nametoindex(name)
    except OSError:
        return False
    return True


def resolve_user(spec: str | None):
    if spec is None:
        return None
    import pwd
    try:
        return pwd.getpwuid(int(spec)) if spec.isascii() and spec.isdigit() else pwd.getpwnam(spec)
    except KeyError:
        raise NetleakError(f"no such user {spec!r}: give a name or uid from /etc/passwd") from None


def drop_privileges(pw) -> None:
    """Become USER for good: supplementary groups, gid, then uid."""
    os.initgroups(pw.pw_name, pw.pw_gid)
    os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
    os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
    if os.geteuid() != pw.pw_uid or os.getuid() != pw.pw_uid:
        raise NetleakError(f"could not drop privileges to {pw.pw_name}")
    os.environ.update(HOME=pw.pw_dir, USER=pw.pw_name, LOGNAME=pw.pw_name)


def _proxy_url(a: Args) -> str | None:
    """The proxy URL of --proxy or --proxy-file, with NETLEAK_PROXY_PASSWORD
    put in (and taken out of the environment COMMAND gets, whatever the
    mode); a password on the command line is warned about, once."""
    password = os.environ.pop("NETLEAK_PROXY_PASSWORD", "")
    if a.proxy is None and a.proxy_file is None:
        return None
    from .core.proxyspec import has_password, parse, read_url_file, with_password
    if a.proxy is None:
        # through sudo, its caller learns nothing of files it may not read
        caller = os.environ.get("SUDO_UID", "0")
        url = read_url_file(a.proxy_file or "", detail=caller in ("", "0"))
        try:
            parse(url)
        except NetleakError:
            # not shown: the file is root's, and whoever runs this may not read it
            raise NetleakError(f"--proxy-file {a.proxy_file}: its first line is no proxy "
                               f"URL (socks5://, socks5h:// or http://HOST:PORT)") from None
        return with_password(url, password)
    if has_password(a.proxy):
        sys.stderr.write(PASSWORD_WARNING)
    return with_password(a.proxy, password)


def checked(a: Args, url: str | None) -> tuple[str, str | None, str | None, dict]:
    """IFACE, the gateways and the guards of A (with the proxy URL),
    checked; no kernel. Only what was given is looked at: the checks of
    addresses import ipaddress (with functools and re)."""
    # no IFACE only with --block, or with --proxy when none was given
    no_iface = a.block or (url is not None and not a.iface)
    iface = "" if no_iface else validate.interface_name(a.iface)
    via4, via6 = validate.gateways(a.via) if a.via else (None, None)
    guards: dict = {}
    if a.dns or a.allow or a.block or a.deny:
        guards = validate.guard_request(a.dns, a.allow, a.block, a.via, a.deny)
    if url is not None:
        guards = {**guards, **validate.proxy_request(url, a.block, a.dns, iface, a.via)}
    return iface, via4, via6, guards


def run(argv: list[str]) -> int:
    a = parse(argv)
    if a.action == "help":
        sys.stdout.write(HELP)
        return 0
    if a.action == "version":
        sys.stdout.write(f"{PROG} {__version__}\n")
        return 0
    if a.action == "dump-bpf":
        from .kernel.pinning import render_source
        sys.stdout.write(render_source())
        return 0
    cfg = Config.from_env(os.environ)
    url = _proxy_url(a)
    iface, via4, via6, guards = checked(a, url)
    if a.block and len(a.command) > 1 and _is_interface(a.command[0]):
        raise NetleakError(f"--block takes no IFACE ({a.command[0]} is one): "
                           f"{PROG} --block COMMAND...")
    try:
        target = resolve_command(a.command[0], os.environ.get("PATH"))
    except NetleakError as e:
        if url is not None and not a.iface and e.exit_status == Exit.NOT_FOUND:
            # `--proxy URL wg1 CMD` with no wg1 here reads wg1 as the command
            raise NetleakError(f"{e.message} (nor an interface of this name: with --proxy, "
                               f"IFACE is taken as one only when it exists)",
                               Exit.NOT_FOUND) from None
        raise
    pw = resolve_user(a.user)
    if os.geteuid() != 0:
        raise NetleakError(f"{PROG} needs root (cgroups, BPF, routing): run it with sudo")
    absent = bool(iface) and not _is_interface(iface)

    from .execsetup import open_exec_session
    open_exec_session(cfg, iface, via4, via6, guards)
    if absent:      # accepted (wg0 before wg-quick up): the session waits for it
        sys.stderr.write(f"{PROG}: no interface named {iface} yet: waiting for it, "
                         f"all but loopback dropped\n")

    from .kernel import confine
    if pw is not None and pw.pw_uid != 0:
        for warning in confine.user_reach(pw.pw_name, pw.pw_uid,
                                          os.getgrouplist(pw.pw_name, pw.pw_gid)):
            sys.stderr.write(f"{PROG}: warning: {warning}\n")
    if not a.keep_fds:
        confine.close_inherited()
    try:
        for warning in confine.confine(as_user=pw is not None and pw.pw_uid != 0):
            sys.stderr.write(f"{PROG}: warning: {warning}\n")
    except OSError as e:
        raise NetleakError(f"cannot confine COMMAND ({e.strerror}): not run") from None
    if pw is not None:
        drop_privileges(pw)
    try:
        os.execv(target, a.command)
    except FileNotFoundError:
        raise NetleakError(f"{a.command[0]}: command not found", Exit.NOT_FOUND) from None
    except OSError as e:
        raise NetleakError(f"{a.command[0]}: {e.strerror}", Exit.CANNOT_EXEC) from None
    return 0  # not reached


def main() -> None:
    try:
        sys.exit(run(sys.argv[1:]))
    except NetleakError as e:
        sys.stderr.write(f"{PROG}: {e.message}\n")
        sys.exit(e.exit_status)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
