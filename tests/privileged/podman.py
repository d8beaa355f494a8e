"""Real podman for the tests, configured so that nothing global changes.

`containers.conf` (named by CONTAINERS_CONF) and `storage.conf` (named by
CONTAINERS_STORAGE_CONF) live in a private folder together with the image
store, podman's run state, and a hooks directory holding netleak.json made for
the test's own run directory. runc, because crun refuses hybrid cgroups;
cgroupfs, because systemd may not be PID 1; containers go under a cgroup
parent named for the test, removed in every hierarchy at the end.

No registry is reachable: a busybox rootfs made from the host's static
busybox is imported as an image; a Debian image comes from debootstrap
(cached in CACHE, since it is a download).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time

from netleak_hook import hookspec, lab
from netleak_hook.kernel import cgroupfs

BUSYBOX_IMAGE = "localhost/netleak-test-busybox:latest"
DEBIAN_IMAGE = "localhost/netleak-test-debian:bookworm"
CACHE = "/var/cache/netleak-test"
LIBPOD_PARENT = "libpod_parent"

# what the container tests pass to podman run, and what they expect back
ANN = "--annotation=io.netleak.interface=vpn0"
HOST = "--network=host"
VPN = "ok 198.51.100.2"      # the server saw vpn0's address
UP = "ok 192.0.2.2"          # ... up0's, the default route


def client(tries: int, then: str = "") -> list[str]:
    """busybox sh: ask the server TRIES times, one line each."""
    loop = (f"i=0; while [ $i -lt {tries} ]; do "
            f"r=$(nc -w 1 {lab.SERVER4} {lab.PORT} 2>/dev/null) && [ -n \"$r\" ] "
            f"&& echo \"ok $r\" || echo failed; i=$((i+1)); sleep 0.2; done")
    return [BUSYBOX_IMAGE, "sh", "-c", loop + (f"; {then}" if then else "")]


def have_podman() -> str | None:
    """None when podman, runc and the busybox rootfs source are there,
    else what is missing."""
    missing = [c for c in ("podman", "runc") if shutil.which(c) is None]
    if not os.path.exists("/bin/busybox"):
        missing.append("busybox-static")
    return ", ".join(missing) or None


class Podman:
    """podman with a private configuration, storage and hooks directory."""

    def __init__(self, base: str, cgroup_parent: str) -> None:
        self.base = base
        self.cgroup_parent = cgroup_parent
        # podman's default parent (pods, conmon), made in every hierarchy:
        # removed at the end if this run is what made it
        self.libpod_parent_before = bool(hierarchy_paths(LIBPOD_PARENT))
        self.hooks_dir = os.path.join(base, "hooks.d")
        os.makedirs(self.hooks_dir, exist_ok=True)
        storage = os.path.join(base, "storage.conf")
        conf = os.path.join(base, "containers.conf")
        with open(storage, "w") as f:
            f.write(f"""[storage]
driver = "overlay"
graphroot = "{base}/graph"
runroot = "{base}/run"
""")
        with open(conf, "w") as f:
            f.write(f"""[containers]
default_ulimits = [{_ulimits()}]
log_driver = "k8s-file"

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "none"
hooks_dir = ["{self.hooks_dir}"]
tmp_dir = "{base}/tmp"
volume_path = "{base}/volumes"
static_dir = "{base}/graph/libpod"

