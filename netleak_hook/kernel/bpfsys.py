"""The few bpf(2) commands netleak needs, through the distribution's libbpf.

This keeps BCC (and LLVM) off the warm path: once the programs are pinned,
opening the pins, attaching and updating maps are libbpf's low-level calls
(thin wrappers of bpf(2)), reached through ctypes. libbpf is loaded on the
first call, not at import. Failures raise BpfError with the call's errno.
"""
from __future__ import annotations

import ctypes
import errno
import os

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

BPF_MAP_TYPE_HASH = 1
BPF_MAP_TYPE_RINGBUF = 27

BPF_F_ALLOW_MULTI = 2
BPF_ANY = 0
BPF_NOEXIST = 1

# libbpf 1.x first; Ubuntu 22.04 has only 0.5 (package libbpf0)
LIBRARIES = ("libbpf.so.1", "libbpf.so.0")
INSTALL = "install libbpf1 (Debian/Ubuntu; libbpf0 on Ubuntu 22.04) or libbpf (Fedora)"

_int, _u32, _ptr = ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p
_SIGNATURES = {  # the low-level calls used: argument types (all return int)
    "bpf_obj_get": (ctypes.c_char_p,),
    "bpf_obj_pin": (_int, ctypes.c_char_p),
    "bpf_prog_attach": (_int, _int, _int, ctypes.c_uint),
    "bpf_prog_detach2": (_int, _int, _int),
    "bpf_prog_query": (_int, _int, _u32, _ptr, _ptr, _ptr),
    "bpf_obj_get_info_by_fd": (_int, _ptr, _ptr),
    "bpf_map_get_fd_by_id": (_u32,),
    "bpf_map_lookup_elem": (_int, _ptr, _ptr),
    "bpf_map_update_elem": (_int, _ptr, _ptr, ctypes.c_uint64),
    "bpf_map_delete_elem": (_int, _ptr),
    "bpf_map_get_next_key": (_int, _ptr, _ptr),
    "bpf_prog_test_run_opts": (_int, _ptr),
}
# a map is made by bpf_map_create since libbpf 0.6, by bpf_create_map_name
# before (gone in 1.0)
_MAP_CREATE = {
    "bpf_map_create": (_u32, ctypes.c_char_p, _u32, _u32, _u32, _ptr),
    "bpf_create_map_name": (_u32, ctypes.c_char_p, _int, _int, _int, _u32),
}


class BpfError(OSError):
    """A bpf(2) call failed; errno is kept."""


class _TestRunOpts(ctypes.Structure):
    """libbpf's struct bpf_test_run_opts (its size goes in sz)."""
    _fields_ = [("sz", ctypes.c_size_t), ("data_in", _ptr), ("data_out", _ptr),
                ("data_size_in", _u32), ("data_size_out", _u32),
                ("ctx_in", _ptr), ("ctx_out", _ptr),
                ("ctx_size_in", _u32), ("ctx_size_out", _u32),
                ("retval", _u32), ("repeat", _int), ("duration", _u32),
                ("flags", _u32), ("cpu", _u32), ("batch_size", _u32)]


class _Missing(Exception):
    """The library lacks a call netleak makes (args: its name)."""


class _Lib:
    """libbpf's functions, typed."""

    def __init__(self, cdll: ctypes.CDLL) -> None:
        for name, args in _SIGNATURES.items():
            self._bind(cdll, name, args)
        self.map_create_name = next((n for n in _MAP_CREATE if hasattr(cdll, n)),
                                    "bpf_map_create")
        self._bind(cdll, self.map_create_name, _MAP_CREATE[self.map_create_name])
        # libbpf would raise RLIMIT_MEMLOCK to infinity before making a map
        # on kernels before 5.11: netleak leaves the process's limits alone
        if hasattr(cdll, "libbpf_set_memlock_rlim"):
            cdll.libbpf_set_memlock_rlim.argtypes = (ctypes.c_size_t,)
            cdll.libbpf_set_memlock_rlim(0)

    def _bind(self, cdll: ctypes.CDLL, name: str, args: tuple) -> None:
        try:
            fn = getattr(cdll, name)
        except AttributeError:
            raise _Missing(name) from None
        fn.argtypes = args
        fn.restype = ctypes.c_int
        setattr(self, name, fn)


_lib: _Lib | None = None


def _load(names: tuple[str, ...] = LIBRARIES) -> _Lib:
    """libbpf, opened on first use; a NetleakError when it is missing or
    lacks a call netleak makes."""
    from ..core.errors import NetleakError
    for name in names:
        try:
            cdll = ctypes.CDLL(name, use_errno=True)
        except OSError:
            continue
        try:
            return _Lib(cdll)
        except _Missing as e:
            raise NetleakError(f"{name} is too old (it has no {e.args[0]}): {INSTALL}") from None
    raise NetleakError(f"libbpf is missing ({' or '.join(names)} not found): {INSTALL}")


def _libbpf() -> _Lib:
    global _lib
    if _lib is None:
        _lib = _load()
    return _lib


def _check(ret: int, call: str) -> int:
    """RET of libbpf's CALL, or BpfError with its errno. libbpf 1.x returns
    -errno (and sets errno); 0.x returns -1 and leaves the errno of the
    syscall."""
    if ret >= 0:
        return ret
    err = -ret if ret < -1 else (ctypes.get_errno() or -ret)
    raise BpfError(err, f"{call}: {os.strerror(err)}")


def obj_get(path: str) -> int:
    """Open a pinned object; returns a new fd."""
    return _check((_lib or _libbpf()).bpf_obj_get(os.fsencode(path)), "bpf_obj_get")


