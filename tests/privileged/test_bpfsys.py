"""bpfsys against the kernel through libbpf: a hash map of the test's own,
its elements, a pin of it, and the errors callers tell apart by errno."""
from __future__ import annotations

import errno
import os

import pytest

from netleak_hook.kernel import bpfsys, programs
from tests.conftest import require_root

pytestmark = pytest.mark.privileged


@pytest.fixture
def hash_map():
    require_root()
    fd = bpfsys.map_create(bpfsys.BPF_MAP_TYPE_HASH, 8, 16, 64, b"nl_test_hash")
    try:
        yield fd
    finally:
        os.close(fd)


def key(i: int) -> bytes:
    return i.to_bytes(8, "little")


def test_elements(hash_map):
    assert bpfsys.map_lookup(hash_map, key(1), 16) is None
    assert bpfsys.map_keys(hash_map, 8) == []
    for i in range(10):
        bpfsys.map_update(hash_map, key(i), key(i) * 2)
    assert bpfsys.map_lookup(hash_map, key(3), 16) == key(3) * 2
    assert sorted(bpfsys.map_keys(hash_map, 8)) == [key(i) for i in range(10)]
    bpfsys.map_update(hash_map, key(3), b"\1" * 16)
    assert bpfsys.map_lookup(hash_map, key(3), 16) == b"\1" * 16
    assert bpfsys.map_delete(hash_map, key(3)) is True
    assert bpfsys.map_delete(hash_map, key(3)) is False
    assert bpfsys.map_lookup(hash_map, key(3), 16) is None
    assert bpfsys.map_value_size(hash_map) == 16


def test_errors_keep_their_errno(hash_map):
    bpfsys.map_update(hash_map, key(1), b"\0" * 16)
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_update(hash_map, key(1), b"\0" * 16, 1)     # BPF_NOEXIST
    assert e.value.errno == errno.EEXIST
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_update(hash_map, key(2), b"\0" * 16, 2)     # BPF_EXIST
    assert e.value.errno == errno.ENOENT
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.obj_get("/sys/fs/bpf/netleak-no-such-pin")
    assert e.value.errno == errno.ENOENT
    with pytest.raises(bpfsys.BpfError) as e:
        bpfsys.map_fd_by_id(0)
    assert e.value.errno == errno.ENOENT
    fd = os.open("/", os.O_RDONLY)
    try:
        with pytest.raises(bpfsys.BpfError) as e:
            bpfsys.map_lookup(fd, key(1), 16)               # not a BPF map
        assert e.value.errno == errno.EINVAL
    finally:
        os.close(fd)


def test_pin_and_open_again(hash_map, test_pins):
    programs.ensure_bpffs(test_pins)
    path = os.path.join(test_pins, "map_bpfsys_test")
    bpfsys.obj_pin(hash_map, path)
    try:
        with pytest.raises(bpfsys.BpfError) as e:
            bpfsys.obj_pin(hash_map, path)
        assert e.value.errno == errno.EEXIST
        bpfsys.map_update(hash_map, key(7), key(7) * 2)
        fd = bpfsys.obj_get(path)
        try:
            assert bpfsys.map_lookup(fd, key(7), 16) == key(7) * 2
        finally:
            os.close(fd)
    finally:
        os.unlink(path)


def test_ring_buffer(hash_map):
    fd = bpfsys.ringbuf_create(16 * 4096, b"netleak_test")
    try:
        assert bpfsys.map_value_size(fd) == 0
    finally:
        os.close(fd)


def test_test_run_of_the_egress_program(test_pins):
    """The kernel runs a pinned program on a packet: one from this process's
    cgroup, which has no policy entry, is dropped (fail closed)."""
    require_root()
    import struct
    programs.ensure_bpffs(test_pins)
    pins = programs.ensure_pinned(test_pins)
    maps = programs.Maps(pins)
    prog = bpfsys.obj_get(pins.pin("prog_egress"))
    before = set(bpfsys.map_keys(maps.stats, 8))
    try:
        assert bpfsys.prog_id(prog) > 0
        udp = struct.pack("!HHHH", 40000, 9, 16, 0) + b"x" * 8
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0,
                         bytes([192, 0, 2, 1]), bytes([198, 51, 100, 2]))
        packet = b"\0" * 12 + b"\x08\x00" + ip + udp
        ctx = struct.pack("<11I", *([0] * 10 + [2]))          # ifindex 2
        verdict, ns = bpfsys.prog_test_run(prog, packet, ctx, 100)
        assert verdict == 0 and 0 < ns < 1_000_000
    finally:
        for k in set(bpfsys.map_keys(maps.stats, 8)) - before:   # the drop's counters
            bpfsys.map_delete(maps.stats, k)
        os.close(prog)
        maps.close()


def test_a_killed_suites_pin_folder_is_removed_by_the_next_run(tmp_path):
    """A suite killed before its teardown leaves /sys/fs/bpf/netleak-test-<pid>:
    the next run removes it, by name, once that pid is gone; a live run's
    folder (this one's) and other folders stay."""
    import subprocess
    import sys
    from tests.privileged.conftest import remove_stale_test_pins
    require_root()
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    dead = f"/sys/fs/bpf/netleak-test-{p.pid}"
    live = f"/sys/fs/bpf/netleak-test-{os.getpid()}"
    os.makedirs(os.path.join(dead, "v1-0123456789ab"))
    made_live = not os.path.exists(live)
    os.makedirs(live, exist_ok=True)
    try:
        removed = remove_stale_test_pins()
        assert os.path.basename(dead) in removed and not os.path.exists(dead)
        assert os.path.isdir(live)
        assert not [n for n in removed if not n.startswith("netleak-test-")]
    finally:
        programs.remove_pins(dead)
        if made_live:
            os.rmdir(live)
