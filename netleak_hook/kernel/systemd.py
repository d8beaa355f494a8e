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


def running() -> bool:
    """Whether systemd is this machine's init (sd_booted's test)."""
    return os.path.isdir("/run/systemd/system")


class Systemd:
    """One connection to the system bus, opened on first use."""

    def __init__(self) -> None:
        self._conn = None

    def _call(self, path: str, interface: str, method: str, signature: str = "",
              body: tuple = ()):
        from jeepney import DBusAddress, DBusErrorResponse, new_method_call
        if self._conn is None:
            from jeepney.io.blocking import open_dbus_connection
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

    def start_scope(self, name: str, pid: int, description: str,
                    timeout: float = 5.0) -> str:
        """Move PID into a new transient scope NAME in netleak.slice; returns
        the scope's cgroup (relative, no leading '/') once PID is in it."""
        props = [("Description", ("s", description)), ("Slice", ("s", SLICE)),
                 ("PIDs", ("au", [pid])), ("CollectMode", ("s", "inactive-or-failed"))]
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

    def control_group(self, unit: str) -> str:
        """The cgroup of a loaded UNIT ('' while it has none)."""
        (path,) = self._call("/org/freedesktop/systemd1", MANAGER, "GetUnit", "s", (unit,))
        kind = "Scope" if unit.endswith(".scope") else "Service"
        (value,) = self._call(path, "org.freedesktop.DBus.Properties", "Get", "ss",
                              (f"org.freedesktop.systemd1.{kind}", "ControlGroup"))
        return value[1]

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _cgroup_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        return None
    return None
