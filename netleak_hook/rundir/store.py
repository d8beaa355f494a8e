"""The run directory: state file, daemon lock and socket, logs.

Only the daemon writes the state file (it holds daemon.lock for life), so
writes are serialized by construction; readers see whole files, since each
write is a rename. The directory must be root's and writable by nobody
else (safedir), and every file in it is opened relative to it, never
through a link."""
from __future__ import annotations

import fcntl
import os

from . import safedir
from ..core.config import Config
from ..core.errors import NetleakError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~3 ms at import: only for checkers
    from ..core.state import State

DEFAULT_RUN_ROOT = "/run/netleak"
FIX = "set NETLEAK_RUN_DIR to a directory of root's (under /run, say)"


def netns_id() -> int:
    """Inode of this process's network namespace: one daemon per namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def run_dir(cfg: Config) -> str:
    return cfg.run_dir or os.path.join(DEFAULT_RUN_ROOT, f"net-{netns_id()}")


class Store:
    """State of one network namespace, kept in its run directory."""

    STATE = "state.json"
    SOCKET = "daemon.sock"
    LOCK = "daemon.lock"
    PID = "daemon.pid"
    LOG = "daemon.log"

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_file = os.path.join(path, self.STATE)
        self.socket_path = os.path.join(path, self.SOCKET)
        self.daemon_lock = os.path.join(path, self.LOCK)
        self.pid_file = os.path.join(path, self.PID)
        self.log_file = os.path.join(path, self.LOG)
        self._fd: int | None = None

    # ---------- the directory ----------

    def dir_fd(self, create: bool = False) -> int:
        """The run directory's descriptor, once checked (and made, with
        CREATE). FileNotFoundError when it does not exist."""
        if self._fd is None:
            try:
                self._fd = safedir.open_dir(self.path, "run directory", FIX, create=create)
            except FileNotFoundError:
                raise
            except OSError as e:
                raise NetleakError(f"cannot open run directory {self.path}: {e.strerror} "
                                   f"({FIX})") from None
        return self._fd

    def ensure_dir(self) -> None:
        self.dir_fd(create=True)

    def check(self) -> bool:
        """Whether the run directory exists; NetleakError when it is not to
        be trusted (what anyone who reads or talks to it asks first)."""
        try:
            self.dir_fd()
        except FileNotFoundError:
            return False
        return True

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        # a Store made for one look (Store(path).load()) keeps no descriptor
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def open(self, name: str, flags: int, mode: int = 0o600) -> int:
        """NAME in the run directory (never through a link)."""
        return safedir.open_file(self.dir_fd(create=bool(flags & os.O_CREAT)), name,
                                 flags, mode, self.path)

    # ---------- the state file ----------

    def load(self) -> "State":
        from ..core.state import State, from_json  # dataclasses: off the exec path
        try:
            fd = self.open(self.STATE, os.O_RDONLY)
        except FileNotFoundError:
            return State()
        with os.fdopen(fd, "rb") as f:
            raw = f.read()
        try:
            return from_json(raw.decode("utf-8"))
        except UnicodeDecodeError:      # not ours: as any bad file, empty
            return State()

    def save(self, state: "State") -> None:
        from ..core.state import to_json
        dfd = self.dir_fd(create=True)
        tmp = f".state.{os.getpid()}.tmp"
        _unlink(tmp, dfd)           # a crash's leftover of this pid
        fd = self.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(to_json(state))
            # No fsync: the run directory lives on tmpfs and does not outlive
            # a reboot; the rename alone makes the update atomic for readers
            # and against a crash of this process.
            os.replace(tmp, self.STATE, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            _unlink(tmp, dfd)
            raise

    # ---------- the daemon ----------

    def take_lock(self) -> int | None:
        """Hold daemon.lock (for the daemon's life) and write daemon.pid;
        None if another daemon holds it."""
        fd = self.open(self.LOCK, os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        pid = self.open(self.PID, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        with os.fdopen(pid, "w") as f:
            f.write(f"{os.getpid()}\n")
        return fd

    def daemon_pid(self) -> int | None:
        """PID of the live daemon of this run directory, if any."""
        try:
            fd = self.open(self.LOCK, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                with os.fdopen(self.open(self.PID, os.O_RDONLY)) as f:
                    return int(f.read().strip() or 0) or None
            except (FileNotFoundError, ValueError):
                return None
        finally:
            os.close(fd)
        return None

    def remove(self, name: str) -> None:
        """Unlink NAME in the run directory; gone already is fine."""
        _unlink(name, self.dir_fd())


def _unlink(name: str, dir_fd: int) -> None:
    """Unlink NAME in DIR_FD; gone already is fine. (Not contextlib: it is
    on netleak-exec's warm path, and brings functools and collections.)"""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except FileNotFoundError:
        pass
