"""cgroup v2 through its filesystem."""
from __future__ import annotations

import errno
import os

from ..core.errors import NetleakError
from ..core.mounts import cgroup2_mount


def find_cgroup2() -> str:
    with open("/proc/self/mountinfo") as f:
        point = cgroup2_mount(f.read())
    if point is None:
        raise NetleakError(
            "no cgroup v2 mount found: mount one with "
            "'mount -t cgroup2 none /sys/fs/cgroup/unified' or boot with "
            "systemd.unified_cgroup_hierarchy=1")
    return point


def abspath(root: str, rel: str) -> str:
    return os.path.join(root, rel.strip("/"))


def cgroup_id(path: str) -> int:
    """The kernel's id of a cgroup: the inode of its directory."""
    return os.stat(path).st_ino


def make(path: str) -> None:
    """Create a cgroup (and its parents); it must not exist yet."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.mkdir(path, 0o755)


def join(path: str, pid: int = 0) -> None:
    with open(os.path.join(path, "cgroup.procs"), "w") as f:
        f.write(f"{pid or os.getpid()}\n")


def of_pid(pid: int) -> str:
    """cgroup v2 path (relative to the mount) of a process."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            hier, _, rest = line.rstrip("\n").partition(":")
            ctrl, _, path = rest.partition(":")
            if hier == "0" and ctrl == "":
                return path.lstrip("/")
    raise NetleakError(f"process {pid} has no cgroup v2 membership")


def populated(path: str) -> bool | None:
    """Whether the cgroup or a descendant holds a process; None if gone."""
    try:
        with open(os.path.join(path, "cgroup.events"), "rb") as f:
            return parse_populated(f.read())
    except FileNotFoundError:
        return None


def parse_populated(events: bytes) -> bool | None:
    """The populated flag of a cgroup.events text; None if it has none."""
    for line in events.splitlines():
        key, _, val = line.partition(b" ")
        if key == b"populated":
            return val.strip() == b"1"
    return None


def procs(path: str) -> list[int]:
    try:
        with open(os.path.join(path, "cgroup.procs")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def tree_procs(path: str) -> list[int]:
    """Processes of a cgroup and all its descendants."""
    return [pid for d, _, _ in os.walk(path) for pid in procs(d)]


def remove_tree(path: str) -> bool:
    """Remove an empty cgroup and its (empty) descendants, deepest first.
    True when it is gone (already gone counts)."""
    if not os.path.isdir(path):
        return True
    for dirpath, dirnames, _ in os.walk(path, topdown=False):
        for d in dirnames:
            _rmdir(os.path.join(dirpath, d))
    return _rmdir(path)


def _rmdir(path: str) -> bool:
    try:
        os.rmdir(path)
    except FileNotFoundError:
        return True
    except OSError as e:
        if e.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def remove_if_empty(path: str) -> None:
    """Remove a parent cgroup netleak made once nothing is left in it."""
    try:
        os.rmdir(path)
    except OSError:
        pass


def index_ids(root: str) -> dict[int, str]:
    """Every cgroup under the mount: id -> path relative to it."""
    ids: dict[int, str] = {}
    for dirpath, _, _ in os.walk(root):
        try:
            ids[os.stat(dirpath).st_ino] = "" if dirpath == root else \
                os.path.relpath(dirpath, root)
        except FileNotFoundError:
            continue
    return ids


def delegated(root: str, cgroups: list[str]) -> dict[str, str]:
    """Those of CGROUPS whose cgroup.procs someone other than root may
    write, with who ("uid 1000", "group 100", "everyone")."""
    out = {}
    for rel in cgroups:
        try:
            st = os.stat(os.path.join(abspath(root, rel), "cgroup.procs"))
        except FileNotFoundError:
            continue
        if st.st_mode & 0o002:
            out[rel] = "everyone"
        elif st.st_uid != 0 and st.st_mode & 0o200:
            out[rel] = f"uid {st.st_uid}"
        elif st.st_mode & 0o020 and st.st_gid != 0:
            out[rel] = f"group {st.st_gid}"
    return out


INIT_CGROUP_NS_INO = 0xEFFFFFFB   # the kernel's fixed inode of the first cgroup namespace


def sees_whole_tree() -> bool:
    """False inside a cgroup namespace, where part of the tree is hidden."""
    try:
        return os.stat("/proc/self/ns/cgroup").st_ino == INIT_CGROUP_NS_INO
    except OSError:
        return True     # no cgroup namespaces in this kernel: one tree


def sockets_made_in(path: str, make):
    """The sockets MAKE() returns, made by a child process that joins cgroup
    PATH first: a socket belongs for life to the cgroup it was made in, so
    the programs of that cgroup see its traffic whichever process uses it.
    An OSError of MAKE (a port in use) is raised here."""
    import socket
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    pid = os.fork()
    if pid == 0:    # the child: nothing but these few calls, then out
        status = 1
        try:
            ours.close()
            join(path)
            socks = make()
            socket.send_fds(theirs, [b"ok"], [s.fileno() for s in socks])
            status = 0
        except OSError as e:
            try:
                theirs.send(f"err {e.errno or 0}".encode())
            except OSError:
                pass
        finally:
            os._exit(status)
    theirs.close()
    try:
        msg, fds, _, _ = socket.recv_fds(ours, 64, 32)
    finally:
        ours.close()
        os.waitpid(pid, 0)
    if msg != b"ok":
        for fd in fds:
            os.close(fd)
        err = int(msg.split()[1]) if msg.startswith(b"err ") else errno.EIO
        raise OSError(err, os.strerror(err))
    return [socket.socket(fileno=fd) for fd in fds]
