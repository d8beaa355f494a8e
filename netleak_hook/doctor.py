"""`netleak doctor`: is this machine ready for netleak?

Kernel at the edges, decisions pure: the ``read_*``/``find_*`` functions
read facts (files under /proc, /sys, /lib/modules, PATH, euid, whether the
``bcc`` module can be found) into a plain :class:`Facts`; the ``check_*``
functions turn Facts into :class:`Check` results without touching the
system. :func:`gather` does both. Nothing here writes anything, and ``bcc``
is only located (``importlib.util.find_spec``), never imported.
"""
from __future__ import annotations

import dataclasses
import gzip
import importlib.util
import os
import re
import shutil
import textwrap
import zlib
from dataclasses import dataclass
from typing import Callable, Mapping, Optional

from .core.mounts import cgroup2_mount, find_mounts

MIN_KERNEL = (5, 14)
KERNEL_OPTIONS = ("CONFIG_BPF_SYSCALL", "CONFIG_CGROUP_BPF", "CONFIG_CGROUPS")
BPFFS = "/sys/fs/bpf"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
PURE_V2 = "/sys/fs/cgroup"
CONTAINER_TOOLS = ("podman", "runc", "crun")
DEMO_TOOLS = ("ip", "nsenter")
ALL_TOOLS = CONTAINER_TOOLS + DEMO_TOOLS
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")

FIX_HEADERS = ("apt-get install linux-headers-$(uname -r), or where none exists "
               "for this kernel: make deps (links linux-headers-amd64)")
FIX_BCC = ("apt-get install python3-bpfcc (Debian/Ubuntu) or dnf install "
           "python3-bcc (Fedora); in a venv use --system-site-packages")


@dataclass(frozen=True)
class Check:
    """The outcome of one check: what was found and, on failure (or a
    warning: netleak works, with a limit worth knowing), what to do."""

    name: str
    ok: bool
    detail: str
    fix: str = ""
    warn: bool = False

    def as_dict(self) -> dict:
        """A JSON-ready dict with the keys name, ok, detail and fix."""
        return dataclasses.asdict(self)


@dataclass
class Facts:
    """Everything the checks look at, read once from the running system."""

    release: str                          # os.uname().release
    kernel_config: Optional[dict]         # CONFIG_X -> value; None: unreadable
    kernel_config_source: str             # where kernel_config came from
    mountinfo: str                        # text of /proc/self/mountinfo
    btf: bool                             # /sys/kernel/btf/vmlinux exists
    bcc_origin: Optional[str]             # where find_spec("bcc") found it
    bcc_genuine: bool                     # that package is BCC (has libbcc.py)
    headers_path: str                     # the header tree BCC would use
    headers_from_env: bool                # headers_path came from BCC_KERNEL_SOURCE
    headers_realpath: str                 # headers_path with links resolved
    headers_link: Optional[str]           # target if headers_path is a symlink
    headers_dir: bool                     # headers_path is a directory
    headers_complete: bool                # ... holding include/ or Makefile
    headers_release: Optional[str]        # UTS_RELEASE the headers are for
    euid: int
    rp_filter: dict                       # "all"/"default" -> "0"/"1"/"2" or None
    tools: dict                           # program name -> path or None
    security: "Security" = dataclasses.field(default_factory=lambda: Security())


@dataclass(frozen=True)
class Security:
    """What a hostile workload or neighbour could use, read off the system."""

    nonlocal_bind: tuple = ("0", "0")     # net.ipv4/ipv6.ip_nonlocal_bind (None: unreadable)
    landlock_abi: int = 7                 # 0: none
    yama_ptrace_scope: int = -1           # -1: no Yama
    vsock: bool = False                   # an AF_VSOCK socket can be made (a VM's host)
    unprivileged_port_start: Optional[int] = 1024
    relay_port: int = 1021                # NETLEAK_RELAY_PORT


# ---------------------------------------------------------------- reading

