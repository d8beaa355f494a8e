"""netleak_hook.kernel.bpfsys over a fake libbpf: errno as both libbpf
conventions report it (1.x returns -errno, 0.x returns -1 and sets errno),
what each call returns, and the library loaded on first use only."""
from __future__ import annotations

import ctypes
import errno
import subprocess
import sys

import pytest

from netleak_hook.core.errors import NetleakError
from netleak_hook.kernel import bpfsys


def legacy_fail(err: int) -> int:
    """What libbpf 0.x returns for a failed syscall: -1, errno set."""
    ctypes.set_errno(err)
    return -1


class FakeLib:
    """A libbpf whose calls are Python functions, over a dict as map."""

    map_create_name = "bpf_map_create"

    def __init__(self) -> None:
        self.map: dict[bytes, bytes] = {}
        self.calls: list[tuple] = []
        self.fail: int | None = None    # every call returns this when set

    def bpf_map_lookup_elem(self, fd, key, value):
        if self.fail is not None:
            return self.fail
        if key not in self.map:
            return -errno.ENOENT
        ctypes.memmove(value, self.map[key], len(self.map[key]))
        return 0

    def bpf_map_update_elem(self, fd, key, value, flags):
        self.calls.append(("update", fd, key, value, flags))
        if self.fail is not None:
            return self.fail
        self.map[key] = value
        return 0

    def bpf_map_delete_elem(self, fd, key):
        if self.fail is not None:
            return self.fail
        return 0 if self.map.pop(key, None) is not None else -errno.ENOENT

    def bpf_map_get_next_key(self, fd, key, next_key):
        if self.fail is not None:
            return self.fail
        keys = sorted(self.map)
        later = keys if key is None else [k for k in keys if k > key]
        if not later:
            return -errno.ENOENT
        ctypes.memmove(next_key, later[0], len(later[0]))
        return 0

    def bpf_obj_get(self, path):
        self.calls.append(("obj_get", path))
        return self.fail if self.fail is not None else 7

    def bpf_prog_query(self, target_fd, attach_type, flags, attach_flags, ids, cnt):
        self.calls.append(("query", target_fd, attach_type, flags, cnt._obj.value))
        if self.fail is not None:
            return self.fail
        for i, v in enumerate((11, 12, 13)):
            ids[i] = v
        cnt._obj.value = 3
        return 0

    def bpf_obj_get_info_by_fd(self, fd, buf, size):
        self.calls.append(("info", fd, size._obj.value))
        if self.fail is not None:
            return self.fail
        # bpf_map_info: type 1, id 42, key_size 8, value_size 248
        for i, v in enumerate((1, 42, 8, 248)):
            buf[4 * i:4 * i + 4] = list(v.to_bytes(4, "little"))
        # bpf_prog_info: run_time_ns, run_cnt
        buf[192:200] = list((5 * 2**32 + 7).to_bytes(8, "little"))
        buf[200:208] = list((3 * 2**32 + 1).to_bytes(8, "little"))
        return 0

    def bpf_map_create(self, map_type, name, key_size, value_size, max_entries, opts):
        self.calls.append(("create", map_type, name, key_size, value_size, max_entries, opts))
        return self.fail if self.fail is not None else 9

    def bpf_create_map_name(self, map_type, name, key_size, value_size, max_entries, flags):
        self.calls.append(("create_name", map_type, name, key_size, value_size, max_entries,
                           flags))
        return self.fail if self.fail is not None else 10


@pytest.fixture
def lib(monkeypatch):
    fake = FakeLib()
    monkeypatch.setattr(bpfsys, "_lib", fake)
    return fake


@pytest.mark.parametrize("ret", [-errno.EPERM, -errno.ENOSPC, -errno.EBADF])
def test_errno_returned_directly(ret):
    # libbpf 1.x returns -errno and sets errno too (-1 is EPERM either way);
    # the errno a call made earlier in this thread must not be read instead
    ctypes.set_errno(-ret)
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys._check(ret, "bpf_obj_get")
    assert e.value.errno == -ret
    assert isinstance(e.value, OSError)
    assert str(e.value.strerror).startswith("bpf_obj_get: ")


@pytest.mark.parametrize("err", [errno.EPERM, errno.EINVAL, errno.ENOENT])
def test_errno_set_with_minus_one(err):
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys._check(legacy_fail(err), "bpf_prog_attach")
    assert e.value.errno == err


def test_minus_one_without_errno_is_eperm():
    ctypes.set_errno(0)
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys._check(-1, "bpf_prog_attach")
    assert e.value.errno == errno.EPERM


def test_success_passes_the_value_on():
    assert bpfsys._check(0, "x") == 0
    assert bpfsys._check(5, "x") == 5


def test_lookup(lib):
    lib.map[b"k" * 8] = b"v" * 16
    assert bpfsys.map_lookup(3, b"k" * 8, 16) == b"v" * 16
    assert bpfsys.map_lookup(3, b"x" * 8, 16) is None


