"""What a workload starts with: nothing from outside its session, and no
way around the session's programs.

netleak-exec's last steps before exec. A descriptor the caller had (and
passed on, as shells and service managers do) may reach outside the
session: a socket belongs to the caller's cgroup, so no program of the
session sees its traffic; an io_uring whose kernel thread submits for the
caller's cgroup; a TUN device; a pipe to a helper. Every one above
standard error is closed, as sudo does (--keep-fds keeps them).
"""
from __future__ import annotations

import os


def close_inherited(first: int = 3) -> None:
    """Close every descriptor from FIRST on (close_range(2) where there is
    one: whatever the limit on open files)."""
    os.closerange(first, 1 << 20)


# ---------- system calls no program of the session sees: seccomp ----------
#
# The session's programs see the sockets of IPv4 and IPv6 only: a socket
# of another family that reaches off the machine (AF_VSOCK to a VM's host,
# AF_PACKET, AF_XDP, Bluetooth, CAN, TIPC, RDS, RxRPC, SMC, PPPoX...)
# would pass no check at all. A seccomp filter refuses socket(2) for every
# family but these (EAFNOSUPPORT: programs take it as "not supported here"),
# and what else gets around the programs: io_uring (sockets made without
# socket(2)), 32-bit setsockopt(2) (the cgroup program never runs for it),
# and typing into the caller's terminal (TIOCSTI), whose shell would run
# what was typed outside the session.

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_ALG = 1, 2, 10, 16, 38
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_ALG)

EAFNOSUPPORT, ENOSYS, EPERM = 97, 38, 1
SYS_SOCKET, SYS_SETSOCKOPT = 1, 14     # socketcall(2)'s call numbers
X32_BIT = 0x40000000    # x86_64's x32 system calls
# io_uring makes sockets without socket(2) (IORING_OP_SOCKET), where no
# filter can see the family: refused (ENOSYS: programs fall back to epoll)
IO_URING = (425, 426, 427)      # setup, enter, register: the same numbers everywhere
# ioctls that type into the terminal, whose commands the shell that started
# netleak-exec then runs, outside the session
TIOCSTI, TIOCLINUX = 0x5412, 0x541C
# setsockopt(2) options of forged sources (level, name): the cgroup program
# refuses them, but the kernel runs no cgroup program for 32-bit callers
FORGING = ((0, 15), (0, 19), (41, 75), (41, 78))


class Arch:
    """One system call table: its audit arch and the numbers the filter
    looks at (None: the table has no such call). A plain class: this is on
    netleak-exec's warm path, where dataclasses cost ~6 ms to import."""

    __slots__ = ("audit", "socket", "ioctl", "socketcall", "setsockopt", "x32")

    def __init__(self, audit: int, socket: int, ioctl: int, socketcall: int | None = None,
                 setsockopt: int | None = None, x32: bool = False) -> None:
        self.audit, self.socket, self.ioctl = audit, socket, ioctl
        self.socketcall = socketcall
        self.setsockopt = setsockopt      # only where the kernel skips the cgroup hook
        self.x32 = x32


# per machine: the native table first, then its 32-bit compat one
ARCHES = {
    "x86_64": (Arch(0xC000003E, 41, 16, x32=True), Arch(0x40000003, 359, 54, 102, 366)),
    "aarch64": (Arch(0xC00000B7, 198, 29), Arch(0x40000028, 281, 54, 102, 294)),
    "riscv64": (Arch(0xC00000F3, 198, 29),),
}

# classic BPF (what seccomp runs) and seccomp's return values
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
# offsets in struct seccomp_data (little-endian: an argument's low half first)
_NR, _ARCH, _ARG0, _ARG1, _ARG2 = 0, 4, 16, 24, 32


