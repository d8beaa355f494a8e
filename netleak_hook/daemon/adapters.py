"""The kernel as the daemon's roles see it: rtnetlink through one handle, the
cgroup tree under one root, the pin sets and their maps, processes. Each
role receives these in its constructor; unit tests hand it fakes of the
same shape (tests/unit/fakes.py)."""
from __future__ import annotations

import os

from ..core.errors import NetleakError
from ..kernel import bpfsys, cgroupfs, netlink, programs


class Net:
    """Links, addresses, rules and routes of this namespace (one handle)."""

    def __init__(self, ipr) -> None:
        self.ipr = ipr

    def read_link(self, name: str):
        return netlink.read_link(self.ipr, name)

    def default_gateways(self, index: int):
        return netlink.default_gateways(self.ipr, index)

    def local_addresses(self) -> dict[str, int]:
        return netlink.local_addresses(self.ipr)

    def link_names(self) -> dict[int, str]:
        return netlink.link_names(self.ipr)

    def current_routes(self, table: int):
        return netlink.current_routes(self.ipr, table)

    def routes_in_tables(self, tables: set[int]):
        return netlink.routes_in_tables(self.ipr, tables)

    def add_route(self, route) -> None:
        netlink.add_route(self.ipr, route)

    def del_route(self, route) -> None:
        netlink.del_route(self.ipr, route)

    def list_rules(self, ours):
        return netlink.list_rules(self.ipr, ours)

    def lookup_table(self, family: int, mark: int, dst: str):
        return netlink.lookup_table(self.ipr, family, mark, dst)

    def add_rule(self, rule) -> None:
        netlink.add_rule(self.ipr, rule)

    def del_rule(self, rule) -> None:
        netlink.del_rule(self.ipr, rule)


class Cgroups:
    """The cgroup v2 tree under ROOT; paths are absolute, names relative."""

    def __init__(self, root: str) -> None:
        self.root = root

    def path(self, rel: str) -> str:
        return cgroupfs.abspath(self.root, rel)

    def populated(self, path: str) -> bool | None:
        return cgroupfs.populated(path)

    def cgroup_id(self, path: str) -> int:
        return cgroupfs.cgroup_id(path)

    def exists(self, path: str) -> bool:
        return os.path.isdir(path)

    def make(self, path: str) -> None:
        cgroupfs.make(path)

    def join(self, path: str, pid: int = 0) -> None:
        cgroupfs.join(path, pid)

    def of_pid(self, pid: int) -> str:
        return cgroupfs.of_pid(pid)

    def tree_procs(self, path: str) -> list[int]:
        return cgroupfs.tree_procs(path)

    def remove_tree(self, path: str) -> bool:
        return cgroupfs.remove_tree(path)

    def remove_if_empty(self, path: str) -> None:
        cgroupfs.remove_if_empty(path)

    def index_ids(self) -> dict[int, str]:
        return cgroupfs.index_ids(self.root)

    def delegated(self, cgroups: list[str]) -> dict[str, str]:
        return cgroupfs.delegated(self.root, cgroups)

    def sees_whole_tree(self) -> bool:
        return cgroupfs.sees_whole_tree()

    def sockets_made_in(self, path: str, make):
        return cgroupfs.sockets_made_in(path, make)

    def names(self, path: str) -> list[str]:
        """What PATH holds; [] when it cannot be read."""
        try:
            return os.listdir(path)
        except OSError:
            return []

    def stat(self, path: str) -> tuple[int, float] | None:
        """(cgroup id, time of its last change) of the cgroup at PATH; None
        when it is not one (or gone)."""
        if not os.path.isdir(path):
            return None
        try:
            st = os.stat(path)      # its inode is its cgroup id
        except FileNotFoundError:
            return None
        return st.st_ino, st.st_mtime


class Pins:
    """The pin sets under BPF_DIR: this daemon's (CURRENT, after ensure()),
    and their maps and programs, each opened once."""

    def __init__(self, bpf_dir: str) -> None:
        self.bpf_dir = bpf_dir
        self.current = programs.Pinset("")
        self.maps: dict[str, programs.Maps] = {}
        self.progs: dict[str, programs.Programs] = {}

    @property
    def path(self) -> str:
        return self.current.path

    def ensure(self) -> None:
        programs.ensure_bpffs(self.bpf_dir)
        self.current = programs.ensure_pinned(self.bpf_dir)

    def pin(self, name: str) -> str:
        return self.current.pin(name)

    def has(self, name: str) -> bool:
        return os.path.exists(self.current.pin(name))

    def attach_ingress(self, name: str, cgroup_path: str) -> None:
        """The pinned program NAME as an ingress filter of the cgroup at
        CGROUP_PATH (once)."""
        fd = bpfsys.obj_get(self.pin(name))
        try:
            cfd = os.open(cgroup_path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                kind = bpfsys.BPF_CGROUP_INET_INGRESS
                if bpfsys.prog_id(fd) not in bpfsys.prog_query(cfd, kind):
                    bpfsys.prog_attach(fd, cfd, kind)
            finally:
                os.close(cfd)
        finally:
            os.close(fd)

    def maps_for(self, pinset: str):
        """PINSET's maps (opened once); None when it is not usable."""
        return self._opened(self.maps, programs.Maps, pinset)

    def progs_for(self, pinset: str):
        """PINSET's programs (opened once); None when it is not usable."""
        return self._opened(self.progs, programs.Programs, pinset)

    @staticmethod
    def _opened(cache: dict, kind, pinset: str):
        if pinset not in cache:
            pins = programs.Pinset(pinset)
            if not pins.usable():
                return None
            cache[pinset] = kind(pins)
        return cache[pinset]

    def listed(self) -> list[str]:
        """Every usable pin set of BPF_DIR (other versions' too)."""
        try:
            names = sorted(os.listdir(self.bpf_dir))
        except OSError:
            return []
        found = []
        for n in names:
            pins = programs.Pinset(os.path.join(self.bpf_dir, n))
            try:
                if pins.check() and pins.usable():
                    found.append(pins.path)
            except NetleakError as e:
                from .notes import log
                log.warning("%s", e)     # never taken: another user's folder
        return found


class Procs:
    """Processes: alive or not, and their network namespace."""

    own_pid = staticmethod(os.getpid)

    @staticmethod
    def alive(pid: int) -> bool:
        from ..kernel.proc import running
        return running(pid)

    @staticmethod
    def netns_of(pid: int) -> int | None:
        """The inode of PID's network namespace; None when it is gone."""
        try:
            return os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            return None
