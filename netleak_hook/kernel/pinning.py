"""The BPF programs' pin sets: compiled by BCC once, pinned, named by a hash.

Only `compile_and_pin` imports BCC, and `ensure_pinned` runs it in a child
process: LLVM (~130 MB) never stays mapped in a long-lived daemon. Opening
and attaching what is pinned is `programs`' part, without BCC or LLVM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import logging
import os
from typing import Iterator

from ..core.abi import MAX_DEPTH, MAX_ENTRIES, RING_PAGES  # noqa: F401 (RING_PAGES: for others)
from ..rundir import safedir
from ..core.errors import NetleakError
from . import bpfsys

log = logging.getLogger(__name__)


def _find_sources() -> str:
    """bpf/ of a source checkout, or the copy `pip install` put in share/."""
    import sys
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for cand in (os.environ.get("NETLEAK_BPF_SRC", ""), os.path.join(here, "bpf"),
                 os.path.join(sys.prefix, "share", "netleak", "bpf")):
        if cand and os.path.exists(os.path.join(cand, "netleak.c")):
            return cand
    return os.path.join(here, "bpf")


BPF_SRC_DIR = _find_sources()
SOURCES = ("netleak.h", "netleak.c")
PROGRAMS = (  # (function and pin name, BCC program type name, attach type)
    ("egress", "CGROUP_SKB", bpfsys.BPF_CGROUP_INET_EGRESS),
    ("sock_create", "CGROUP_SOCK", bpfsys.BPF_CGROUP_INET_SOCK_CREATE),
    ("connect4", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_INET4_CONNECT),
    ("connect6", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_INET6_CONNECT),
    ("sendmsg4", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_UDP4_SENDMSG),
    ("sendmsg6", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_UDP6_SENDMSG),
    ("ingress", "CGROUP_SKB", bpfsys.BPF_CGROUP_INET_INGRESS),
    ("recvmsg4", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_UDP4_RECVMSG),
    ("recvmsg6", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_UDP6_RECVMSG),
    ("getpeername4", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_INET4_GETPEERNAME),
    ("getpeername6", "CGROUP_SOCK_ADDR", bpfsys.BPF_CGROUP_INET6_GETPEERNAME),
    ("setsockopt", "CGROUP_SOCKOPT", bpfsys.BPF_CGROUP_SETSOCKOPT),
    ("sock_release", "CGROUP_SOCK", bpfsys.BPF_CGROUP_INET_SOCK_RELEASE),
)
# program types whose load names the attach type (the kernel checks their
# context per hook)
TYPED = ("CGROUP_SOCK_ADDR", "CGROUP_SOCKOPT", "CGROUP_SOCK")
# programs for netleak's own sockets, never attached to a session's cgroup:
# the relay's ingress (attached to the cgroup its sockets are made in)
OWN_PROGRAMS = (
    ("relay_in", "CGROUP_SKB", bpfsys.BPF_CGROUP_INET_INGRESS),
)
MAPS = ("policy", "stats", "rings", "redirect", "redirect_n", "locals", "counters", "slots",
        "flows")
PINS = tuple(f"prog_{n}" for n, _, _ in PROGRAMS + OWN_PROGRAMS) + \
    tuple(f"map_{m}" for m in MAPS)
# what older netleak versions pinned too: enough to manage their sessions
BASE_PINS = ("prog_egress", "prog_sock_create", "map_policy", "map_stats")
# helper levels of the compile, richest first (see compile_and_pin):
# NL_SET_RETVAL (5.18) lets a refused call fail with routing's errno
LEVELS = (("-DNL_SKB_NETNS_COOKIE", "-DNL_TASK_EGRESS", "-DNL_TASK_SOCK", "-DNL_SET_RETVAL"),
          ("-DNL_TASK_SOCK", "-DNL_SET_RETVAL"), ("-DNL_SET_RETVAL",), ())

BPF_FS_MAGIC = 0xCAFE4A11


def cflags(max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH,
           extra: tuple[str, ...] = ()) -> list[str]:
    return [f"-I{BPF_SRC_DIR}", f"-DNL_MAX_ENTRIES={max_entries}",
            f"-DNL_MAX_DEPTH={max_depth}", f"-DNL_RING_PAGES={RING_PAGES}",
            "-Wno-macro-redefined", *extra]


def source_text() -> str:
    parts = []
    for name in SOURCES:
        with open(os.path.join(BPF_SRC_DIR, name)) as f:
            parts.append(f.read())
    return "\n".join(parts)


def pinset_name(extra: tuple[str, ...] = ()) -> str:
    """Pins are named after a hash of the source and flags: a new version
    gets new pins and never mixes map layouts with an old one."""
    h = hashlib.sha256(source_text().encode())
    h.update(" ".join(cflags(extra=extra)).encode())
    return "v1-" + h.hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Pinset:
    path: str

    def pin(self, name: str) -> str:
        return os.path.join(self.path, name)

    def complete(self) -> bool:
        """Every pin this version makes."""
        return all(os.path.exists(self.pin(p)) for p in PINS)

    def usable(self) -> bool:
        """Enough to manage sessions, also those an older version started."""
        return all(os.path.exists(self.pin(p)) for p in BASE_PINS)

    def check(self) -> bool:
        """Whether the pin folder exists; NetleakError when it is not root's
        alone (another user's programs and maps must never be taken)."""
        return safedir.check_dir(self.path, "pin folder", PIN_FIX)


PIN_FIX = "remove it (programs stay attached where they are) or set NETLEAK_BPF_DIR"


def ensure_bpffs(bpf_dir: str) -> None:
    """Mount the BPF filesystem at /sys/fs/bpf when absent, as systemd does."""
    root = "/sys/fs/bpf"
    if bpf_dir.startswith(root + "/") and not _is_bpffs(root):
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mount(b"bpf", root.encode(), b"bpf", 0, b"mode=0700") != 0:
            err = ctypes.get_errno()
            raise NetleakError(
                f"cannot mount bpffs at {root}: {os.strerror(err)} "
                f"(run 'mount -t bpf bpf {root}' as root)")
        log.info("mounted bpffs at %s", root)
    parent = os.path.dirname(bpf_dir.rstrip("/"))
    if not _is_bpffs(parent) and not _is_bpffs(bpf_dir):
        raise NetleakError(
            f"{parent} is not a BPF filesystem: mount one with "
            f"'mount -t bpf bpf {parent}' or set NETLEAK_BPF_DIR")
    os.close(safedir.open_dir(bpf_dir, "pin folder", PIN_FIX, create=True))


def _is_bpffs(path: str) -> bool:
    return _fs_magic(path) == BPF_FS_MAGIC


def _fs_magic(path: str) -> int:
    """statfs(2) f_type of PATH; 0 when it cannot be read."""
    import ctypes

    class StatFs(ctypes.Structure):
        _fields_ = [("f_type", ctypes.c_long), ("rest", ctypes.c_byte * 112)]

    libc = ctypes.CDLL(None, use_errno=True)
    buf = StatFs()
    if libc.statfs(os.fsencode(path), ctypes.byref(buf)) != 0:
        return 0
    return buf.f_type & 0xFFFFFFFF


@contextlib.contextmanager
def compile_lock(bpf_dir: str) -> Iterator[None]:
    """Serialize compiles into BPF_DIR between daemons of all namespaces.
    The lock is on the directory itself: bpffs holds no regular files, and
    a lock file elsewhere would be one more thing left on the machine."""
    fd = os.open(bpf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_pinned(bpf_dir: str, extra: tuple[str, ...] = ()) -> Pinset:
    """The current pin set, compiling and pinning it first if needed.
    EXTRA cflags make a variant (the benchmark's, without counters)."""
    pins = Pinset(os.path.join(bpf_dir, pinset_name(extra)))
    if pins.check() and pins.complete():
        return pins
    with compile_lock(bpf_dir):
        if not (pins.check() and pins.complete()):
            _compile_in_child(pins, extra)
    return pins


def _compile_in_child(pins: Pinset, extra: tuple[str, ...]) -> None:
    """compile_and_pin in a process of its own; its log lines are passed on."""
    import subprocess
    import sys
    log.info("compiling BPF programs into %s", pins.path)
    r = subprocess.run([sys.executable, "-m", __name__, pins.path, *extra],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       errors="replace")
    lines = r.stderr.strip().splitlines()
    said = r.returncode == 125 and lines      # a NetleakError: its message last
    for line in lines[:-1] if said else lines:
        log.info("compile: %s", line)
    if r.returncode != 0:
        raise NetleakError(lines[-1] if said else
                           f"BPF compile failed (exit {r.returncode}); run 'netleak doctor'")


def render_source() -> str:
    """The C that gets loaded, as BCC sees it (for --dump-bpf)."""
    flags = " ".join(cflags())
    return f"/* cflags: {flags} */\n" + source_text()


def compile_and_pin(pins: Pinset, extra: tuple[str, ...] = ()) -> None:
    """Compile with BCC and pin programs and maps (cold path)."""
    try:
        from bcc import BPF, BPFProgType  # heavy: LLVM; only here
    except ImportError:
        raise NetleakError(
            "BCC's Python module is missing: install python3-bpfcc (Debian/Ubuntu) "
            "or python3-bcc (Fedora), then run 'netleak doctor'") from None
    headers = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(headers):
        raise NetleakError(
            f"no kernel headers at {headers}: install linux-headers-"
            f"{os.uname().release} (or run 'make deps'); 'netleak doctor' explains")
    # What events can carry depends on the helpers the kernel gives each
    # program type: recent kernels give egress programs the socket's netns
    # cookie (so a drop with no policy entry reaches its namespace's reader)
    # and the current task's pid and comm; since 6.1 socket programs have
    # the latter. Each level is tried in turn; the verdicts are the same.
    b = None
    for more in LEVELS:
        try:
            b = BPF(src_file=os.path.join(BPF_SRC_DIR, "netleak.c").encode(),
                    cflags=cflags(extra=extra + more))
            fds = {name: b.load_func(f"nl_{name}".encode(), getattr(BPFProgType, ptype),
                                     attach_type=atype if ptype in TYPED else -1).fd
                   for name, ptype, atype in PROGRAMS + OWN_PROGRAMS}
            break
        except Exception as e:  # BCC raises bare Exception
            if b is not None:
                b.cleanup()
                b = None
            if more == LEVELS[-1]:
                raise NetleakError(
                    f"BPF compile or load failed: {e}; run 'netleak doctor'") from None
            log.info("this kernel refuses %s (%s): trying with fewer helpers",
                     " ".join(more), e)
    assert b is not None
    tmp = pins.path + "-new"  # bpffs refuses names with a dot
    _remove_dir(tmp)
    os.makedirs(tmp, mode=0o700)
    for name, fd in fds.items():
        bpfsys.obj_pin(fd, os.path.join(tmp, f"prog_{name}"))
    from bcc import lib
    for name in MAPS:
        # by name: BCC's tables do not wrap every map type (socket storage)
        fd = lib.bpf_table_fd(b.module, name.encode())
        if fd < 0:
            raise NetleakError(f"BPF compile: no map {name}; run 'netleak doctor'")
        bpfsys.obj_pin(fd, os.path.join(tmp, f"map_{name}"))
    _remove_dir(pins.path)
    os.rename(tmp, pins.path)
    b.cleanup()


def remove_pins(bpf_dir: str) -> None:
    """Remove every pin set under BPF_DIR, and BPF_DIR itself. Programs stay
    attached to live cgroups until those go; only the names go now."""
    if not os.path.isdir(bpf_dir):
        return
    for name in os.listdir(bpf_dir):
        _remove_dir(os.path.join(bpf_dir, name))
    with contextlib.suppress(OSError):
        os.rmdir(bpf_dir)


def remove_pins_set(path: str) -> None:
    """One pin set's folder and its pins (the programs stay attached where
    they are)."""
    _remove_dir(path)


def _remove_dir(path: str) -> None:
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def _compile_main(argv: list[str]) -> int:
    """`python -m netleak_hook.kernel.pinning PINSET_DIR [CFLAG]...` (or
    `-m netleak_hook.kernel.programs`, as older versions ran it): the child
    of ensure_pinned. Log lines, then the error alone on the last line."""
    import sys
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        compile_and_pin(Pinset(argv[0]), tuple(argv[1:]))
    except NetleakError as e:
        print(e, file=sys.stderr)
        return 125
    return 0


if __name__ == "__main__":
    import sys
    sys.exit(_compile_main(sys.argv[1:]))