@pytest.mark.parametrize("legacy", [False, True])
def test_lookup_miss_in_both_conventions_and_other_errors_raise(lib, legacy):
    def failing(err):
        if legacy:
            return lambda fd, k, v: legacy_fail(err)
        return lambda fd, k, v: -err
    lib.bpf_map_lookup_elem = failing(errno.ENOENT)
    assert bpfsys.map_lookup(3, b"k" * 8, 16) is None
    lib.bpf_map_lookup_elem = failing(errno.EBADF)
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_lookup(3, b"k" * 8, 16)
    assert e.value.errno == errno.EBADF


def test_update_and_delete(lib):
    bpfsys.map_update(4, b"a" * 8, b"b" * 4)
    assert lib.calls[-1] == ("update", 4, b"a" * 8, b"b" * 4, bpfsys.BPF_ANY)
    bpfsys.map_update(4, b"a" * 8, b"c" * 4, 1)
    assert lib.calls[-1][-1] == 1
    assert bpfsys.map_delete(4, b"a" * 8) is True
    assert bpfsys.map_delete(4, b"a" * 8) is False
    lib.fail = -errno.EEXIST
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_update(4, b"a" * 8, b"c" * 4, 1)
    assert e.value.errno == errno.EEXIST
    lib.fail = -errno.EPERM
    with pytest.raises(bpfsys.BpfError):
        bpfsys.map_delete(4, b"a" * 8)


def test_keys_walk_until_enoent(lib):
    assert bpfsys.map_keys(3, 8) == []
    for i in (3, 1, 2):
        lib.map[i.to_bytes(8, "big")] = b""
    assert bpfsys.map_keys(3, 8) == [i.to_bytes(8, "big") for i in (1, 2, 3)]
    lib.fail = -errno.EBADF
    with pytest.raises(bpfsys.BpfError):
        bpfsys.map_keys(3, 8)


def test_obj_get_passes_the_path_and_returns_the_fd(lib):
    assert bpfsys.obj_get("/sys/fs/bpf/x/map_policy") == 7
    assert lib.calls[-1] == ("obj_get", b"/sys/fs/bpf/x/map_policy")
    lib.fail = -errno.ENOENT
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.obj_get("/nowhere")
    assert e.value.errno == errno.ENOENT


def test_prog_query_returns_the_ids_the_kernel_counted(lib):
    assert bpfsys.prog_query(5, bpfsys.BPF_CGROUP_INET_EGRESS) == [11, 12, 13]
    assert lib.calls[-1] == ("query", 5, bpfsys.BPF_CGROUP_INET_EGRESS, 0, 64)
    lib.fail = -errno.ENOSPC
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.prog_query(5, bpfsys.BPF_CGROUP_INET_EGRESS, max_progs=2)
    assert e.value.errno == errno.ENOSPC


def test_info_fields(lib):
    assert bpfsys.map_value_size(6) == 248
    assert bpfsys.prog_id(6) == 42
    assert lib.calls[-1] == ("info", 6, 256)
    assert bpfsys.prog_run_stats(6) == (5 * 2**32 + 7, 3 * 2**32 + 1)


def test_map_create_cuts_the_name_and_uses_what_the_library_has(lib):
    assert bpfsys.ringbuf_create(65536, b"netleak_events_and_more") == 9
    assert lib.calls[-1] == ("create", bpfsys.BPF_MAP_TYPE_RINGBUF, b"netleak_events_",
                             0, 0, 65536, None)
    lib.map_create_name = "bpf_create_map_name"      # libbpf before 0.6
    assert bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 8, 16, 64, b"h") == 10
    assert lib.calls[-1] == ("create_name", bpfsys.BPF_MAP_TYPE_HASH, b"h", 8, 16, 64, 0)
    lib.bpf_create_map_name = lambda *a: legacy_fail(errno.EPERM)
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 8, 16, 64, b"h")
    assert e.value.errno == errno.EPERM and "bpf_create_map_name" in e.value.strerror


def test_missing_library_is_one_line_that_says_what_to_install():
    with pytest.raises(NetleakError) as e:
        bpfsys._load(("libbpf-not-here.so.9",))
    msg = str(e.value)
    assert "\n" not in msg and "install libbpf1" in msg and "libbpf-not-here.so.9" in msg


def test_library_without_the_calls_is_too_old():
    # libc has none of libbpf's calls
    with pytest.raises(NetleakError) as e:
        bpfsys._load(("libbpf-not-here.so.9", "libc.so.6"))
    assert "libc.so.6 is too old (it has no bpf_obj_get)" in str(e.value)
    assert "install libbpf1" in str(e.value)


def test_the_distributions_library_has_every_call():
    try:
        ctypes.CDLL(bpfsys.LIBRARIES[0])
    except OSError:
        pytest.skip(f"{bpfsys.LIBRARIES[0]} is not installed")
    lib = bpfsys._load()
    assert lib.map_create_name == "bpf_map_create"
    for name in bpfsys._SIGNATURES:
        assert getattr(lib, name).restype is ctypes.c_int


def test_import_loads_no_library():
    code = ("from netleak_hook.kernel import bpfsys\n"
            "print(any('libbpf' in line for line in open('/proc/self/maps')))\n"
            "print(bpfsys._lib is None)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["False", "True"]
