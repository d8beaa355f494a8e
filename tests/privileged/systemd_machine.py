"""A real systemd as PID 1, unified cgroup v2, for the tests: most users run
netleak on such a host.

podman + runc boot this machine's own `/` as an overlay rootfs (`--rootfs
/:O`: systemd, BCC and the checkout are there, and `/` never changes) in a
container with a private cgroup namespace and no network of its own; an
init wrapper replaces podman's cgroup mounts with the container's own
cgroup2 at /sys/fs/cgroup, mounts a bpffs, masks the units that would reach
outside the container (udev, modules, sysctl, binfmt, clocks, ...), then
execs systemd. Its network namespace is named (`ip netns attach`) so the
lab can give it links. Not --privileged: /proc/sys and /sys stay read-only.
Everything is removed on exit.
"""
from __future__ import annotations

import os
import subprocess
import time

from netleak_hook.kernel import cgroupfs

# units of sysinit and basic that would touch the machine outside the
# container, or wait for hardware it does not have (what multi-user.target
# would start of this machine's services is left out: it boots to TARGET)
MASKED = (
    "systemd-udevd.service", "systemd-udevd-control.socket", "systemd-udevd-kernel.socket",
    "systemd-udev-trigger.service", "systemd-udev-settle.service",
    "systemd-modules-load.service", "systemd-sysctl.service", "systemd-binfmt.service",
    "proc-sys-fs-binfmt_misc.automount", "proc-sys-fs-binfmt_misc.mount",
    "systemd-random-seed.service", "systemd-timesyncd.service", "systemd-pstore.service",
    "systemd-repart.service", "systemd-firstboot.service", "systemd-hwdb-update.service",
    "sys-kernel-debug.mount", "sys-kernel-tracing.mount", "sys-kernel-config.mount",
    "sys-fs-fuse-connections.mount", "dev-hugepages.mount", "dev-mqueue.mount",
    "systemd-remount-fs.service", "systemd-fsck-root.service", "timers.target",
)
TARGET = "netleak-test-machine.target"

INIT = """#!/bin/sh
# PID 1 of the systemd machine: the container's own cgroup2 in place of
# podman's cgroup mounts, a bpffs, units that reach outside masked, systemd.
set -e
for m in $(awk '$2 ~ "^/sys/fs/cgroup" {{print $2}}' /proc/self/mounts | sort -r); do
    umount "$m"
done
mount -t cgroup2 -o nsdelegate cgroup2 /sys/fs/cgroup
mount -t bpf bpf /sys/fs/bpf
mkdir -p /etc/systemd/system
for u in {masked}; do ln -sf /dev/null "/etc/systemd/system/$u"; done
cat > /etc/systemd/system/{target} <<EOT
[Unit]
Description=The test machine: basic.target and D-Bus, none of the host's services
Requires=basic.target dbus.socket
After=basic.target dbus.socket
AllowIsolate=yes
EOT
exec /lib/systemd/systemd systemd.unified_cgroup_hierarchy=1 systemd.unit={target}
"""

CAPS = "SYS_ADMIN,NET_ADMIN,BPF,PERFMON,SYS_RESOURCE"


class SystemdMachine:
    """podman (tests/privileged/podman.py's, private configuration) runs it
    as NAME; its network namespace is /run/netns/NAME while it runs."""

    def __init__(self, pm, name: str, checkout: str) -> None:
        self.pm = pm
        self.name = name
        self.checkout = checkout        # bound in at its own path (/tmp is a tmpfs there)
        self.init = os.path.join(pm.base, f"{name}-init")
        self.pid = 0

    def __enter__(self) -> "SystemdMachine":
        try:
            self.boot()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def boot(self, timeout: float = 60) -> None:
        with open(self.init, "w") as f:
            f.write(INIT.format(masked=" ".join(MASKED), target=TARGET))
        os.chmod(self.init, 0o755)
        self.pm.container_run(
            "-d", "--name", self.name, "--systemd=always", "--cgroupns=private",
            "--network=none", "--cgroups=no-conmon", f"--cap-add={CAPS}",
            "--tmpfs=/run:notmpcopyup", "--tmpfs=/run/lock:notmpcopyup",
            "--tmpfs=/tmp:notmpcopyup",
            # the caller's own limits: runc may not raise them (nofile
            # above the caller's hard limit fails), and lowering nproc or
            # nofile is refused for systemd's container too
            "--ulimit=host",
            f"--volume={self.checkout}:{self.checkout}:ro",
            "--rootfs", "/:O", self.init, check=True, timeout=120)
        self.pid = int(self.pm.run("inspect", "-f", "{{.State.Pid}}", self.name,
                                   check=True).stdout.strip())
        subprocess.run(["ip", "netns", "attach", self.name, str(self.pid)], check=True,
                       capture_output=True)
        deadline = time.monotonic() + timeout
        while True:
            state = self.exec("systemctl", "is-system-running").stdout.strip()
            if state in ("running", "degraded"):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"systemd did not boot ({state}): "
                                     f"{self.exec('systemctl', '--failed').stdout}")
            time.sleep(0.1)
        self.state = state

    def exec(self, *argv: str, env: dict | None = None, timeout: float = 120,
             user: str | None = None) -> subprocess.CompletedProcess:
        """ARGV inside the machine (podman exec), with ENV's variables."""
        opts = [f"--env={k}={v}" for k, v in (env or {}).items()]
        if user:
            opts.append(f"--user={user}")
        return self.pm.run("exec", *opts, self.name, *argv, timeout=timeout)

    def popen(self, *argv: str, env: dict | None = None, **kw) -> subprocess.Popen:
        opts = [f"--env={k}={v}" for k, v in (env or {}).items()]
        return subprocess.Popen(self.pm.cmd("exec", *opts, self.name, *argv), env=self.pm.env,
                                **kw)

    def failed_units(self) -> str:
        return self.exec("systemctl", "--failed", "--no-legend", "--plain").stdout.strip()

    def cgroup_root(self) -> str | None:
        """The machine's cgroup as this host sees it (its private cgroup
        namespace's root)."""
        if not self.pid:
            return None
        try:
            rel = cgroupfs.of_pid(self.pid)
        except Exception:
            return None
        return cgroupfs.abspath(cgroupfs.find_cgroup2(), rel)

    def close(self) -> None:
        self.pm.run("rm", "-f", "-t", "0", self.name, timeout=120)
        subprocess.run(["ip", "netns", "delete", self.name], capture_output=True)
        if os.path.exists(self.init):
            os.unlink(self.init)
        self.pid = 0
