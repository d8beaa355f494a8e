"""netleak doctor: pure evaluation of hand-made Facts, readers on tmp files,
rendering, and a smoke test on this machine (no root needed)."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import subprocess
import sys

import pytest

from netleak_hook import doctor as doc
from netleak_hook.doctor import Check, Facts

RELEASE = "6.18.44-fc-v445"

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw
"""
PURE_V2 = """\
31 23 0:28 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
42 23 0:39 / /sys/fs/bpf rw,relatime - bpf bpf rw
"""
V1_ONLY = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
"""
NO_BPFFS = """\
31 23 0:28 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate
"""
GENERIC = "/usr/src/linux-headers-6.1.0-56-amd64"


def facts(**changes) -> Facts:
    """A healthy hybrid machine like the CI one; CHANGES override fields."""
    base = Facts(
        release=RELEASE,
        kernel_config={"CONFIG_BPF_SYSCALL": "y", "CONFIG_CGROUP_BPF": "y",
                       "CONFIG_CGROUPS": "y"},
        kernel_config_source="/proc/config.gz",
        mountinfo=HYBRID, btf=True,
        bcc_origin="/usr/lib/python3/dist-packages/bcc", bcc_genuine=True,
        headers_path=f"/lib/modules/{RELEASE}/build", headers_from_env=False,
        headers_realpath=GENERIC, headers_link=GENERIC, headers_dir=True,
        headers_complete=True, headers_release="6.1.0-56-amd64",
        euid=0, rp_filter={"all": "1", "default": "1"},
        tools={"podman": "/usr/bin/podman", "runc": "/usr/sbin/runc",
               "crun": None, "ip": "/usr/sbin/ip",
               "nsenter": "/usr/bin/nsenter"})
    return dataclasses.replace(base, **changes)


def by_name(f: Facts) -> dict[str, Check]:
    return {c.name: c for c in doc.evaluate(f)}


# ------------------------------------------------------------ Check, evaluate

def test_check_is_frozen_and_as_dict():
    c = Check("BCC", False, "not found", "install it")
    assert c.as_dict() == {"name": "BCC", "ok": False, "detail": "not found",
                           "fix": "install it", "warn": False}
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.ok = True  # type: ignore[misc]


def test_healthy_machine_passes_all_checks_in_order():
    results = doc.evaluate(facts(security=doc.Security(yama_ptrace_scope=1)))
    assert [r.name for r in results] == [
        "kernel version", "kernel config", "cgroup v2", "bpffs", "BTF", "BCC", "libbpf", "systemd",
        "kernel headers", "privileges", "rp_filter", "containers", "tools",
        "forged sources", "other processes", "socket families", "relay port", "rules"]
    assert all(r.ok and not r.warn for r in results)


SCENARIOS = {
    "healthy": {},
    "old kernel": {"release": "5.4.0-150-generic"},
    "no config": {"kernel_config": None, "kernel_config_source": ""},
    "config off": {"kernel_config": {"CONFIG_CGROUPS": "y"}},
    "no cgroup2": {"mountinfo": V1_ONLY},
    "no bpffs": {"mountinfo": NO_BPFFS},
    "no btf": {"btf": False},
    "no bcc": {"bcc_origin": None, "bcc_genuine": False},
    "fake bcc": {"bcc_origin": "/venv/site-packages/bcc", "bcc_genuine": False},
    "no headers": {"headers_dir": False, "headers_complete": False,
                   "headers_link": None},
    "user": {"euid": 1000},
    "no rp": {"rp_filter": {"all": None, "default": None}},
    "no tools": {"tools": {}},
}


@pytest.mark.parametrize("changes", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_fix_is_one_line_exactly_when_a_check_fails(changes):
    for r in doc.evaluate(facts(**changes)):
        assert r.detail and "\n" not in r.detail
        assert "\n" not in r.fix
        assert bool(r.fix) == (not r.ok or r.warn), r


def test_evaluate_is_pure_and_repeatable():
    f = facts()
    before = dataclasses.asdict(f)
    assert doc.evaluate(f) == doc.evaluate(f)
    assert dataclasses.asdict(f) == before


# ------------------------------------------------------------ 1 kernel version

@pytest.mark.parametrize("release, expected", [
    ("6.18.44-fc-v445", (6, 18, 44)),
    ("6.1.0-56-amd64", (6, 1, 0)),
    ("5.7", (5, 7, 0)),
    ("4.19.0+", (4, 19, 0)),
    ("6.8.0-rc3", (6, 8, 0)),
    ("weird", None),
    ("", None),
])
def test_parse_release(release, expected):
    assert doc.parse_release(release) == expected


@pytest.mark.parametrize("release, ok", [
    ("6.18.44-fc-v445", True), ("5.14.0", True), ("5.15.0-91-generic", True),
    ("5.13.19", False), ("5.10.0-28-amd64", False), ("4.19.0-26-amd64", False),
    ("3.10.0-1160.el7", False),
])
def test_kernel_version(release, ok):
    c = by_name(facts(release=release))["kernel version"]
    assert c.ok is ok
    assert release in c.detail
    if not ok:
        assert "5.14" in c.fix and "older" in c.detail


def test_kernel_version_unrecognised_is_assumed():
    c = by_name(facts(release="custom"))["kernel version"]
    assert c.ok and "not recognised" in c.detail


# ------------------------------------------------------------ 2 kernel config

def test_parse_kernel_config():
    text = ("#\n# Automatically generated\nCONFIG_BPF_SYSCALL=y\n"
            "# CONFIG_CGROUP_BPF is not set\nCONFIG_LOCALVERSION=\"-fc\"\n"
            "CONFIG_HZ=250\n\n")
    assert doc.parse_kernel_config(text) == {
        "CONFIG_BPF_SYSCALL": "y", "CONFIG_LOCALVERSION": "-fc",
        "CONFIG_HZ": "250"}


def test_kernel_config_ok_names_source():
    c = by_name(facts(kernel_config_source="/boot/config-x"))["kernel config"]
    assert c.ok and "/boot/config-x" in c.detail and "CGROUP_BPF" in c.detail


def test_kernel_config_missing_options_fail():
    f = facts(kernel_config={"CONFIG_BPF_SYSCALL": "y", "CONFIG_CGROUPS": "y",
                             "CONFIG_CGROUP_BPF": "n"})
    c = by_name(f)["kernel config"]
    assert not c.ok
    assert "CONFIG_CGROUP_BPF" in c.detail
    assert "CONFIG_BPF_SYSCALL" not in c.detail
    assert "CONFIG_CGROUP_BPF=y" in c.fix


def test_kernel_config_module_is_not_enough():
    c = by_name(facts(kernel_config={
        "CONFIG_BPF_SYSCALL": "m", "CONFIG_CGROUP_BPF": "y",
        "CONFIG_CGROUPS": "y"}))["kernel config"]
    assert not c.ok and "CONFIG_BPF_SYSCALL" in c.detail


def test_kernel_config_unreadable_is_assumed():
    c = by_name(facts(kernel_config=None, kernel_config_source=""))[
        "kernel config"]
    assert c.ok and c.detail == "kernel config not readable; assumed"


def test_read_kernel_config_prefers_proc_then_boot(tmp_path):
    proc = tmp_path / "config.gz"
    boot = tmp_path / "boot"
    boot.mkdir()
    (boot / f"config-{RELEASE}").write_text("CONFIG_CGROUPS=y\n")
    config, source = doc.read_kernel_config(RELEASE, str(proc), str(boot))
    assert config == {"CONFIG_CGROUPS": "y"}
    assert source == str(boot / f"config-{RELEASE}")
    with gzip.open(proc, "wt") as f:
        f.write("CONFIG_BPF_SYSCALL=y\n")
    assert doc.read_kernel_config(RELEASE, str(proc), str(boot)) == (
        {"CONFIG_BPF_SYSCALL": "y"}, str(proc))


def test_read_kernel_config_neither_or_corrupt(tmp_path):
    proc = tmp_path / "config.gz"
    proc.write_bytes(b"not gzip at all")
    assert doc.read_kernel_config(RELEASE, str(proc), str(tmp_path)) == (
        None, "")


# ------------------------------------------------------------ 3 cgroup v2

def test_cgroup2_hybrid():
    c = by_name(facts(mountinfo=HYBRID))["cgroup v2"]
    assert c.ok and c.detail == "/sys/fs/cgroup/unified (hybrid)"


def test_cgroup2_pure():
    c = by_name(facts(mountinfo=PURE_V2))["cgroup v2"]
    assert c.ok and c.detail == "/sys/fs/cgroup (pure v2)"


def test_cgroup2_elsewhere_without_v1():
    info = "50 1 0:40 / /mnt/cg2 rw - cgroup2 cgroup2 rw\n"
    c = by_name(facts(mountinfo=info))["cgroup v2"]
    assert c.ok and c.detail == "/mnt/cg2 (cgroup2)"


@pytest.mark.parametrize("info", [V1_ONLY, ""])
def test_cgroup2_missing_fails(info):
    c = by_name(facts(mountinfo=info))["cgroup v2"]
    assert not c.ok
    assert "mount -t cgroup2 none /sys/fs/cgroup/unified" in c.fix
    assert "systemd.unified_cgroup_hierarchy=1" in c.fix


# ------------------------------------------------------------ 4 bpffs, 5 BTF

def test_bpffs_mounted():
    c = by_name(facts())["bpffs"]
    assert c.ok and c.detail == "mounted at /sys/fs/bpf"


def test_bpffs_missing_is_not_a_failure():
    c = by_name(facts(mountinfo=NO_BPFFS))["bpffs"]
    assert c.ok and c.detail == "not mounted; netleak mounts it on first use"


def test_bpffs_elsewhere_is_noted():
    info = NO_BPFFS + "60 1 0:50 / /mnt/bpf rw - bpf bpf rw\n"
    c = by_name(facts(mountinfo=info))["bpffs"]
    assert c.ok and "/mnt/bpf" in c.detail and "first use" in c.detail


@pytest.mark.parametrize("btf, word", [(True, "present"), (False, "absent")])
def test_btf_is_informational(btf, word):
    c = by_name(facts(btf=btf))["BTF"]
    assert c.ok and c.detail.startswith(word)
    if not btf:
        assert "not required" in c.detail


# ------------------------------------------------------------ 6 BCC

def test_bcc_found():
    c = by_name(facts())["BCC"]
    assert c.ok and c.detail == "/usr/lib/python3/dist-packages/bcc"


def test_bcc_missing():
    c = by_name(facts(bcc_origin=None, bcc_genuine=False))["BCC"]
    assert not c.ok
    assert "python3-bpfcc" in c.fix and "python3-bcc" in c.fix
    assert "--system-site-packages" in c.fix


def test_bcc_impostor_from_pypi():
    c = by_name(facts(bcc_origin="/v/site-packages/bcc",
                      bcc_genuine=False))["BCC"]
    assert not c.ok and "not BCC" in c.detail
    assert c.fix.startswith("pip uninstall bcc") and "python3-bpfcc" in c.fix


# ------------------------------------------------------------ 7 headers

def test_headers_generic_from_utsrelease():
    c = by_name(facts())["kernel headers"]
    assert c.ok
    assert c.detail.startswith(GENERIC)
    assert "generic headers of 6.1.0-56-amd64" in c.detail
    assert "only stable UAPI is used, which works" in c.detail


def test_headers_generic_from_basename_when_no_utsrelease():
    c = by_name(facts(headers_release=None))["kernel headers"]
    assert c.ok and "generic headers of 6.1.0-56-amd64" in c.detail


def test_headers_own_by_utsrelease():
    own = f"/usr/src/linux-headers-{RELEASE}"
    c = by_name(facts(headers_realpath=own, headers_link=own,
                      headers_release=RELEASE))["kernel headers"]
    assert c.ok and c.detail == f"{own} (this kernel's own)"


@pytest.mark.parametrize("real", [
    f"/usr/src/linux-headers-{RELEASE}",       # Debian/Ubuntu
    f"/usr/src/kernels/{RELEASE}",             # Fedora
    f"/usr/lib/modules/{RELEASE}/build",       # a real folder, merged /usr
])
def test_headers_own_by_path(real):
    c = by_name(facts(headers_realpath=real, headers_release=None))[
        "kernel headers"]
    assert c.ok and "this kernel's own" in c.detail


def test_headers_version_unknown():
    c = by_name(facts(headers_realpath="/opt/linux", headers_release=None))[
        "kernel headers"]
    assert c.ok and c.detail == "/opt/linux (version not recognised)"


def test_headers_missing_fails_with_install_fix():
    path = f"/lib/modules/{RELEASE}/build"
    c = by_name(facts(headers_dir=False, headers_complete=False,
                      headers_link=None, headers_realpath=path))[
        "kernel headers"]
    assert not c.ok
    assert c.detail == f"missing at {path}"
    assert c.fix == doc.FIX_HEADERS
    assert "linux-headers-$(uname -r)" in c.fix and "make deps" in c.fix


def test_headers_dangling_link_is_named():
    c = by_name(facts(headers_dir=False, headers_complete=False,
                      headers_link="/usr/src/gone"))["kernel headers"]
    assert not c.ok and "dangling link to /usr/src/gone" in c.detail


def test_headers_incomplete_fails():
    c = by_name(facts(headers_complete=False))["kernel headers"]
    assert not c.ok and "incomplete" in c.detail and c.fix


def test_headers_from_env_are_named_and_fixed_there():
    c = by_name(facts(headers_path="/src/linux", headers_from_env=True,
                      headers_dir=False, headers_complete=False,
                      headers_link=None))["kernel headers"]
    assert not c.ok
    assert "BCC_KERNEL_SOURCE=/src/linux" in c.detail
    assert "BCC_KERNEL_SOURCE" in c.fix


def test_headers_location():
    assert doc.headers_location("6.1.0", {}) == (
        "/lib/modules/6.1.0/build", False)
    assert doc.headers_location("6.1.0", {"BCC_KERNEL_SOURCE": ""}) == (
        "/lib/modules/6.1.0/build", False)
    assert doc.headers_location("6.1.0", {"BCC_KERNEL_SOURCE": "/s"}) == (
        "/s", True)
    assert doc.headers_location("6.1.0", {}, "/m")[0] == "/m/6.1.0/build"


def test_parse_utsrelease():
    text = '#define UTS_RELEASE "6.1.0-56-amd64"\n'
    assert doc.parse_utsrelease(text) == "6.1.0-56-amd64"
    assert doc.parse_utsrelease("") is None


def test_read_headers_follows_links(tmp_path):
    tree = tmp_path / "linux-headers-6.1.0-56-amd64"
    (tree / "include" / "generated").mkdir(parents=True)
    (tree / "include" / "generated" / "utsrelease.h").write_text(
        '#define UTS_RELEASE "6.1.0-56-amd64"\n')
    build = tmp_path / "build"
    build.symlink_to(tree)
    assert doc.read_headers(str(build)) == (
        os.path.realpath(tree), str(tree), True, True, "6.1.0-56-amd64")


def test_read_headers_missing_dangling_and_empty(tmp_path):
    missing = tmp_path / "nothing"
    assert doc.read_headers(str(missing))[1:] == (None, False, False, None)
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "gone")
    assert doc.read_headers(str(dangling))[1:] == (
        str(tmp_path / "gone"), False, False, None)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert doc.read_headers(str(empty))[1:] == (None, True, False, None)
    (empty / "Makefile").write_text("")
    assert doc.read_headers(str(empty))[3] is True


# ------------------------------------------------------------ 8 privileges

def test_privileges():
    assert by_name(facts(euid=0))["privileges"].ok
    c = by_name(facts(euid=1000))["privileges"]
    assert not c.ok and "1000" in c.detail and "sudo" in c.fix


# ------------------------------------------------------------ 9 rp_filter

@pytest.mark.parametrize("values, word", [
    ({"all": "1", "default": "1"}, "strict"),
    ({"all": "0", "default": "1"}, "strict"),    # effective: the max
    ({"all": "2", "default": "1"}, "loose"),
    ({"all": "0", "default": "2"}, "loose"),
    ({"all": "0", "default": "0"}, "off"),
    ({"all": "7", "default": "0"}, "unknown"),
    ({"all": None, "default": "1"}, "strict"),
])
def test_rp_filter_is_explained_never_failed(values, word):
    c = by_name(facts(rp_filter=values))["rp_filter"]
    assert c.ok and word in c.detail and c.fix == ""
    if word == "strict":
        assert "`from <interface address>` rules" in c.detail
        assert "without loosening it" in c.detail


def test_rp_filter_unreadable():
    c = by_name(facts(rp_filter={"all": None, "default": None}))["rp_filter"]
    assert c.ok and "not readable" in c.detail


def test_read_rp_filter(tmp_path):
    (tmp_path / "all").mkdir()
    (tmp_path / "all" / "rp_filter").write_text("2\n")
    assert doc.read_rp_filter(str(tmp_path)) == {"all": "2", "default": None}


# ------------------------------------------------------------ 10 containers

def tools(**present) -> dict:
    names = ("podman", "runc", "crun", "ip", "nsenter")
    return {n: present.get(n) for n in names} | {
        "ip": "/usr/sbin/ip", "nsenter": "/usr/bin/nsenter"}


def test_containers_podman_and_runc():
    c = by_name(facts(tools=tools(podman="/p", runc="/r")))["containers"]
    assert c.ok and c.detail == "podman /p, runc /r"


def test_containers_absent_is_informational():
    c = by_name(facts(tools=tools()))["containers"]
    assert c.ok
    assert c.detail == "podman not installed (only needed for containers)"


def test_containers_crun_only_on_hybrid_is_explained():
    c = by_name(facts(mountinfo=HYBRID,
                      tools=tools(podman="/p", crun="/c")))["containers"]
    assert c.ok and "crun refuses hybrid cgroups" in c.detail
    assert "runc" in c.detail and c.fix == ""


def test_containers_crun_on_pure_v2_is_fine():
    c = by_name(facts(mountinfo=PURE_V2,
                      tools=tools(podman="/p", crun="/c")))["containers"]
    assert c.ok and c.detail == "podman /p, crun /c"


def test_containers_no_runtime():
    c = by_name(facts(tools=tools(podman="/p")))["containers"]
    assert c.ok and "runc not installed" in c.detail


# ------------------------------------------------------------ 11 tools

def test_tools_present():
    c = by_name(facts())["tools"]
    assert c.ok and c.detail == "ip /usr/sbin/ip, nsenter /usr/bin/nsenter"


@pytest.mark.parametrize("missing", [["ip"], ["nsenter"], ["ip", "nsenter"]])
def test_tools_missing_fail(missing):
    t = facts().tools | {name: None for name in missing}
    c = by_name(facts(tools=t))["tools"]
    assert not c.ok
    assert c.detail == "missing: " + ", ".join(missing)
    assert c.fix == "apt-get install iproute2 util-linux"


def test_find_tools_uses_path_and_sbin(tmp_path):
    exe = tmp_path / "nsenter"
    exe.write_text("#!/bin/sh\n")
    exe.chmod(0o755)
    found = doc.find_tools({"PATH": str(tmp_path)}, ("nsenter", "no-such-x"))
    assert found == {"nsenter": str(exe), "no-such-x": None}


# ------------------------------------------------------------ render

def test_render_ok_line_format():
    out = doc.render([Check("cgroup v2", True,
                            "/sys/fs/cgroup/unified (hybrid)")])
    assert out.splitlines() == [
        "OK   cgroup v2        /sys/fs/cgroup/unified (hybrid)",
        "1 checks, 0 failed"]


def test_render_failure_has_fix_line_and_summary():
    out = doc.render([
        Check("kernel headers", False, "missing at /lib/modules/x/build",
              "install them"),
        Check("BTF", True, "present")])
    assert out.splitlines() == [
        "FAIL kernel headers   missing at /lib/modules/x/build",
        "     fix: install them",
        "OK   BTF              present",
        "2 checks, 1 failed"]


@pytest.mark.parametrize("changes", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_render_stays_under_80_columns(changes):
    out = doc.render(doc.evaluate(facts(**changes)))
    lines = out.splitlines()
    assert all(len(line) < 80 for line in lines), out
    assert lines[-1].startswith(f"{len(doc.CHECKS)} checks, ")
    assert lines[-1].endswith((" failed", " warnings"))


def test_render_wraps_long_detail_with_alignment():
    out = doc.render(doc.evaluate(facts()))
    lines = out.splitlines()
    i = next(n for n, line in enumerate(lines) if "kernel headers" in line)
    assert lines[i + 1].startswith(" " * 22) and lines[i + 1].strip()


def test_render_counts_failures():
    out = doc.render(doc.evaluate(facts(euid=1000, tools={})))
    assert out.splitlines()[-1] == "18 checks, 2 failed, 1 warnings"
    assert out.count("     fix: ") == 3
    assert sum(ln.startswith("WARN ") for ln in out.splitlines()) == 1


# ------------------------------------------------------------ this machine

def test_gather_smoke_on_this_machine():
    results = doc.gather(os.environ)
    assert len(results) == len(doc.CHECKS)
    assert all(isinstance(r, Check) for r in results)
    json.dumps([r.as_dict() for r in results])
    lines = doc.render(results).splitlines()
    assert len(lines) >= len(results) + 1
    assert lines[-1].startswith(f"{len(results)} checks, ")


def test_gather_honours_bcc_kernel_source(tmp_path):
    env = dict(os.environ, BCC_KERNEL_SOURCE=str(tmp_path / "none"))
    c = {r.name: r for r in doc.gather(env)}["kernel headers"]
    assert not c.ok and "BCC_KERNEL_SOURCE=" in c.detail


def test_import_and_gather_do_not_load_heavy_modules():
    code = ("import os, sys; import netleak_hook.doctor as d; "
            "d.gather(os.environ); "
            "print([m for m in ('bcc', 'click', 'pyroute2') "
            "if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], check=True,
                         capture_output=True, text=True).stdout
    assert out.strip() == "[]"


# ------------------------------------------------------------ security

def sec(**kw) -> Facts:
    return facts(security=doc.Security(**kw))


def test_forged_sources():
    assert not by_name(sec())["forged sources"].warn
    c = by_name(sec(nonlocal_bind=("0", "1")))["forged sources"]
    assert c.ok and c.warn and "net.ipv6.ip_nonlocal_bind=1" in c.detail
    assert "ip_nonlocal_bind=0" in c.fix


@pytest.mark.parametrize("abi,yama,warn,says", [
    (7, 1, False, "Landlock ABI 7"),
    (7, -1, True, "not confined"),
    (5, 1, False, "Yama ptrace_scope 1"),
    (5, 0, True, "scopes need 6"),
    (0, -1, True, "no Landlock"),
])
def test_confinement(abi, yama, warn, says):
    c = by_name(sec(landlock_abi=abi, yama_ptrace_scope=yama))["other processes"]
    assert c.ok and c.warn == warn and says in c.detail, c


def test_landlock_scoped_abi_is_the_kernel_layers():
    # core keeps its own copy (it may not import the kernel layer)
    from netleak_hook.core import readiness
    from netleak_hook.kernel import confine
    assert readiness.LANDLOCK_SCOPED_ABI == confine.LANDLOCK_SCOPED_ABI
    below = by_name(sec(landlock_abi=confine.LANDLOCK_SCOPED_ABI - 1))["other processes"]
    at = by_name(sec(landlock_abi=confine.LANDLOCK_SCOPED_ABI))["other processes"]
    assert "scopes need" in below.detail and "scopes need" not in at.detail


def test_socket_families():
    assert not by_name(sec())["socket families"].warn
    c = by_name(sec(vsock=True))["socket families"]
    assert c.warn and "AF_VSOCK" in c.detail and "40" in c.fix


@pytest.mark.parametrize("start,port,warn", [(1024, 1021, False), (1023, 1021, False),
                                             (1022, 1021, True), (0, 1021, True),
                                             (1023, 1022, True), (None, 1021, False)])
def test_relay_port(start, port, warn):
    c = by_name(sec(unprivileged_port_start=start, relay_port=port))["relay port"]
    assert c.ok and c.warn == warn, c


def test_libbpf_missing_says_what_to_install():
    c = by_name(facts(libbpf=None))["libbpf"]
    assert not c.ok and "apt-get install libbpf1" in c.fix
    assert by_name(facts(libbpf="libbpf.so.0"))["libbpf"].ok


def test_libbpf_found_here():
    assert doc.find_libbpf() in ("libbpf.so.1", "libbpf.so.0", None)


PURE = "25 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw,nsdelegate\n"


def test_systemd_sessions_as_units():
    c = by_name(facts(systemd=True, mountinfo=PURE, daemon_service="active"))["systemd"]
    assert c.ok and not c.warn and "netleak.slice" in c.detail and "runs as" in c.detail
    c = by_name(facts(systemd=True, mountinfo=PURE, daemon_service="inactive"))["systemd"]
    assert "starts on demand" in c.detail
    c = by_name(facts(systemd=True, daemon_service=None))["systemd"]      # hybrid
    assert c.ok and c.warn and "unified_cgroup_hierarchy=1" in c.fix
    assert "makes cgroups under netleak/" in by_name(facts())["systemd"].detail
    c = by_name(facts(systemd=True, mountinfo=PURE, daemon_service="active",
                      daemon_delegated=True))["systemd"]
    assert not c.warn and "no delegated cgroup of its own" in c.detail


def test_systemd_warns_of_a_daemon_service_without_delegation():
    c = by_name(facts(systemd=True, mountinfo=PURE, daemon_service="active",
                      daemon_delegated=False))["systemd"]
    assert c.ok and c.warn and "Delegate=yes" in c.fix and "without Delegate" in c.detail


def test_service_facts_read_systemctl(monkeypatch):
    import subprocess

    def run(out, rc=0):
        monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(
            a, rc, stdout=out, stderr=""))
    run("LoadState=loaded\nActiveState=active\nDelegate=yes\n")
    assert doc.service_facts("x.service") == {"daemon_service": "active",
                                              "daemon_delegated": True}
    run("LoadState=not-found\nActiveState=inactive\nDelegate=no\n")
    assert doc.service_facts("x.service") == {"daemon_service": "not installed"}
    run("", rc=1)
    assert doc.service_facts("x.service") == {"daemon_service": None}


def test_rules_check_names_the_rule_that_shadows_an_interface():
    assert by_name(facts())["rules"].ok
    assert "no bound interface is up" in by_name(facts(shadowed={}))["rules"].detail
    ok = by_name(facts(shadowed={"wg0": None}))["rules"]
    assert ok.ok and "wg0" in ok.detail
    c = by_name(facts(shadowed={"wg0": None, "tun0": "1: from all lookup 51820"}))["rules"]
    assert not c.ok and c.detail == "tun0: shadowed by 1: from all lookup 51820"
    assert "priority" in c.fix
