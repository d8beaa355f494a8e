"""`netleak doctor`: is this machine ready for netleak?

The machine's side of the checks: the ``read_*``/``find_*`` functions read
facts (files under /proc, /sys, /lib/modules, PATH, euid, whether the
``bcc`` module can be found, the kernel layer's Landlock and Yama probes)
into a plain :class:`Facts`, which :mod:`netleak_hook.core.readiness`
turns into :class:`Check` results; :func:`gather` does both and
:func:`render` shows them. Nothing here writes anything, and ``bcc`` is
only located (``importlib.util.find_spec``), never imported.
"""
from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
import textwrap
import zlib
from typing import Mapping, Optional

# CHECKS, FIX_HEADERS and parse_release are not used here: re-exported, with
# the values and evaluate, for doctor's callers
from .core.readiness import (BTF_VMLINUX, CHECKS, CONTAINER_TOOLS, DEMO_TOOLS,
                             FIX_HEADERS, Check, Facts, Security, evaluate,
                             parse_release)

ALL_TOOLS = CONTAINER_TOOLS + DEMO_TOOLS
SBIN_DIRS = ("/usr/local/sbin", "/usr/sbin", "/sbin")


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
        tools=find_tools(environ), security=read_security(environ),
        libbpf=find_libbpf(), systemd=systemd_running(),
        shadowed=read_shadows(environ), **service_facts("netleak-daemon.service"))


def read_shadows(environ: Mapping[str, str]) -> Optional[dict]:
    """Per interface bound in this namespace: the rule that shadows
    netleak's, or None; None altogether when that cannot be known."""
    if os.geteuid() != 0:
        return None
    try:
        from .core.config import Config
        from .rundir.store import Store, run_dir
        cfg = Config.from_env(environ)
        state = Store(run_dir(cfg)).load()
        if not state.bindings:
            return {}
        from .kernel import netlink      # pyroute2: only with something to look up
        from .status import shadows_of
        ipr = netlink.open_ipr()
        try:
            links = {iface: netlink.read_link(ipr, iface) for iface in state.bindings}
            found = shadows_of(ipr, cfg, state, links)
        finally:
            ipr.close()
    except Exception:           # doctor reports what it can
        return None
    return found          # the interfaces that are up: the others are not checked


def systemd_running() -> bool:
    from .kernel.systemd import running
    return running()


def service_facts(unit: str) -> dict:
    """UNIT's state as systemctl shows it ("active", "inactive", ...; None
    without systemctl) and, when it is installed, whether it is delegated."""
    import subprocess
    try:
        r = subprocess.run(["systemctl", "show", "-p", "LoadState", "-p", "ActiveState",
                            "-p", "Delegate", unit], capture_output=True, text=True,
                           timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return {"daemon_service": None}
    props = dict(line.partition("=")[::2] for line in r.stdout.splitlines())
    if r.returncode != 0 or "LoadState" not in props:
        return {"daemon_service": None}
    if props["LoadState"] != "loaded":
        return {"daemon_service": "not installed"}
    return {"daemon_service": props.get("ActiveState") or None,
            "daemon_delegated": props.get("Delegate") == "yes"}


def find_libbpf() -> Optional[str]:
    """The first libbpf that loads, as the kernel layer would look for it."""
    import ctypes
    from .kernel.bpfsys import LIBRARIES
    for name in LIBRARIES:
        try:
            ctypes.CDLL(name)
        except OSError:
            continue
        return name
    return None


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