def _read_text(path: str) -> Optional[str]:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def parse_kernel_config(text: str) -> dict:
    """CONFIG_X=value lines of a kernel .config as a dict (pure)."""
    config = {}
    for line in text.splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and key.startswith("CONFIG_"):
            config[key] = value.strip('"')
    return config


def read_kernel_config(release: str, proc_path: str = "/proc/config.gz",
                       boot_dir: str = "/boot") -> tuple[Optional[dict], str]:
    """The running kernel's config and where it was read, or (None, "")."""
    try:
        with gzip.open(proc_path, "rt", encoding="utf-8",
                       errors="replace") as f:
            return parse_kernel_config(f.read()), proc_path
    except (OSError, EOFError, zlib.error):
        pass
    boot_path = os.path.join(boot_dir, f"config-{release}")
    text = _read_text(boot_path)
    if text is None:
        return None, ""
    return parse_kernel_config(text), boot_path


def find_bcc() -> tuple[Optional[str], bool]:
    """Where the ``bcc`` module would be imported from, and whether it is
    BCC itself (the PyPI package named bcc is unrelated). Never imports it."""
    try:
        spec = importlib.util.find_spec("bcc")
    except (ImportError, ValueError):
        return None, False
    if spec is None:
        return None, False
    dirs = list(spec.submodule_search_locations or [])
    origin = dirs[0] if dirs else (spec.origin or "?")
    genuine = any(os.path.exists(os.path.join(d, "libbcc.py")) for d in dirs)
    return origin, genuine


def headers_location(release: str, environ: Mapping[str, str],
                     modules_dir: str = "/lib/modules") -> tuple[str, bool]:
    """The header tree BCC uses: $BCC_KERNEL_SOURCE if set, else
    /lib/modules/RELEASE/build; and whether it came from the environment."""
    from_env = environ.get("BCC_KERNEL_SOURCE", "")
    if from_env:
        return from_env, True
    return os.path.join(modules_dir, release, "build"), False


def parse_utsrelease(text: str) -> Optional[str]:
    """UTS_RELEASE of include/generated/utsrelease.h: the `uname -r` of the
    kernel the headers were built for (include/config/kernel.release is
    not: Debian puts the upstream version there)."""
    m = re.search(r'#define\s+UTS_RELEASE\s+"([^"]+)"', text)
    return m.group(1) if m else None


def read_headers(path: str) -> tuple[str, Optional[str], bool, bool,
                                     Optional[str]]:
    """(realpath, link target or None, is a directory, has include/ or
    Makefile, UTS_RELEASE) of the header tree at PATH."""
    real = os.path.realpath(path)
    link = os.readlink(path) if os.path.islink(path) else None
    is_dir = os.path.isdir(path)
    complete = is_dir and (os.path.isdir(os.path.join(path, "include"))
                           or os.path.isfile(os.path.join(path, "Makefile")))
    text = _read_text(os.path.join(path, "include", "generated",
                                   "utsrelease.h"))
    return real, link, is_dir, complete, parse_utsrelease(text or "")


def read_rp_filter(conf_dir: str = "/proc/sys/net/ipv4/conf") -> dict:
    """rp_filter of "all" and "default" ("0", "1", "2"), None if unreadable."""
    values = {}
    for scope in ("all", "default"):
        text = _read_text(os.path.join(conf_dir, scope, "rp_filter"))
        values[scope] = text.strip() if text is not None else None
    return values


def find_tools(environ: Mapping[str, str],
               names: tuple[str, ...] = ALL_TOOLS) -> dict:
    """Paths of NAMES on environ's PATH, plus the sbin folders (a user's
    PATH often lacks /usr/sbin, where ip lives)."""
    dirs = [d for d in environ.get("PATH", os.defpath).split(os.pathsep) if d]
    dirs += [d for d in SBIN_DIRS if d not in dirs]
    path = os.pathsep.join(dirs)
    return {name: shutil.which(name, path=path) for name in names}


