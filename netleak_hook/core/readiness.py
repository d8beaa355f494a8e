"""Whether a machine is ready for netleak, decided from its facts (pure).

:class:`Facts` holds what `netleak doctor` read off the running system;
each ``check_*`` function turns Facts into one :class:`Check` (what was
found and, on failure or a warning, what to do) without touching the
system, and :func:`evaluate` runs them all in a fixed order.
"""
from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from typing import Callable, Optional

from .mounts import cgroup2_mount, find_mounts

MIN_KERNEL = (5, 14)
KERNEL_OPTIONS = ("CONFIG_BPF_SYSCALL", "CONFIG_CGROUP_BPF", "CONFIG_CGROUPS")
BPFFS = "/sys/fs/bpf"
BTF_VMLINUX = "/sys/kernel/btf/vmlinux"
PURE_V2 = "/sys/fs/cgroup"
CONTAINER_TOOLS = ("podman", "runc", "crun")
DEMO_TOOLS = ("ip", "nsenter")
# the Landlock ABI whose domains scope signals (Linux 6.12): kernel.confine's,
# which core may not import (a unit test keeps the two equal)
LANDLOCK_SCOPED_ABI = 6

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
    libbpf: Optional[str] = "libbpf.so.1"   # the libbpf that loads; None: none does
    systemd: bool = False                 # systemd is init (/run/systemd/system)
    daemon_service: Optional[str] = None  # netleak-daemon.service's state (systemctl)
    daemon_delegated: Optional[bool] = None  # its Delegate=; None: not installed
    shadowed: Optional[dict] = None       # bound iface -> the rule ahead of netleak's
                                          # that takes its packets, or None; None:
                                          # not known (not root, no state)


@dataclass(frozen=True)
class Security:
    """What a hostile workload or neighbour could use, read off the system."""

    nonlocal_bind: tuple = ("0", "0")     # net.ipv4/ipv6.ip_nonlocal_bind (None: unreadable)
    landlock_abi: int = 7                 # 0: none
    yama_ptrace_scope: int = -1           # -1: no Yama
    vsock: bool = False                   # an AF_VSOCK socket can be made (a VM's host)
    unprivileged_port_start: Optional[int] = 1024
    relay_port: int = 1021                # NETLEAK_RELAY_PORT


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


def check_systemd(facts: Facts) -> Check:
    """How sessions live with systemd: as units when it is init."""
    if not facts.systemd:
        return Check("systemd", True, "not init here: netleak-exec makes cgroups under "
                                      "netleak/ itself")
    service = facts.daemon_service or "unknown"
    if service == "active":
        daemon = "the daemon runs as netleak-daemon.service"
    else:
        daemon = f"netleak-daemon.service is {service} (a daemon starts on demand)"
    if facts.daemon_delegated is False:
        return Check("systemd", True, f"init; {daemon}, without Delegate=yes: proxy mode's "
                                      f"relay makes its cgroup below the service's",
                     warn=True, fix="add Delegate=yes to netleak-daemon.service's [Service] "
                                    "(examples/netleak-daemon.service has it)")
    layout = cgroup_layout(facts.mountinfo)
    if layout is None or layout[1] != "pure v2":
        return Check("systemd", True, f"init, cgroup v2 beside v1 ({daemon}): sessions are "
                                      f"units in the v2 tree systemd keeps", warn=True,
                     fix="boot with systemd.unified_cgroup_hierarchy=1 so every "
                         "controller applies to netleak.slice")
    return Check("systemd", True, f"init, unified cgroup v2: sessions are units "
                                  f"(netleak-<id>.scope in netleak.slice) and netleak "
                                  f"needs no delegated cgroup of its own; {daemon}")


FIX_LIBBPF = ("apt-get install libbpf1 (Ubuntu 22.04: libbpf0); dnf install libbpf "
              "(Fedora)")


def check_libbpf(facts: Facts) -> Check:
    """netleak's bpf(2) calls go through the distribution's libbpf."""
    if facts.libbpf is None:
        return Check("libbpf", False, "neither libbpf.so.1 nor libbpf.so.0 loads", FIX_LIBBPF)
    return Check("libbpf", True, facts.libbpf)


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


def check_rules(facts: Facts) -> Check:
    """Whether each bound interface's marked packets reach its table."""
    if facts.shadowed is None:
        return Check("rules", True, "not checked (run as root to check the bound "
                                    "interfaces' routing)")
    if not facts.shadowed:
        return Check("rules", True, "no bound interface is up here to check")
    bad = {iface: why for iface, why in sorted(facts.shadowed.items()) if why}
    if not bad:
        return Check("rules", True, f"the packets of {', '.join(sorted(facts.shadowed))} "
                                    f"reach netleak's tables")
    return Check("rules", False, "; ".join(f"{iface}: shadowed by {why}"
                                           for iface, why in bad.items()),
                 fix="another tool's rule comes first and netleak cannot move ahead of "
                     "it (priority 0 or 1): give that rule a priority of 2 or more, or "
                     "remove it ('ip rule del priority N')")


CHECKS: tuple[Callable[[Facts], Check], ...] = (
    check_kernel_version, check_kernel_config, check_cgroup2, check_bpffs,
    check_btf, check_bcc, check_libbpf, check_systemd, check_headers, check_privileges, check_rp_filter,
    check_containers, check_tools, check_forged_sources, check_confinement,
    check_socket_families, check_relay_port, check_rules)


def evaluate(facts: Facts) -> list[Check]:
    """Every check, in a fixed order, decided from FACTS alone (pure)."""
    return [check(facts) for check in CHECKS]
