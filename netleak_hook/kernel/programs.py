"""The BPF programs: compiled by BCC once, pinned, then only opened.

Only `compile_and_pin` imports BCC; everything else is bpf(2) through
`bpfsys`, so the warm path needs neither BCC nor LLVM.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import logging
import os
from typing import Iterator

from ..errors import NetleakError
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
PINS = ("prog_egress", "prog_sock_create", "map_policy", "map_stats")
BPF_FS_MAGIC = 0xCAFE4A11


def cflags(max_entries: int = 4096, max_depth: int = 16) -> list[str]:
    return [f"-I{BPF_SRC_DIR}", f"-DNL_MAX_ENTRIES={max_entries}",
            f"-DNL_MAX_DEPTH={max_depth}", "-Wno-macro-redefined"]


def source_text() -> str:
    parts = []
    for name in SOURCES:
        with open(os.path.join(BPF_SRC_DIR, name)) as f:
            parts.append(f.read())
    return "\n".join(parts)


def pinset_name() -> str:
    """Pins are named after a hash of the source and flags: a new version
    gets new pins and never mixes map layouts with an old one."""
    h = hashlib.sha256(source_text().encode())
    h.update(" ".join(cflags()).encode())
    return "v1-" + h.hexdigest()[:12]


@dataclasses.dataclass(frozen=True)
class Pinset:
    path: str

    def pin(self, name: str) -> str:
        return os.path.join(self.path, name)

    def complete(self) -> bool:
        return all(os.path.exists(self.pin(p)) for p in PINS)


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
    os.makedirs(bpf_dir, mode=0o700, exist_ok=True)


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
def _compile_lock(bpf_dir: str) -> Iterator[None]:
    """Serialize compiles into BPF_DIR between daemons of all namespaces.
    The lock is on the directory itself: bpffs holds no regular files, and
    a lock file elsewhere would be one more thing left on the machine."""
    fd = os.open(bpf_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def ensure_pinned(bpf_dir: str) -> Pinset:
    """The current pin set, compiling and pinning it first if needed."""
    pins = Pinset(os.path.join(bpf_dir, pinset_name()))
    if pins.complete():
        return pins
    with _compile_lock(bpf_dir):
        if not pins.complete():
            compile_and_pin(pins)
    return pins


def render_source() -> str:
    """The C that gets loaded, as BCC sees it (for --dump-bpf)."""
    flags = " ".join(cflags())
    return f"/* cflags: {flags} */\n" + source_text()


def compile_and_pin(pins: Pinset) -> None:
    """Compile with BCC and pin programs and maps (cold path)."""
    try:
        from bcc import BPF  # heavy: LLVM; only here
    except ImportError:
        raise NetleakError(
            "BCC's Python module is missing: install python3-bpfcc (Debian/Ubuntu) "
            "or python3-bcc (Fedora), then run 'netleak doctor'") from None
    headers = f"/lib/modules/{os.uname().release}/build"
    if not os.path.exists(headers):
        raise NetleakError(
            f"no kernel headers at {headers}: install linux-headers-"
            f"{os.uname().release} (or run 'make deps'); 'netleak doctor' explains")
    log.info("compiling BPF programs into %s", pins.path)
    try:
        b = BPF(src_file=os.path.join(BPF_SRC_DIR, "netleak.c").encode(),
                cflags=cflags())
        egress = b.load_func(b"nl_egress", BPF.CGROUP_SKB)
        sock = b.load_func(b"nl_sock_create", BPF.CGROUP_SOCK)
    except Exception as e:  # BCC raises bare Exception
        raise NetleakError(f"BPF compile or load failed: {e}; run 'netleak doctor'") from None
    tmp = pins.path + "-new"  # bpffs refuses names with a dot
    _remove_dir(tmp)
    os.makedirs(tmp, mode=0o700)
    bpfsys.obj_pin(egress.fd, os.path.join(tmp, "prog_egress"))
    bpfsys.obj_pin(sock.fd, os.path.join(tmp, "prog_sock_create"))
    bpfsys.obj_pin(b[b"policy"].map_fd, os.path.join(tmp, "map_policy"))
    bpfsys.obj_pin(b[b"stats"].map_fd, os.path.join(tmp, "map_stats"))
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


def _remove_dir(path: str) -> None:
    if not os.path.isdir(path):
        return
    for name in os.listdir(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(path, name))
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


class Programs:
    """Open program fds of a pin set, for attaching and detaching."""

    HOOKS = (("prog_egress", bpfsys.BPF_CGROUP_INET_EGRESS),
             ("prog_sock_create", bpfsys.BPF_CGROUP_INET_SOCK_CREATE))

    def __init__(self, pins: Pinset) -> None:
        self.pins = pins
        self.fds: dict[str, int] = {}
        try:
            for name, _ in self.HOOKS:
                self.fds[name] = bpfsys.obj_get(pins.pin(name))
        except OSError as e:
            self.close()
            raise NetleakError(
                f"cannot open pinned programs in {pins.path}: {e.strerror}; "
                f"run 'netleak gc' and retry") from None

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def attached(self, cgroup_fd: int, name: str, attach_type: int) -> bool:
        mine = bpfsys.prog_id(self.fds[name])
        return mine in bpfsys.prog_query(cgroup_fd, attach_type)

    def attach(self, cgroup_path: str) -> None:
        """Attach both programs (ALLOW_MULTI: others' programs stay)."""
        cfd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for name, atype in self.HOOKS:
                try:
                    bpfsys.prog_attach(self.fds[name], cfd, atype)
                except OSError as e:
                    # the same program attached twice is EINVAL/EEXIST
                    if e.errno in (errno.EINVAL, errno.EEXIST) and self.attached(cfd, name, atype):
                        continue
                    if e.errno == errno.EPERM:
                        raise NetleakError(
                            f"another tool holds {cgroup_path} or one of its parents "
                            f"exclusively (a BPF program attached without "
                            f"BPF_F_ALLOW_MULTI; 'bpftool cgroup tree' shows it): netleak "
                            f"cannot add its own; have that tool attach with "
                            f"BPF_F_ALLOW_MULTI") from None
                    raise NetleakError(
                        f"cannot attach {name} to {cgroup_path}: {e.strerror}") from None
        finally:
            os.close(cfd)

    def detach(self, cgroup_path: str) -> None:
        """Detach ours; 'not attached' and 'cgroup gone' count as done.

        Only when ours is attached: on a cgroup another tool holds without
        ALLOW_MULTI, the kernel's detach removes whatever program is there.
        """
        try:
            cfd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        try:
            for name, atype in self.HOOKS:
                if not self.attached(cfd, name, atype):
                    continue
                try:
                    bpfsys.prog_detach(self.fds[name], cfd, atype)
                except OSError as e:
                    if e.errno not in (errno.ENOENT, errno.EINVAL):
                        raise
        finally:
            os.close(cfd)


class Maps:
    """Open map fds of a pin set."""

    def __init__(self, pins: Pinset) -> None:
        self.pins = pins
        self.policy = bpfsys.obj_get(pins.pin("map_policy"))
        self.stats = bpfsys.obj_get(pins.pin("map_stats"))
        self.ncpus = bpfsys.possible_cpus()

    def close(self) -> None:
        for fd in (self.policy, self.stats):
            with contextlib.suppress(OSError):
                os.close(fd)