def read_facts(environ: Mapping[str, str]) -> Facts:
    """Read every fact the checks need from the running system."""
    release = os.uname().release
    config, config_source = read_kernel_config(release)
    headers_path, from_env = headers_location(release, environ)
    real, link, is_dir, complete, headers_release = read_headers(headers_path)
    bcc_origin, bcc_genuine = find_bcc()
    return Facts(
        release=release, kernel_config=config,
        kernel_config_source=config_source,
        mountinfo=_read_text("/proc/self/mountinfo") or "",
        btf=os.path.exists(BTF_VMLINUX),
        bcc_origin=bcc_origin, bcc_genuine=bcc_genuine,
        headers_path=headers_path, headers_from_env=from_env,
        headers_realpath=real, headers_link=link, headers_dir=is_dir,
        headers_complete=complete, headers_release=headers_release,
        euid=os.geteuid(), rp_filter=read_rp_filter(),
        tools=find_tools(environ), security=read_security(environ))


def read_security(environ: Mapping[str, str]) -> Security:
    """The settings the security checks look at."""
    import socket

    def sysctl(name: str) -> Optional[str]:
        text = _read_text("/proc/sys/" + name.replace(".", "/"))
        return text.strip() if text is not None else None
    from .kernel.confine import landlock_abi, yama_ptrace_scope
    try:
        socket.socket(40, socket.SOCK_STREAM).close()      # AF_VSOCK: made, never used
        vsock = True
    except OSError:
        vsock = False
    start = sysctl("net.ipv4.ip_unprivileged_port_start")
    try:
        relay = int(environ.get("NETLEAK_RELAY_PORT") or "1021", 0)
    except ValueError:
        relay = 1021
    return Security(nonlocal_bind=(sysctl("net.ipv4.ip_nonlocal_bind"),
                                   sysctl("net.ipv6.ip_nonlocal_bind")),
                    landlock_abi=landlock_abi(), yama_ptrace_scope=yama_ptrace_scope(),
                    vsock=vsock,
                    unprivileged_port_start=int(start) if start and start.isdigit() else None,
                    relay_port=relay)


# ---------------------------------------------------------------- deciding

def parse_release(release: str) -> Optional[tuple[int, int, int]]:
    """(major, minor, patch) of a release such as "6.18.44-fc-v445"."""
    m = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", release)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def check_kernel_version(facts: Facts) -> Check:
    """Linux >= 5.14: bpf_get_current_ancestor_cgroup_id and the netns cookie
    in cgroup/sock (5.7), SO_NETNS_COOKIE for the daemon (5.14)."""
    name, need = "kernel version", "%d.%d" % MIN_KERNEL
    version = parse_release(facts.release)
    if version is None:
        return Check(name, True,
                     f"{facts.release!r} not recognised; assumed >= {need}")
    if version[:2] < MIN_KERNEL:
        return Check(name, False, f"{facts.release} is older than {need}",
                     f"boot Linux >= {need} (netleak needs the network "
                     f"namespace cookie: SO_NETNS_COOKIE)")
    return Check(name, True, f"{facts.release} (>= {need})")


def check_kernel_config(facts: Facts) -> Check:
    """CONFIG_BPF_SYSCALL, CONFIG_CGROUP_BPF and CONFIG_CGROUPS are =y."""
    name = "kernel config"
    if facts.kernel_config is None:
        return Check(name, True, "kernel config not readable; assumed")
    missing = [k for k in KERNEL_OPTIONS if facts.kernel_config.get(k) != "y"]
    if missing:
        return Check(name, False,
                     f"{', '.join(missing)} not set "
                     f"({facts.kernel_config_source})",
                     "use a kernel built with "
                     + ", ".join(f"{k}=y" for k in KERNEL_OPTIONS))
    short = ", ".join(k[len("CONFIG_"):] for k in KERNEL_OPTIONS)
    return Check(name, True, f"{short}=y ({facts.kernel_config_source})")


def cgroup_layout(mountinfo: str) -> Optional[tuple[str, str]]:
    """(cgroup2 mount point, "pure v2" | "hybrid" | "cgroup2"), or None."""
    point = cgroup2_mount(mountinfo)
    if point is None:
        return None
    if point == PURE_V2:
        return point, "pure v2"
    if find_mounts(mountinfo, "cgroup"):
        return point, "hybrid"
    return point, "cgroup2"


