"""The run directory: state file, daemon lock and socket, log.

Only the daemon writes the state file (it holds daemon.lock for life), so
writes are serialized by construction; readers see whole files, since each
write is a rename."""
from __future__ import annotations

import contextlib
import fcntl
import os

from .config import Config
from .errors import NetleakError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~3 ms at import: only for checkers
    from .state import State

DEFAULT_RUN_ROOT = "/run/netleak"


def netns_id() -> int:
    """Inode of this process's network namespace: one daemon per namespace."""
    return os.stat("/proc/self/ns/net").st_ino


def run_dir(cfg: Config) -> str:
    return cfg.run_dir or os.path.join(DEFAULT_RUN_ROOT, f"net-{netns_id()}")


class Store:
    """State of one network namespace, kept in its run directory."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.state_file = os.path.join(path, "state.json")
        self.socket_path = os.path.join(path, "daemon.sock")
        self.daemon_lock = os.path.join(path, "daemon.lock")
        self.pid_file = os.path.join(path, "daemon.pid")
        self.log_file = os.path.join(path, "daemon.log")

    def ensure_dir(self) -> None:
        try:
            os.makedirs(self.path, mode=0o700, exist_ok=True)
        except OSError as e:
            raise NetleakError(
                f"cannot create run directory {self.path}: {e.strerror} "
                f"(set NETLEAK_RUN_DIR to a writable place)") from None

    def load(self) -> "State":
        from .state import State, from_json  # dataclasses: off the exec path
        try:
            with open(self.state_file, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return State()
        try:
            return from_json(raw.decode("utf-8"))
        except UnicodeDecodeError:      # not ours: as any bad file, empty
            return State()

    def save(self, state: "State") -> None:
        from .state import to_json
        self.ensure_dir()
        tmp = os.path.join(self.path, f".state.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(to_json(state))
            # No fsync: the run directory lives on tmpfs and does not outlive
            # a reboot; the rename alone makes the update atomic for readers
            # and against a crash of this process.
            os.replace(tmp, self.state_file)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise

    def daemon_pid(self) -> int | None:
        """PID of the live daemon of this run directory, if any."""
        try:
            fd = os.open(self.daemon_lock, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                with open(self.pid_file) as f:
                    return int(f.read().strip() or 0) or None
            except (FileNotFoundError, ValueError):
                return None
        finally:
            os.close(fd)
        return None
