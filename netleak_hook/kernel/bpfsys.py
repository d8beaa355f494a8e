"""The few bpf(2) commands netleak needs, through ctypes.

This keeps BCC (and LLVM) off the warm path: once the programs are pinned,
opening the pins, attaching and updating maps are plain syscalls.
"""
from __future__ import annotations

import ctypes
import errno
import os
import platform

_SYS_BPF = {"x86_64": 321, "aarch64": 280, "armv7l": 386, "ppc64le": 361,
            "s390x": 351, "riscv64": 280}

BPF_MAP_CREATE = 0
BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_MAP_DELETE_ELEM = 3
BPF_MAP_GET_NEXT_KEY = 4
BPF_OBJ_PIN = 6
BPF_OBJ_GET = 7
BPF_PROG_ATTACH = 8
BPF_PROG_DETACH = 9
BPF_PROG_TEST_RUN = 10
BPF_MAP_GET_FD_BY_ID = 14
BPF_OBJ_GET_INFO_BY_FD = 15
BPF_PROG_QUERY = 16

BPF_CGROUP_INET_INGRESS = 0
BPF_CGROUP_INET_EGRESS = 1
BPF_CGROUP_INET_SOCK_CREATE = 2
BPF_CGROUP_SOCK_OPS = 3
BPF_CGROUP_INET4_CONNECT = 10
BPF_CGROUP_INET6_CONNECT = 11
BPF_CGROUP_UDP4_SENDMSG = 14
BPF_CGROUP_UDP6_SENDMSG = 15
BPF_CGROUP_UDP4_RECVMSG = 19
BPF_CGROUP_UDP6_RECVMSG = 20
BPF_CGROUP_SETSOCKOPT = 22
BPF_CGROUP_INET_SOCK_RELEASE = 34
BPF_CGROUP_INET4_GETPEERNAME = 29
BPF_CGROUP_INET6_GETPEERNAME = 30

BPF_MAP_TYPE_RINGBUF = 27

BPF_F_ALLOW_MULTI = 2
BPF_ANY = 0

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class BpfError(OSError):
    """A bpf(2) call failed; errno is kept."""


def _bpf(cmd: int, attr: ctypes.Structure) -> int:
    nr = _SYS_BPF.get(platform.machine())
    if nr is None:
        raise BpfError(errno.ENOSYS, f"bpf(2) number unknown on {platform.machine()}")
    ret = _libc.syscall(nr, cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if ret < 0:
        err = ctypes.get_errno()
        raise BpfError(err, f"bpf cmd {cmd}: {os.strerror(err)}")
    return ret


class _MapElem(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("pad", ctypes.c_uint32),
                ("key", ctypes.c_uint64), ("value", ctypes.c_uint64),
                ("flags", ctypes.c_uint64)]


class _ObjPin(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32)]


class _Attach(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_bpf_fd", ctypes.c_uint32),
                ("attach_type", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("replace_bpf_fd", ctypes.c_uint32)]


class _Query(ctypes.Structure):
    _fields_ = [("target_fd", ctypes.c_uint32), ("attach_type", ctypes.c_uint32),
                ("query_flags", ctypes.c_uint32), ("attach_flags", ctypes.c_uint32),
                ("prog_ids", ctypes.c_uint64), ("prog_cnt", ctypes.c_uint32),
                ("pad", ctypes.c_uint32)]


class _MapCreate(ctypes.Structure):
    _fields_ = [("map_type", ctypes.c_uint32), ("key_size", ctypes.c_uint32),
                ("value_size", ctypes.c_uint32), ("max_entries", ctypes.c_uint32),
                ("map_flags", ctypes.c_uint32), ("inner_map_fd", ctypes.c_uint32),
                ("numa_node", ctypes.c_uint32), ("map_name", ctypes.c_char * 16)]


class _TestRun(ctypes.Structure):
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64)]


class _GetById(ctypes.Structure):
    _fields_ = [("id", ctypes.c_uint32), ("next_id", ctypes.c_uint32),
                ("open_flags", ctypes.c_uint32)]