def check_cgroup2(facts: Facts) -> Check:
    """A cgroup2 hierarchy is mounted (pure v2 or hybrid)."""
    layout = cgroup_layout(facts.mountinfo)
    if layout is None:
        return Check("cgroup v2", False,
                     "no cgroup2 mount in /proc/self/mountinfo",
                     "mount -t cgroup2 none /sys/fs/cgroup/unified, or boot "
                     "with systemd.unified_cgroup_hierarchy=1")
    return Check("cgroup v2", True, f"{layout[0]} ({layout[1]})")


def check_bpffs(facts: Facts) -> Check:
    """bpffs at /sys/fs/bpf; never a failure: netleak mounts it itself."""
    points = find_mounts(facts.mountinfo, "bpf")
    if BPFFS in points:
        return Check("bpffs", True, f"mounted at {BPFFS}")
    if points:
        return Check("bpffs", True,
                     f"mounted at {points[0]}, not {BPFFS}; "
                     f"netleak mounts {BPFFS} on first use")
    return Check("bpffs", True, "not mounted; netleak mounts it on first use")


def check_btf(facts: Facts) -> Check:
    """BTF of vmlinux: informational, netleak's BCC programs do not need it."""
    if facts.btf:
        return Check("BTF", True, f"present at {BTF_VMLINUX}")
    return Check("BTF", True, "absent (not required: netleak compiles with "
                              "BCC and kernel headers)")


def check_bcc(facts: Facts) -> Check:
    """BCC's Python module (from the distribution) can be imported."""
    if facts.bcc_origin is None:
        return Check("BCC", False, "python module bcc not found", FIX_BCC)
    if not facts.bcc_genuine:
        return Check("BCC", False,
                     f"{facts.bcc_origin} is not BCC (the PyPI package bcc "
                     f"is unrelated)",
                     "pip uninstall bcc; then " + FIX_BCC)
    return Check("BCC", True, facts.bcc_origin)


def headers_version(facts: Facts) -> Optional[str]:
    """The kernel version of the header tree if it is another kernel's,
    None if it is the running kernel's own, "" if it cannot be told."""
    release = facts.release
    found = facts.headers_release
    if found is None:
        real = facts.headers_realpath
        if release in real.split(os.sep):
            return None
        base = os.path.basename(real.rstrip(os.sep))
        if not base.startswith("linux-headers-"):
            return ""
        found = base[len("linux-headers-"):]
    return None if found == release else found


def check_headers(facts: Facts) -> Check:
    """Kernel headers for BCC: the running kernel's, or generic ones."""
    name = "kernel headers"
    where = facts.headers_path
    if facts.headers_from_env:
        where = f"BCC_KERNEL_SOURCE={where}"
    fix = ("point BCC_KERNEL_SOURCE at a kernel header tree, or unset it"
           if facts.headers_from_env else FIX_HEADERS)
    if not facts.headers_dir:
        detail = f"missing at {where}"
        if facts.headers_link is not None:
            detail += f" (dangling link to {facts.headers_link})"
        return Check(name, False, detail, fix)
    if not facts.headers_complete:
        return Check(name, False,
                     f"incomplete at {where} (no include/ or Makefile)", fix)
    real = facts.headers_realpath
    other = headers_version(facts)
    if other is None:
        return Check(name, True, f"{real} (this kernel's own)")
    if other == "":
        return Check(name, True, f"{real} (version not recognised)")
    return Check(name, True, f"{real}: generic headers of {other} (only "
                             f"stable UAPI is used, which works)")


def check_privileges(facts: Facts) -> Check:
    """Running as root (BPF, cgroups and routing need it)."""
    if facts.euid == 0:
        return Check("privileges", True, "root (euid 0)")
    return Check("privileges", False,
                 f"euid {facts.euid}; netleak needs root",
                 "run as root, e.g. with sudo")