def obj_pin(fd: int, path: str) -> None:
    _check((_lib or _libbpf()).bpf_obj_pin(fd, os.fsencode(path)), "bpf_obj_pin")


def prog_attach(prog_fd: int, cgroup_fd: int, attach_type: int,
                flags: int = BPF_F_ALLOW_MULTI) -> None:
    _check((_lib or _libbpf()).bpf_prog_attach(prog_fd, cgroup_fd, attach_type, flags),
           "bpf_prog_attach")


def prog_detach(prog_fd: int, cgroup_fd: int, attach_type: int) -> None:
    _check((_lib or _libbpf()).bpf_prog_detach2(prog_fd, cgroup_fd, attach_type),
           "bpf_prog_detach2")


def prog_query(cgroup_fd: int, attach_type: int, max_progs: int = 64) -> list[int]:
    """IDs of the programs attached directly to the cgroup for that hook."""
    ids = (ctypes.c_uint32 * max_progs)()
    cnt = ctypes.c_uint32(max_progs)
    _check((_lib or _libbpf()).bpf_prog_query(cgroup_fd, attach_type, 0, None, ids,
                                               ctypes.byref(cnt)), "bpf_prog_query")
    return list(ids[: cnt.value])


def _info(fd: int) -> bytes:
    """The bpf_prog_info or bpf_map_info of FD."""
    buf = (ctypes.c_uint8 * 256)()
    size = ctypes.c_uint32(256)
    _check((_lib or _libbpf()).bpf_obj_get_info_by_fd(fd, buf, ctypes.byref(size)),
           "bpf_obj_get_info_by_fd")
    return bytes(buf)


def _info_u32(fd: int, offset: int) -> int:
    """One u32 of the bpf_prog_info or bpf_map_info of FD."""
    return int.from_bytes(_info(fd)[offset:offset + 4], "little")


def prog_run_stats(prog_fd: int) -> tuple[int, int]:
    """(run_time_ns, run_cnt) of a loaded program: what the kernel counted
    while kernel.bpf_stats_enabled was on (bpf_prog_info, at 192 and 200)."""
    info = _info(prog_fd)
    return (int.from_bytes(info[192:200], "little"),
            int.from_bytes(info[200:208], "little"))


def map_value_size(map_fd: int) -> int:
    """value_size of a map (bpf_map_info: type, id, key_size, value_size)."""
    return _info_u32(map_fd, 12)


def prog_id(prog_fd: int) -> int:
    """The kernel's id of a loaded program (bpf_prog_info: type, id)."""
    return _info_u32(prog_fd, 4)


def map_create(map_type: int, key_size: int, value_size: int, max_entries: int,
               name: bytes) -> int:
    """A new map (no flags, NAME cut to 15 bytes); returns its fd."""
    lib = _lib or _libbpf()
    call = lib.map_create_name
    if call == "bpf_map_create":
        ret = lib.bpf_map_create(map_type, name[:15], key_size, value_size, max_entries, None)
    else:
        ret = lib.bpf_create_map_name(map_type, name[:15], key_size, value_size,
                                      max_entries, 0)
    return _check(ret, call)


def ringbuf_create(size: int, name: bytes) -> int:
    """A new BPF ring buffer of SIZE bytes (a power-of-two number of pages)."""
    return map_create(BPF_MAP_TYPE_RINGBUF, 0, 0, size, name)


def prog_test_run(prog_fd: int, data: bytes, ctx: bytes, repeat: int) -> tuple[int, int]:
    """Run a program REPEAT times on a packet in the kernel (for the
    benchmark): its return value and the mean time per run in ns."""
    d = ctypes.create_string_buffer(data, len(data))
    c = ctypes.create_string_buffer(ctx, len(ctx))
    o = _TestRunOpts(sz=ctypes.sizeof(_TestRunOpts), data_in=ctypes.addressof(d),
                     data_size_in=len(data), ctx_in=ctypes.addressof(c),
                     ctx_size_in=len(ctx), repeat=repeat)
    _check((_lib or _libbpf()).bpf_prog_test_run_opts(prog_fd, ctypes.byref(o)),
           "bpf_prog_test_run_opts")
    return o.retval, o.duration


def map_fd_by_id(map_id: int) -> int:
    return _check((_lib or _libbpf()).bpf_map_get_fd_by_id(map_id), "bpf_map_get_fd_by_id")


def map_update(map_fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    _check((_lib or _libbpf()).bpf_map_update_elem(map_fd, key, value, flags),
           "bpf_map_update_elem")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes | None:
    v = ctypes.create_string_buffer(value_size)
    try:
        _check((_lib or _libbpf()).bpf_map_lookup_elem(map_fd, key, v), "bpf_map_lookup_elem")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return None
        raise
    return v.raw


def map_delete(map_fd: int, key: bytes) -> bool:
    """Delete a key; False when it was already gone."""
    try:
        _check((_lib or _libbpf()).bpf_map_delete_elem(map_fd, key), "bpf_map_delete_elem")
    except BpfError as e:
        if e.errno == errno.ENOENT:
            return False
        raise
    return True


def map_keys(map_fd: int, key_size: int) -> list[bytes]:
    lib = _lib or _libbpf()
    keys: list[bytes] = []
    cur = None
    while True:
        nxt = ctypes.create_string_buffer(key_size)
        try:
            _check(lib.bpf_map_get_next_key(map_fd, cur, nxt), "bpf_map_get_next_key")
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
