"""systemd's D-Bus API, the little netleak asks of it: a transient scope for
a process, and the cgroup systemd gave it. Through jeepney (pure Python,
packaged by Debian and PyPI): no hand-written wire protocol, no C binding,
and nothing on netleak-exec's path (the daemon asks)."""
from __future__ import annotations

import os
import time

from ..core.errors import NetleakError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER = "org.freedesktop.systemd1.Manager"
SLICE = "netleak.slice"
RUNTIME_UNITS = "/run/systemd/system"   # drop-ins that go with a reboot
DROPIN = "netleak.conf"


def running() -> bool:
    """Whether systemd is this machine's init (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")


class Systemd:
    """One connection to the system bus, opened on first use."""

    def __init__(self) -> None:
        self._conn = None

    def _call(self, path: str, interface: str, method: str, signature: str = "",
              body: tuple = ()):
        try:
            from jeepney import DBusAddress, DBusErrorResponse, new_method_call
            from jeepney.io.blocking import open_dbus_connection
        except ImportError:
            raise NetleakError("jeepney is missing, so netleak cannot talk to systemd: "
                               "apt-get install python3-jeepney (or pip install "
                               "jeepney)") from None
        if self._conn is None:
            try:
                self._conn = open_dbus_connection(bus="SYSTEM")
            except (OSError, KeyError) as e:
                raise NetleakError(f"cannot reach systemd on the system bus ({e}): is "
                                   f"dbus running?") from None
        addr = DBusAddress(path, bus_name=SYSTEMD, interface=interface)
        try:
            return self._conn.send_and_get_reply(
                new_method_call(addr, method, signature, body), timeout=10).body
        except DBusErrorResponse as e:
            raise NetleakError(f"systemd refused {method}: {e.name}: "
                               f"{' '.join(map(str, e.data))}") from None
        except (OSError, EOFError) as e:    # a timeout, the bus restarted: reopen next time
            self.close()
            raise NetleakError(f"no answer from systemd to {method} "
                               f"({e.__class__.__name__}: {e}): is dbus running?") from None

    def start_scope(self, name: str, pid: int, description: str,
                    timeout: float = 5.0, delegate: bool = False) -> str:
        """Move PID into a new transient scope NAME in netleak.slice; returns
        the scope's cgroup (relative, no leading '/') once PID is in it.
        DELEGATE: the cgroups below the scope's are PID's to make."""
        props = [("Description", ("s", description)), ("Slice", ("s", SLICE)),
                 ("PIDs", ("au", [pid])), ("CollectMode", ("s", "inactive-or-failed"))]
        if delegate:
            props.append(("Delegate", ("b", True)))
        self._call("/org/freedesktop/systemd1", MANAGER, "StartTransientUnit",
                   "ssa(sv)a(sa(sv))", (name, "fail", props, []))
        deadline = time.monotonic() + timeout
        while True:
            cgroup = self.control_group(name)
            if cgroup and _cgroup_of(pid) == cgroup:
                return cgroup.strip("/")
            if time.monotonic() > deadline:
                raise NetleakError(f"systemd did not start {name} in time: see "
                                   f"'systemctl status {name}'")
            time.sleep(0.005)

    def loaded(self, unit: str) -> bool:
        """Whether systemd knows UNIT (a stopped service it has a file for is
        loaded; a collected scope, a removed unit are not)."""
        try:
            (path,) = self._call("/org/freedesktop/systemd1", MANAGER, "GetUnit", "s",
                                 (unit,))
        except NetleakError as e:
            if "NoSuchUnit" not in str(e):
                raise
            try:
                (path,) = self._call("/org/freedesktop/systemd1", MANAGER, "LoadUnit",
                                     "s", (unit,))
            except NetleakError:
                return False
        # in memory is not enough: a unit still referenced may be not-found
        (state,) = self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                              ("org.freedesktop.systemd1.Unit", "LoadState"))
        return state[1] == "loaded"

    def control_group(self, unit: str) -> str:
        """The cgroup of a loaded UNIT ('' while it has none)."""
        (path,) = self._call("/org/freedesktop/systemd1", MANAGER, "GetUnit", "s", (unit,))
        kind = "Scope" if unit.endswith(".scope") else "Service"
        (value,) = self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                              (f"org.freedesktop.systemd1.{kind}", "ControlGroup"))
        return value[1]

    def write_dropin(self, unit: str, text: str) -> None:
        """A runtime drop-in of UNIT (gone with a reboot, or remove_dropin),
        then a reload, so its next start reads it."""
        folder = os.path.join(RUNTIME_UNITS, f"{unit}.d")
        os.makedirs(folder, mode=0o755, exist_ok=True)
        path = os.path.join(folder, DROPIN)
        part = path + ".part"
        with open(part, "w") as f:
            f.write(text)
        os.rename(part, path)
        self.reload()

    def remove_dropin(self, unit: str) -> None:
        folder = os.path.join(RUNTIME_UNITS, f"{unit}.d")
        try:
            os.unlink(os.path.join(folder, DROPIN))
        except FileNotFoundError:
            return
        try:
            os.rmdir(folder)
        except OSError:
            pass            # other drop-ins of the unit's stay
        self.reload()

    def reload(self) -> None:
        """systemctl daemon-reload (returns once it is done)."""
        self._call("/org/freedesktop/systemd1", MANAGER, "Reload")

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def remove_dropin_of_netleak(unit: str, head: str) -> bool:
    """UNIT's runtime drop-in, if its text starts with HEAD (netleak's, left
    by a daemon that is gone: it would pin the next start), removed and
    systemd reloaded; whether there was one."""
    path = os.path.join(RUNTIME_UNITS, f"{unit}.d", DROPIN)
    try:
        with open(path) as f:
            if not f.read().startswith(head):
                return False
    except OSError:
        return False
    sd = Systemd()
    try:
        sd.remove_dropin(unit)
    finally:
        sd.close()
    return True


def _cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None
