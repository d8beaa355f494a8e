"""What a workload starts with: no sockets from outside its session.

netleak-exec's last steps before exec. A socket the caller opened (and
passed on, as shells and service managers do) belongs to the caller's
cgroup: no program of the session sees its traffic, so a workload that
inherited one could send through it whatever its session says.
"""
from __future__ import annotations

import os
import stat


def inherited_sockets(first: int = 3) -> list[int]:
    """Open descriptors from FIRST on that are sockets."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd < first:
            continue
        try:
            if stat.S_ISSOCK(os.fstat(fd).st_mode):
                found.append(fd)
        except OSError:
            continue        # the directory listing's own descriptor, gone
    return found


def close_inherited_sockets() -> list[int]:
    """Close every socket above standard error; returns their numbers."""
    fds = inherited_sockets()
    for fd in fds:
        os.close(fd)
    return fds


# ---------- socket families: seccomp ----------
#
# The session's programs see the sockets of IPv4 and IPv6 only: a socket
# of another family that reaches off the machine (AF_VSOCK to a VM's host,
# AF_PACKET, AF_XDP, Bluetooth, CAN, TIPC, RDS, RxRPC, SMC, PPPoX...)
# would pass no check at all. A seccomp filter refuses socket(2) for every
# family but these (EAFNOSUPPORT: programs take it as "not supported here").

AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_ALG = 1, 2, 10, 16, 38
ALLOWED_FAMILIES = (AF_UNIX, AF_INET, AF_INET6, AF_NETLINK, AF_ALG)
# io_uring makes sockets without socket(2) (IORING_OP_SOCKET), where no
# filter can see the family: refused (ENOSYS: programs fall back to epoll)
IO_URING_SETUP = 425    # the same number on every architecture here

EAFNOSUPPORT, ENOSYS = 97, 38
SYS_SOCKET = 1          # socketcall(2)'s call number for socket(2)
X32_BIT = 0x40000000    # x86_64's x32 system calls

# per machine: (audit arch, socket(2)'s number, socketcall(2)'s or None);
# the native one first, then its 32-bit compat one
ARCHES = {
    "x86_64": ((0xC000003E, 41, None), (0x40000003, 359, 102)),
    "aarch64": ((0xC00000B7, 198, None), (0x40000028, 281, 102)),
    "riscv64": ((0xC00000F3, 198, None),),
}

# classic BPF (what seccomp runs) and seccomp's return values
_LD_W_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_NR, _ARCH, _ARG0 = 0, 4, 16       # offsets in struct seccomp_data (little-endian)


def family_filter(machine: str) -> list[tuple[int, int, int, int]] | None:
    """The filter as (code, jt, jf, k) instructions for MACHINE (os.uname's
    machine), or None when netleak does not know its system call numbers.

    socket(2) with a family outside ALLOWED_FAMILIES fails with
    EAFNOSUPPORT; so does socketcall(2)'s socket call in 32-bit programs
    (its arguments are in memory, which a filter cannot read); io_uring,
    x32 system calls and unknown architectures fail with ENOSYS: what they
    would do cannot be told."""
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
    for i, (arch, _, _) in enumerate(arches):
        emit(_JEQ, arch, jt=f"arch{i}")
    emit(_RET, RET_ERRNO | ENOSYS)
    for i, (_, nr_socket, nr_socketcall) in enumerate(arches):
        at(f"arch{i}")
        emit(_LD_W_ABS, _NR)
        if i == 0 and machine == "x86_64":
            emit(_JSET, X32_BIT, jt="nosys")
        emit(_JEQ, nr_socket, jt="family")
        if nr_socketcall is not None:
            emit(_JEQ, nr_socketcall, jt="socketcall")
        emit(_JEQ, IO_URING_SETUP, jt="nosys")
        emit(_RET, RET_ALLOW)
    at("socketcall")
    emit(_LD_W_ABS, _ARG0)
    emit(_JEQ, SYS_SOCKET, jt="refuse")
    emit(_RET, RET_ALLOW)
    at("family")
    emit(_LD_W_ABS, _ARG0)
    for fam in ALLOWED_FAMILIES:
        emit(_JEQ, fam, jt="allow")
    at("refuse")
    emit(_RET, RET_ERRNO | EAFNOSUPPORT)
    at("allow")
    emit(_RET, RET_ALLOW)
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
    data = {_NR: nr & 0xFFFFFFFF, _ARCH: arch, _ARG0: (args[0] if args else 0) & 0xFFFFFFFF}
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