[network]
network_config_dir = "{base}/networks"
""")
        self.env = dict(os.environ, CONTAINERS_CONF=conf, CONTAINERS_STORAGE_CONF=storage,
                        CONTAINERS_REGISTRIES_CONF=os.path.join(base, "registries.conf"))
        with open(self.env["CONTAINERS_REGISTRIES_CONF"], "w") as f:
            f.write('unqualified-search-registries = []\n')

    def install_hook(self, hook_env: dict[str, str]) -> None:
        """netleak.json as `netleak install-hook` writes it, running this
        checkout's hook with the test's environment."""
        root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
        hookspec.write(self.hooks_dir, hookspec.spec(
            sys.executable, [sys.executable, "-m", "netleak_hook.hook"],
            dict(hook_env, PYTHONPATH=root)))

    def cmd(self, *args: str, ns: list[str] | None = None) -> list[str]:
        return (ns or []) + ["podman", *args]

    def run(self, *args: str, ns: list[str] | None = None, timeout: float = 120,
            check: bool = False, **kw) -> subprocess.CompletedProcess:
        r = subprocess.run(self.cmd(*args, ns=ns), env=self.env, capture_output=True,
                           text=True, timeout=timeout, **kw)
        if check and r.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {r.returncode}: {r.stderr}")
        return r

    def container_run(self, *args: str, ns: list[str] | None = None,
                      **kw) -> subprocess.CompletedProcess:
        """podman run under our cgroup parent."""
        return self.run("run", f"--cgroup-parent=/{self.cgroup_parent}", *args, ns=ns, **kw)

    def has_image(self, name: str) -> bool:
        return self.run("image", "exists", name).returncode == 0

    def import_rootfs(self, rootfs_tar: str, name: str) -> None:
        self.run("import", rootfs_tar, name, check=True, timeout=600)

    def reset(self) -> None:
        """Remove every container, then the whole private folder."""
        self.run("rm", "-a", "-f", "-t", "0", timeout=120)
        self.run("system", "reset", "-f", timeout=120)
        # overlay mounts of a container podman lost track of
        with open("/proc/self/mounts") as f:
            mounts = [ln.split()[1] for ln in f]
        for m in sorted(mounts, reverse=True):
            if m.startswith(self.base + "/"):
                subprocess.run(["umount", "-l", m], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)
        left = remove_cgroup_everywhere(self.cgroup_parent)
        if not self.libpod_parent_before:
            left += remove_cgroup_everywhere(LIBPOD_PARENT)
        assert not left, f"podman's cgroups not removed: {_describe(left)}"


def _ulimits() -> str:
    """Explicit, modest limits: podman's defaults (and the caller's own)
    fail in runc where root lacks CAP_SYS_RESOURCE."""
    return '"nofile=1024:1024", "nproc=1024:1024"'


def remove_cgroup_everywhere(rel: str, timeout: float = 15) -> list[str]:
    """Remove REL (and what is below) from the cgroup2 tree and from every
    v1 hierarchy, where podman's cgroupfs manager makes it too; waits for
    exiting processes (conmon) to leave. Returns what could not be removed."""
    deadline = time.monotonic() + timeout
    while True:
        left = [p for p in hierarchy_paths(rel) if not cgroupfs.remove_tree(p)]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


def _describe(paths: list[str]) -> str:
    out = []
    for p in paths:
        for dirpath, _, _ in os.walk(p):
            try:
                with open(os.path.join(dirpath, "cgroup.procs")) as f:
                    procs = f.read().split()
            except OSError:
                procs = ["?"]
            out.append(f"{dirpath} {procs}")
    return "; ".join(out)


def hierarchy_paths(rel: str) -> list[str]:
    """REL in every cgroup hierarchy (v1 and v2) where it exists."""
    found = []
    with open("/proc/self/mounts") as f:
        for ln in f:
            parts = ln.split()
            path = os.path.join(parts[1], rel.strip("/"))
            if parts[2] in ("cgroup", "cgroup2") and os.path.isdir(path):
                found.append(path)
    return found


def busybox_rootfs_tar(dest_dir: str) -> str:
    """A tarball of a minimal rootfs: the host's static busybox and its applets."""
    root = tempfile.mkdtemp(prefix="rootfs-", dir=dest_dir)
    for d in ("bin", "etc", "tmp", "proc", "sys", "dev", "run", "root"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    shutil.copy2("/bin/busybox", os.path.join(root, "bin", "busybox"))
    applets = subprocess.run(["/bin/busybox", "--list"], capture_output=True, text=True,
                             check=True).stdout.split()
    for a in applets:
        if a != "busybox":
            os.symlink("busybox", os.path.join(root, "bin", a))
    with open(os.path.join(root, "etc", "passwd"), "w") as f:
        f.write("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n")
    with open(os.path.join(root, "etc", "group"), "w") as f:
        f.write("root:x:0:\nnogroup:x:65534:\n")
    tar = os.path.join(dest_dir, "busybox-rootfs.tar")
    with tarfile.open(tar, "w") as t:
        t.add(root, arcname=".")
    shutil.rmtree(root)
    return tar


def debian_rootfs_tar(suite: str = "bookworm") -> str:
    """debootstrap --variant=minbase SUITE, as a tarball kept in CACHE."""
    tar = os.path.join(CACHE, f"debian-{suite}-minbase.tar")
    if os.path.exists(tar):
        return tar
    if shutil.which("debootstrap") is None:
        raise RuntimeError("debootstrap is missing: run make deps")
    os.makedirs(CACHE, exist_ok=True)
    root = tempfile.mkdtemp(prefix=f"debian-{suite}-", dir=CACHE)
    try:
        subprocess.run(["debootstrap", "--variant=minbase", suite, root,
                        "http://deb.debian.org/debian"], check=True,
                       capture_output=True, timeout=1200)
        subprocess.run(["tar", "-C", root, "-cf", tar + ".part", "."], check=True)
        os.rename(tar + ".part", tar)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return tar