class _InfoByFd(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


def obj_get(path: str) -> int:
    """Open a pinned object; returns a new fd."""
    p = ctypes.create_string_buffer(os.fsencode(path))
    return _bpf(BPF_OBJ_GET, _ObjPin(pathname=ctypes.addressof(p)))


def obj_pin(fd: int, path: str) -> None:
    p = ctypes.create_string_buffer(os.fsencode(path))
    _bpf(BPF_OBJ_PIN, _ObjPin(pathname=ctypes.addressof(p), bpf_fd=fd))


def prog_attach(prog_fd: int, cgroup_fd: int, attach_type: int,
                flags: int = BPF_F_ALLOW_MULTI) -> None:
    _bpf(BPF_PROG_ATTACH, _Attach(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                                  attach_type=attach_type, attach_flags=flags))


def prog_detach(prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
    _bpf(BPF_PROG_DETACH, _Attach(target_fd=cgroup_fd, attach_bpf_fd=prog_fd,
                                  attach_type=attach_type))


def prog_query(cgroup_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """IDs of the programs attached directly to the cgroup for that hook."""
    ids = (ctypes.c_uint32 * max_progs)()
    q = _Query(target_fd=cgroup_fd, attach_type=attach_type,
               prog_ids=ctypes.addressof(ids), prog_cnt=max_progs)
    _bpf(BPF_PROG_QUERY, q)
    return list(ids[: q.prog_cnt])


def _info_u32(fd: int, offset: int) -> int:
    """One u32 of the bpf_prog_info or bpf_map_info of FD."""
    buf = (ctypes.c_uint8 * 256)()
    _bpf(BPF_OBJ_GET_INFO_BY_FD, _InfoByFd(bpf_fd=fd, info_len=256,
                                           info=ctypes.addressof(buf)))
    return int.from_bytes(bytes(buf[offset:offset + 4]), "little")


def map_value_size(map_fd: int) -> int:
    """value_size of a map (bpf_map_info: type, id, key_size, value_size)."""
    return _info_u32(map_fd, 12)


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (bpf_prog_info: type, id)."""
    return _info_u32(prog_fd, 4)


def ringbuf_create(size: int, name: bytes) -> int:
    """A new BPF ring buffer of SIZE bytes (a power-of-two number of pages)."""
    return _bpf(BPF_MAP_CREATE, _MapCreate(map_type=BPF_MAP_TYPE_RINGBUF,
                                           max_entries=size, map_name=name[:15]))


def prog_test_run(prog_fd: int, data: bytes, ctx: bytes, repeat: int) -> tuple[int, int]:
    """Run a program REPEAT times on a packet in the kernel (for the
    benchmark): its return value and the mean time per run in ns."""
    d = ctypes.create_string_buffer(data, len(data))
    c = ctypes.create_string_buffer(ctx, len(ctx))
    a = _TestRun(prog_fd=prog_fd, data_size_in=len(data), data_in=ctypes.addressof(d),
                 repeat=repeat, ctx_size_in=len(ctx), ctx_in=ctypes.addressof(c))
    _bpf(BPF_PROG_TEST_RUN, a)
    return a.retval, a.duration


def map_fd_by_id(map_id: int) -> int:
    return _bpf(BPF_MAP_GET_FD_BY_ID, _GetById(id=map_id))


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value, len(value))
    _bpf(BPF_MAP_UPDATE_ELEM, _MapElem(map_fd=map_fd, key=ctypes.addressof(k),
                                       value=ctypes.addressof(v), flags=flags))


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    try:
        _bpf(BPF_MAP_LOOKUP_ELEM, _MapElem(map_fd=map_fd, key=ctypes.addressof(k),
                                           value=ctypes.addressof(v)))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete a key; False when it was already gone."""
    k = ctypes.create_string_buffer(key, len(key))
    try:
        _bpf(BPF_MAP_DELETE_ELEM, _MapElem(map_fd=map_fd, key=ctypes.addressof(k)))
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    keys: list[bytes] = []
    cur = None
    while True:
        k = ctypes.create_string_buffer(cur, key_size) if cur else None
        nxt = ctypes.create_string_buffer(key_size)
        try:
            _bpf(BPF_MAP_GET_NEXT_KEY, _MapElem(
                map_fd=map_fd, key=ctypes.addressof(k) if k else 0,
                value=ctypes.addressof(nxt)))
        except BpfError as e:
            if e.errno == errno.ENOENT:
                return keys
            raise
        cur = nxt.raw
        keys.append(cur)


def possible_cpus() -> int:
    """Number of possible CPUs: the stride of per-CPU map values."""
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    n = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        n += (int(hi) if hi else int(lo)) - int(lo) + 1
    return n