def family_filter(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The filter as (code, jt, jf, k) instructions for MACHINE (os.uname's
    machine), or None when netleak does not know its system call numbers.

    socket(2) with a family outside ALLOWED_FAMILIES fails with
    EAFNOSUPPORT; so does socketcall(2)'s socket call in 32-bit programs
    (its arguments are in memory, which a filter cannot read). TIOCSTI and
    TIOCLINUX fail with EPERM, and so do 32-bit setsockopt(2) calls for
    forged sources (socketcall's setsockopt entirely). io_uring, x32 system
    calls and unknown architectures fail with ENOSYS: what they would do
    cannot be told."""
    arches = ARCHES.get(machine)
    if arches is None:
        return None
    prog: list[tuple] = []
    label: dict[str, int] = {}

    def emit(code, k, jt="", jf=""):
        prog.append((code, jt, jf, k))

    def at(name):
        label[name] = len(prog)

    emit(_LD_W_ABS, _ARCH)
    for i, a in enumerate(arches):
        emit(_JEQ, a.audit, jt=f"arch{i}")
    emit(_RET, RET_ERRNO | ENOSYS)
    for i, a in enumerate(arches):
        at(f"arch{i}")
        emit(_LD_W_ABS, _NR)
        if a.x32:
            emit(_JSET, X32_BIT, jt="nosys")
        emit(_JEQ, a.socket, jt="family")
        emit(_JEQ, a.ioctl, jt="ioctl")
        for nr in IO_URING:
            emit(_JEQ, nr, jt="nosys")
        if a.socketcall is not None:
            emit(_JEQ, a.socketcall, jt="socketcall")
        if a.setsockopt is not None:
            emit(_JEQ, a.setsockopt, jt="sockopt")
        emit(_RET, RET_ALLOW)
    at("socketcall")
    emit(_LD_W_ABS, _ARG0)
    emit(_JEQ, SYS_SOCKET, jt="refuse")
    emit(_JEQ, SYS_SETSOCKOPT, jt="eperm")
    emit(_RET, RET_ALLOW)
    at("sockopt")
    emit(_LD_W_ABS, _ARG1)
    emit(_JEQ, 0, jt="level_ip")
    emit(_JEQ, 41, jt="level_ip6")
    emit(_RET, RET_ALLOW)
    for level, tag in ((0, "level_ip"), (41, "level_ip6")):
        at(tag)
        emit(_LD_W_ABS, _ARG2)
        for lv, name in FORGING:
            if lv == level:
                emit(_JEQ, name, jt="eperm")
        emit(_RET, RET_ALLOW)
    at("ioctl")
    emit(_LD_W_ABS, _ARG1)
    emit(_JEQ, TIOCSTI, jt="eperm")
    emit(_JEQ, TIOCLINUX, jt="eperm")
    emit(_RET, RET_ALLOW)
    at("family")
    emit(_LD_W_ABS, _ARG0)
    for fam in ALLOWED_FAMILIES:
        emit(_JEQ, fam, jt="allow")
    at("refuse")
    emit(_RET, RET_ERRNO | EAFNOSUPPORT)
    at("allow")
    emit(_RET, RET_ALLOW)
    at("eperm")
    emit(_RET, RET_ERRNO | EPERM)
    at("nosys")
    emit(_RET, RET_ERRNO | ENOSYS)

    out = []
    for pc, (code, jt, jf, k) in enumerate(prog):
        def rel(name):
            if not name:
                return 0
            off = label[name] - pc - 1
            assert 0 <= off < 256, name
            return off
        out.append((code, rel(jt), rel(jf), k))
    return out


def run_filter(prog: list[tuple[int, int, int, int]], arch: int, nr: int,
               args: tuple[int, ...] = ()) -> int:
    """What PROG returns for one system call (a classic BPF interpreter of
    the instructions family_filter uses, for its tests and for doctor)."""
    args = tuple(args) + (0,) * (3 - len(args))
    data = {_NR: nr & 0xFFFFFFFF, _ARCH: arch, _ARG0: args[0] & 0xFFFFFFFF,
            _ARG1: args[1] & 0xFFFFFFFF, _ARG2: args[2] & 0xFFFFFFFF}
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = prog[pc]
        pc += 1
        if code == _LD_W_ABS:
            acc = data[k]
        elif code == _RET:
            return k
        elif code in (_JEQ, _JGE, _JSET):
            hit = acc == k if code == _JEQ else acc >= k if code == _JGE else bool(acc & k)
            pc += jt if hit else jf
        else:
            raise ValueError(f"instruction {code:#x} not used here")


_LIBC = None


def _libc():
    """libc through ctypes, loaded once (ctypes is imported only here, on
    the last steps before exec)."""
    global _LIBC
    if _LIBC is None:
        import ctypes
        _LIBC = ctypes.CDLL(None, use_errno=True)
        _LIBC.syscall.restype = ctypes.c_long
    return _LIBC


def install_family_filter() -> bool:
    """Refuse other socket families to this process and what it runs (a
    filter stays across exec and setuid). Needs CAP_SYS_ADMIN or no_new_privs.
    False when this machine's system call numbers are not known."""
    import ctypes
    import struct
    prog = family_filter(os.uname().machine)
    if prog is None:
        return False
    raw = b"".join(struct.pack("<HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(raw, len(raw))

    class Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    fprog = Fprog(len(prog), ctypes.addressof(buf))
    libc = _libc()
    if libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) != 0:     # PR_SET_SECCOMP, FILTER
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp: {os.strerror(err)}")
    return True


# ---------- ptrace and /proc/PID/mem: landlock ----------
#
# A workload as alice may ptrace(2) alice's other processes, write their
# /proc/PID/mem or take their descriptors (pidfd_getfd), and have them
# send for it from outside its session. In a Landlock domain a process may
# do none of that to processes outside the domain. The domain netleak makes
# handles no file-system right (one that did would forbid every mount, and
# with it the user-namespace sandboxes of browsers and flatpak); it scopes
# signals (ABI 6, Linux 6.12), the one restriction that needs no rules: a
# workload cannot signal processes outside its session either.

_SYS_LANDLOCK = (444, 445, 446)     # create_ruleset, add_rule, restrict_self (every arch)
_LL_VERSION = 1
_LL_SCOPE_SIGNAL = 1 << 1
LANDLOCK_SCOPED_ABI = 6


def landlock_abi() -> int:
    """The kernel's Landlock ABI version; 0 when it has none (not built,
    or not enabled at boot)."""
    import ctypes
    libc = _libc()
    v = libc.syscall(_SYS_LANDLOCK[0], None, ctypes.c_size_t(0), ctypes.c_uint32(_LL_VERSION))
    return max(0, int(v))


def scope_ptrace() -> bool:
    """Put this process (and what it runs) in a Landlock domain of its own,
    so it can neither trace, nor read or write the memory of, nor signal
    processes outside it. Needs CAP_SYS_ADMIN or no_new_privs. False when
    the kernel's Landlock is older than ABI 6 (or absent)."""
    import ctypes
    import struct
    if landlock_abi() < LANDLOCK_SCOPED_ABI:
        return False
    libc = _libc()
    # struct landlock_ruleset_attr: handled_access_fs, handled_access_net, scoped
    attr = ctypes.create_string_buffer(struct.pack("<QQQ", 0, 0, _LL_SCOPE_SIGNAL), 24)
    rs = libc.syscall(_SYS_LANDLOCK[0], attr, ctypes.c_size_t(24), ctypes.c_uint32(0))
    if rs < 0:
        raise OSError(ctypes.get_errno(), "landlock_create_ruleset")
    try:
        if libc.syscall(_SYS_LANDLOCK[2], ctypes.c_int(rs), ctypes.c_uint32(0)) != 0:
            raise OSError(ctypes.get_errno(), "landlock_restrict_self")
    finally:
        os.close(rs)
    return True


# services that act for whoever may write their socket, outside any session
SERVICE_SOCKETS = ("/run/docker.sock", "/var/run/docker.sock", "/run/podman/podman.sock",
                   "/run/containerd/containerd.sock", "/var/run/libvirt/libvirt-sock",
                   "/run/libvirt/libvirt-sock")


def writable_by(mode: int, owner: int, group: int, uid: int, gids: list[int]) -> bool:
    """Whether UID (with groups GIDS) may write a file of MODE, OWNER, GROUP."""
    if uid == 0:
        return True
    if uid == owner:
        return bool(mode & 0o200)
    if group in gids:
        return bool(mode & 0o020)
    return bool(mode & 0o002)


def user_reach(name: str, uid: int, gids: list[int], run_user: str = "/run/user",
               sockets: tuple[str, ...] = SERVICE_SOCKETS) -> list[str]:
    """What a workload run as NAME could have act for it from outside its
    session: its own login session's services, and services that start
    containers or machines for whoever may write their socket."""
    out = []
    if os.path.isdir(os.path.join(run_user, str(uid))):
        out.append(f"{name} has a login session or user manager here ({run_user}/{uid}): "
                   f"its services (D-Bus, systemd --user, ssh-agent, the desktop) may send "
                   f"for COMMAND from outside the session; run it as a user of its own")
    for path in sockets:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if writable_by(st.st_mode, st.st_uid, st.st_gid, uid, gids):
            out.append(f"{name} may use {path}, a service that starts containers or "
                       f"machines for it outside the session; run it as a user of its own")
    return out


def confine(as_user: bool) -> list[str]:
    """netleak-exec's last steps for the workload (as root, before dropping
    privileges): other socket families refused, ptrace scoped. Returns
    warnings for what this kernel cannot do (AS_USER: COMMAND runs as a
    user who may have other processes). OSError when a step fails."""
    warnings = []
    if not install_family_filter():
        warnings.append(f"this machine ({os.uname().machine}) is not one whose system "
                        f"calls netleak knows: sockets of other families than IPv4 and "
                        f"IPv6 (AF_VSOCK, AF_PACKET...) are not refused")
    if not scope_ptrace() and as_user and yama_ptrace_scope() < 1:
        warnings.append("this kernel has no Landlock scopes (Linux 6.12) nor Yama's "
                        "ptrace_scope 1: COMMAND may trace its user's other processes and "
                        "have them send for it; set kernel.yama.ptrace_scope=1 or run it "
                        "as a user of its own")
    return warnings


def yama_ptrace_scope(path: str = "/proc/sys/kernel/yama/ptrace_scope") -> int:
    """Yama's ptrace_scope, -1 without Yama."""
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return -1