RP_NAMES = {"0": "off", "1": "strict", "2": "loose"}


def check_rp_filter(facts: Facts) -> Check:
    """Explains rp_filter; every value works (netleak never changes it)."""
    values = facts.rp_filter
    shown = ", ".join(f"{k}={v}" for k, v in values.items() if v is not None)
    known = [int(v) for v in values.values() if v is not None and v.isdigit()]
    if not known:
        return Check("rp_filter", True, "not readable (no IPv4?)")
    mode = RP_NAMES.get(str(max(known)), "unknown")  # effective: max of both
    if mode == "strict":
        return Check("rp_filter", True,
                     f"{shown}: strict; netleak adds `from <interface "
                     f"address>` rules so replies pass the reverse-path "
                     f"check without loosening it")
    if mode == "loose":
        return Check("rp_filter", True,
                     f"{shown}: loose; replies via the interface pass")
    if mode == "off":
        return Check("rp_filter", True, f"{shown}: off; no reverse-path check")
    return Check("rp_filter", True, f"{shown}: unknown value; left as it is")


def check_containers(facts: Facts) -> Check:
    """podman and runc, for containers (informational, never a failure)."""
    tools = facts.tools
    podman, runc, crun = (tools.get(t) for t in CONTAINER_TOOLS)
    if not podman:
        return Check("containers", True,
                     "podman not installed (only needed for containers)")
    detail = f"podman {podman}"
    if runc:
        return Check("containers", True, f"{detail}, runc {runc}")
    layout = cgroup_layout(facts.mountinfo)
    if crun and layout is not None and layout[1] == "hybrid":
        return Check("containers", True,
                     f"{detail}, crun only: crun refuses hybrid cgroups; "
                     f"install runc for containers")
    if crun:
        return Check("containers", True, f"{detail}, crun {crun}")
    return Check("containers", True,
                 f"{detail}; runc not installed (only needed for containers)")


def check_tools(facts: Facts) -> Check:
    """iproute2's ip and util-linux's nsenter (the demo uses them)."""
    missing = [t for t in DEMO_TOOLS if not facts.tools.get(t)]
    if missing:
        return Check("tools", False, f"missing: {', '.join(missing)}",
                     "apt-get install iproute2 util-linux")
    return Check("tools", True,
                 ", ".join(f"{t} {facts.tools[t]}" for t in DEMO_TOOLS))


def check_forged_sources(facts: Facts) -> Check:
    """ip_nonlocal_bind: what a workload may give its sockets as a source."""
    v4, v6 = facts.security.nonlocal_bind
    on = [f for f, v in (("ipv4", v4), ("ipv6", v6)) if v not in (None, "0")]
    if not on:
        return Check("forged sources", True, "ip_nonlocal_bind off (ipv4, ipv6): sockets "
                     "carry only this machine's addresses")
    return Check("forged sources", True,
                 f"net.{'/'.join(on)}.ip_nonlocal_bind=1: a workload may bind addresses "
                 f"that are not this machine's; netleak drops what carries one on "
                 f"loopback (nothing answers it by the default route), but through its "
                 f"interface it may send with one", warn=True,
                 fix="sysctl net.ipv4.ip_nonlocal_bind=0 net.ipv6.ip_nonlocal_bind=0 "
                     "unless a service here needs it")


def check_confinement(facts: Facts) -> Check:
    """Whether a workload can reach its user's other processes (ptrace,
    /proc/PID/mem, pidfd_getfd) and have them send for it."""
    from .kernel.confine import LANDLOCK_SCOPED_ABI
    sec = facts.security
    name = "other processes"
    attached = ("; cgroups netleak attaches (attach, the hook) are not confined: "
                "their processes were running before")
    if sec.landlock_abi >= LANDLOCK_SCOPED_ABI:
        return Check(name, True, f"Landlock ABI {sec.landlock_abi}: netleak-exec's "
                     f"workloads cannot trace, read, write or signal processes outside "
                     f"their session" + (attached if sec.yama_ptrace_scope < 1 else ""),
                     warn=sec.yama_ptrace_scope < 1,
                     fix="sysctl kernel.yama.ptrace_scope=1 covers attached cgroups too")
    if sec.yama_ptrace_scope >= 1:
        return Check(name, True, f"Yama ptrace_scope {sec.yama_ptrace_scope}: a workload "
                     f"cannot trace processes it did not start")
    why = (f"Landlock ABI {sec.landlock_abi} (scopes need 6, Linux 6.12)"
           if sec.landlock_abi else "no Landlock")
    return Check(name, True, f"{why} and no Yama ptrace_scope: a workload may trace its "
                 f"user's other processes and have them send for it", warn=True,
                 fix="sysctl kernel.yama.ptrace_scope=1, or run workloads as users of "
                     "their own (-u)")


def check_socket_families(facts: Facts) -> Check:
    """AF_VSOCK and the other families no cgroup program sees."""
    if not facts.security.vsock:
        return Check("socket families", True, "netleak-exec refuses all but unix, IPv4, "
                     "IPv6, netlink and alg; no AF_VSOCK here")
    return Check("socket families", True,
                 "AF_VSOCK exists (a VM: it reaches the host): netleak-exec's workloads "
                 "may not make such sockets; attached cgroups and containers may",
                 warn=True, fix="containers: a seccomp profile that refuses socket(AF_VSOCK) "
                                "(family 40)")


def check_relay_port(facts: Facts) -> Check:
    """Proxy mode's relay port must stay privileged while the daemon is down."""
    sec = facts.security
    start, port = sec.unprivileged_port_start, sec.relay_port
    if start is None or port + 1 < start:
        return Check("relay port", True, f"{port} and {port + 1} are privileged "
                     f"(unprivileged ports start at {start})")
    return Check("relay port", True,
                 f"ip_unprivileged_port_start={start}: any local program may take "
                 f"ports {port} and {port + 1} while netleak's daemon is down, and answer "
                 f"proxy-mode sessions' connections", warn=True,
                 fix=f"sysctl net.ipv4.ip_unprivileged_port_start={max(1024, port + 2)}, or "
                     f"NETLEAK_RELAY_PORT below {start - 1}")


CHECKS: tuple[Callable[[Facts], Check], ...] = (
    check_kernel_version, check_kernel_config, check_cgroup2, check_bpffs,
    check_btf, check_bcc, check_headers, check_privileges, check_rp_filter,
    check_containers, check_tools, check_forged_sources, check_confinement,
    check_socket_families, check_relay_port)


def evaluate(facts: Facts) -> list[Check]:
    """Every check, in a fixed order, decided from FACTS alone (pure)."""
    return [check(facts) for check in CHECKS]


def gather(environ: Mapping[str, str]) -> list[Check]:
    """Read the running system's facts and evaluate every check."""
    return evaluate(read_facts(environ))


# ---------------------------------------------------------------- output

WIDTH = 79
NAME_WIDTH = 16


def _wrap(text: str, first: str, indent: int) -> str:
    return textwrap.fill(text, width=WIDTH, initial_indent=first,
                         subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False)


def render(results: list[Check]) -> str:
    """Human output: one line per check (wrapped under 80 columns), a
    ``fix:`` line under each failure, and a summary line."""
    lines = []
    detail_col = 5 + NAME_WIDTH + 1
    for r in results:
        word = "FAIL" if not r.ok else ("WARN" if r.warn else "OK")
        head = f"{word:<4} {r.name:<{NAME_WIDTH}} "
        lines.append(_wrap(r.detail, head, detail_col))
        if (not r.ok or r.warn) and r.fix:
            lines.append(_wrap(r.fix, "     fix: ", 10))
    failed = sum(not r.ok for r in results)
    warned = sum(r.ok and r.warn for r in results)
    lines.append(f"{len(results)} checks, {failed} failed" +
                 (f", {warned} warnings" if warned else ""))
    return "\n".join(lines)
