"""Proxy mode's pure pieces: netleak-exec's --proxy parsing, the request
checks, the session's map entry and state, the relay's map layouts and
destination choice, the io.netleak.proxy annotation and the hooks.d pattern."""
from __future__ import annotations

import json
import os
import re
import struct

import pytest

from netleak_hook import execcmd, hook, execsetup
from netleak_hook.core import oci, validate
from netleak_hook.proxymode import relay
from netleak_hook.core import state as st
from netleak_hook.core.errors import NetleakError
from netleak_hook.core.policy import Policy
from netleak_hook.core.state import Session, State
from tests.helpers import make_session

from netleak_hook.core.abi import POLICY as _POLICY

_PORTS = _POLICY.offsets["relay_port"]   # relay_port, then dns_port

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
URL = "socks5h://127.0.0.1:9050"
SECRET = "socks5://me:s3cret@192.0.2.1:1080"


def only(*names):      # is_interface of a machine with these interfaces
    return lambda n: n in names


def never(n):
    raise AssertionError(f"interface check of {n!r} where IFACE is not guessed")


def refused(fn, *args, words=""):
    with pytest.raises(NetleakError) as e:
        fn(*args)
    assert "\n" not in e.value.message and words in e.value.message


# ---------- execcmd.parse with --proxy ----------

@pytest.mark.parametrize("argv,ifaces,iface,command", [
    (["--proxy", URL, "curl", "-s", "x"], (), "", ["curl", "-s", "x"]),
    (["--proxy", URL, "curl", "-s", "x"], ("curl",), "curl", ["-s", "x"]),  # it exists
    (["--proxy", URL, "wg0", "curl", "-s"], ("wg0",), "wg0", ["curl", "-s"]),
    (["--proxy", URL, "wg0", "--", "curl"], ("wg0",), "wg0", ["curl"]),
    (["--proxy", URL, "wg0"], ("wg0",), "", ["wg0"]),           # a command must follow
    (["--proxy", URL, "--", "curl", "x"], (), "", ["curl", "x"]),
    (["--proxy", URL, "--", "--", "wg0"], ("wg0",), "", ["wg0"]),
    (["-u", "alice", f"--proxy={URL}", "wg0", "curl"], ("wg0",), "wg0", ["curl"]),
])
def test_proxy_before_iface(argv, ifaces, iface, command):
    a = execcmd.parse(argv, is_interface=only(*ifaces))
    assert (a.proxy, a.iface, a.command, a.block) == (URL, iface, command, False)


def test_double_dash_after_proxy_means_no_iface():
    a = execcmd.parse(["--proxy", URL, "--", "curl", "-s"], is_interface=lambda n: True)
    assert (a.iface, a.command) == ("", ["curl", "-s"])


@pytest.mark.parametrize("argv", [
    ["wg0", "--proxy", URL, "curl", "-u", "x"],
    ["wg0", f"--proxy={URL}", "curl", "-u", "x"],
    ["wg0", "--proxy", URL, "--", "curl", "-u", "x"],
])
def test_proxy_after_iface(argv):
    a = execcmd.parse(argv, is_interface=never)
    assert (a.iface, a.proxy, a.command) == ("wg0", URL, ["curl", "-u", "x"])


@pytest.mark.parametrize("argv,words", [
    (["wg0", "--proxy"], "--proxy requires argument"), (["wg0", "--proxy", URL], "no COMMAND"),
    (["--proxy", URL, "--proxy", "http://192.0.2.8:3128", "curl"], "--proxy given twice"),
    ([f"--proxy={URL}", "--proxy", URL, "wg0", "curl"], "--proxy given twice"),
])
def test_proxy_refusals(argv, words):
    refused(execcmd.parse, argv, words=words)


@pytest.mark.parametrize("argv", [["wg0", "--proxy=", "true"], ["--proxy", "", "wg0", "true"]])
def test_empty_proxy_url_is_refused_not_ignored(argv, monkeypatch):
    """`netleak-exec wg0 --proxy "$PROXY" cmd` with PROXY unset must not run
    cmd straight out of wg0: refuse, or open a proxy-mode session."""
    opened = []
    monkeypatch.setattr(execcmd.os, "geteuid", lambda: 0)
    monkeypatch.setattr(execcmd, "_is_interface", only("wg0"))
    monkeypatch.setattr(execsetup, "open_exec_session", lambda *a: opened.append(a))
    monkeypatch.setattr(execcmd.os, "execv", lambda *a: None)
    try:
        execcmd.run(argv)
    except NetleakError as e:
        assert "proxy" in e.message and not opened
        return
    assert opened and "proxy" in opened[0][4]


def test_block_with_proxy_parses_then_is_refused():
    a = execcmd.parse(["--block", "--proxy", URL, "curl"], is_interface=never)
    assert (a.block, a.proxy, a.iface, a.command) == (True, URL, "", ["curl"])
    refused(validate.proxy_request, a.proxy, a.block, a.dns, a.iface, a.via,
            words="exclude each other")


@pytest.mark.parametrize("argv,command", [
    (["wg0", "-u", "alice"], ["-u", "alice"]),
    (["wg0", "curl", "--proxy", URL], ["curl", "--proxy", URL]),
    (["wg0", "--proxyx", URL], ["--proxyx", URL]),
])
def test_without_proxy_words_after_iface_are_the_command(argv, command):
    a = execcmd.parse(argv, is_interface=never)
    assert (a.iface, a.command, a.proxy, a.user) == ("wg0", command, None, None)


# ---------- validate.proxy_request ----------

@pytest.mark.parametrize("block,dns,iface,via,words", [
    (True, [], "", [], "--block"),
    (False, ["10.64.0.1"], "wg0", [], "--dns has no use"),
    (False, [], "", ["192.0.2.1"], "--via needs IFACE"),
])
def test_proxy_request_refusals(block, dns, iface, via, words):
    refused(validate.proxy_request, URL, block, dns, iface, via, words=words)


def test_proxy_request_good():
    # the proxy's address as looked up by the requester (here: the address)
    assert validate.proxy_request(SECRET, False, [], "", []) == {
        "proxy": SECRET, "proxy_addr": "192.0.2.1"}
    assert validate.proxy_request(URL, False, [], "wg0", ["192.0.2.1"]) == {
        "proxy": URL, "proxy_addr": "127.0.0.1"}
    refused(validate.proxy_request, "ftp://x:1", False, [], "", [], words="scheme")


# ---------- state: the map entry, what, JSON ----------

def sess(**kw) -> Session:
    return make_session(**{"id": "a1", "iface": "", "cgroup": "netleak/exec-a1", "cgroup_id": 77,
                           "pinset": "/sys/fs/bpf/netleak/x", **kw})


BASE = Policy(ifindex=3, mark=0x6E6C0001, killed=False, netns=9)


@pytest.mark.parametrize("url,dns_port", [
    ("socks5://192.0.2.1:1080", 5302), ("SOCKS5://192.0.2.1:1080", 5302),
    ("socks5h://127.0.0.1:9050", 5301), ("http://192.0.2.8:3128", 5301),
])
def test_policy_for_proxy_session(url, dns_port):
    p = st.policy_for(sess(proxy=url), BASE, (5300, 5301, 5302))
    assert (p.proxy, p.relay_port, p.dns_port) == (True, 5300, dns_port)
    assert (p.ifindex, p.mark, p.netns, p.block) == (3, 0x6E6C0001, 9, False)
    assert Policy.unpack(p.pack()) == p


def test_policy_for_other_sessions_has_no_relay():
    for s in (sess(iface="wg0"), sess(block=True)):
        p = st.policy_for(s, BASE, (5300, 5301, 5302))
        assert (p.proxy, p.relay_port, p.dns_port) == (False, 0, 0)


def test_what_hides_the_password():
    assert sess(proxy=SECRET).what == "socks5://me:***@192.0.2.1:1080"
    assert sess(proxy=URL, iface="wg0").what == f"{URL} via wg0"
    assert (sess(iface="wg0").what, sess(block=True).what) == ("wg0", "no network")


def test_state_json_keeps_proxy_fields():
    s = State().with_session(sess(proxy=SECRET, proxy_addr="192.0.2.1"))
    s = s.with_session(sess(id="b2", iface="wg0", proxy=URL, proxy_addr="::1"))
    back = st.from_json(st.to_json(s))
    assert back == s
    assert back.sessions["a1"].proxy == SECRET and back.sessions["b2"].proxy_addr == "::1"
    assert st.from_json(st.to_json(State().with_session(sess()))).sessions["a1"].proxy == ""


# ---------- relay: map layouts (bpf/netleak.h) and destination ----------

V4_MAPPED = b"\0" * 10 + b"\xff\xff"


def test_redirect_layout_matches_the_c_struct():
    """struct nl_redirect: the original address and the server's (16 bytes
    each, IPv4 mapped), their ports (u32, network order in the low half),
    the session's cgroup id (u64), and whether it is a TCP connection to
    the relay (u32, then u32 pad): 56 bytes, as netleak.h declares it."""
    header = open(os.path.join(os.path.dirname(__file__), "..", "..", "bpf",
                               "netleak.h")).read()
    body = header[header.index("struct nl_redirect {"):]
    body = body[:body.index("};")]
    sizes = {"u64": 8, "u32": 4, "struct nl_addr": 16}
    total = sum(sizes[m.group(1)] for m in re.finditer(r"^\s+(u64|u32|struct nl_addr) \w+;",
                                                        body, re.M))
    assert relay.REDIRECT_SIZE == total == 56
    raw = (V4_MAPPED + bytes([93, 184, 216, 34]) + V4_MAPPED + b"\x7f\0\0\x01" +
           (443).to_bytes(2, "big") + b"\0\0" + (1021).to_bytes(2, "big") + b"\0\0" +
           struct.pack("<Q", 0x0102030405060708) + struct.pack("<II", 1, 0))
    assert relay.unpack_redirect(raw) == relay.Redirect(
        "93.184.216.34", 443, "127.0.0.1", 1021, 0x0102030405060708, True)
    v6 = bytes.fromhex("20010db8000000000000000000000001") + b"\0" * 15 + b"\x01" + \
        (8080).to_bytes(2, "big") + b"\0\0" + (53).to_bytes(2, "big") + b"\0\0" + \
        struct.pack("<QII", 1, 0, 0)
    assert relay.unpack_redirect(v6) == relay.Redirect("2001:db8::1", 8080, "::1", 53, 1, False)


def route(scheme: str) -> relay.Route:
    return relay.Route(scheme=scheme, addr="192.0.2.1", port=1080)


@pytest.mark.parametrize("scheme,names", [("socks5", False), ("socks5h", True), ("http", True)])
def test_route_names(scheme, names):
    assert route(scheme).names is names


def test_destination_names_behind_stand_in_addresses():
    known = {"198.18.0.5": "example.org"}
    for scheme in ("socks5h", "http"):
        assert relay.destination("198.18.0.5", 443, route(scheme), known.get) == (
            "example.org", "")
        assert relay.destination("192.0.2.7", 443, route(scheme), known.get) == (
            "192.0.2.7", "")
        assert relay.destination("2001:db8::7", 443, route(scheme), known.get) == (
            "2001:db8::7", "")
        host, why = relay.destination("198.18.0.6", 443, route(scheme), known.get)
        assert host is None and "198.18.0.6" in why and "stand-in" in why
        assert "\n" not in why


def test_destination_socks5_passes_addresses_through():
    assert relay.destination("198.18.0.5", 80, route("socks5"), never) == ("198.18.0.5", "")


# ---------- the io.netleak.proxy annotation, and the hook ----------

CID = "3f2a" * 16


def state(annotations: dict, **over) -> bytes:
    doc = {"ociVersion": "1.0.2", "id": CID, "status": "creating", "pid": 4242,
           "bundle": "/b", "annotations": annotations, **over}
    return json.dumps(doc).encode()


def test_guards_with_proxy_annotation():
    s = oci.parse_state(state({"io.netleak.proxy": f" {SECRET} "}))
    assert s.guards() == {"proxy": SECRET, "proxy_addr": "192.0.2.1"}
    assert s.interface() is None
    s = oci.parse_state(state({"io.netleak.proxy": URL, "io.netleak.allow": "10.0.0.0/8"}))
    assert s.guards() == {"proxy": URL, "proxy_addr": "127.0.0.1", "allow": ["10.0.0.0/8"]}


@pytest.mark.parametrize("value", ["", "ftp://x:1", "socks5://h", "socks5://a b:1\nx"])
def test_bad_proxy_annotation_refused(value):
    s = oci.parse_state(state({"io.netleak.proxy": value}))
    refused(s.guards, words="annotation io.netleak.proxy")


@pytest.fixture
def acting(tmp_path, monkeypatch):
    """hook.run with root faked and protect() recorded, not done."""
    calls = []

    def protect(store, st_, iface, autostart, guards=None):
        calls.append((iface, guards))
        return {"id": "s1", "proxy": guards.get("proxy") and URL, "killed": False}
    monkeypatch.setattr(hook.os, "geteuid", lambda: 0)
    monkeypatch.setattr(hook, "protect", protect)
    monkeypatch.setattr(hook.client, "request", lambda *a, **k: calls.append("reap"))
    env = {"NETLEAK_RUN_DIR": str(tmp_path / "run")}
    return lambda argv, ann, **over: (hook.run(argv, state(ann, **over), env), calls)


def test_hook_acts_on_the_proxy_annotation_alone(acting):
    (code, line), calls = acting([], {"io.netleak.proxy": URL})
    assert code == 0 and calls == [("", {"proxy": URL, "proxy_addr": "127.0.0.1"})]
    assert f"through {URL}" in line and "via" not in line and "session s1" in line


def test_hook_proxy_with_interface(acting):
    (code, line), calls = acting([], {"io.netleak.proxy": URL, "io.netleak.interface": "wg0"})
    assert calls == [("wg0", {"proxy": URL, "proxy_addr": "127.0.0.1"})]
    assert "via wg0" in line


def test_hook_poststop_of_a_proxy_container_tells_the_reaper(acting):
    (code, line), calls = acting([], {"io.netleak.proxy": URL}, status="stopped", pid=0)
    assert (code, calls) == (0, ["reap"]) and "reaper told" in line


def test_hook_other_annotations_alone_do_nothing(acting):
    (code, line), calls = acting([], {"io.netleak.dns": "10.0.0.1", "io.netleak.proxyx": URL})
    assert code == 0 and "nothing to do" in line and calls == []


def test_hook_refuses_a_bad_proxy_before_acting(acting, tmp_path):
    with pytest.raises(NetleakError):
        acting([], {"io.netleak.proxy": "socks5://nohost"})
    assert not (tmp_path / "run").exists()


# ---------- hooks/netleak.json, Policy ports ----------

def test_shipped_hook_pattern_selects_both_annotations():
    with open(os.path.join(ROOT, "hooks", "netleak.json")) as f:
        [pattern] = json.load(f)["when"]["annotations"]
    assert re.search(pattern, "io.netleak.interface") and re.search(pattern, "io.netleak.proxy")
    for other in ("io.netleak.dns", "io.netleak.allow", "io.netleak.proxy2",
                  "xio.netleak.proxy", "io.netleak.interface|io.netleak.proxy", "io.netleak"):
        assert not re.search(pattern, other), other


@pytest.mark.parametrize("relay_port,dns_port,tail", [
    (1, 65535, b"\0\x01\0\0\xff\xff\0\0"), (65535, 1, b"\xff\xff\0\0\0\x01\0\0"),
    (0, 0, b"\0" * 8),
])
def test_policy_proxy_ports_edges(relay_port, dns_port, tail):
    p = Policy(ifindex=0, mark=0, killed=True, proxy=True, relay_port=relay_port,
               dns_port=dns_port)
    raw = p.pack()
    assert raw[_PORTS:_PORTS + 8] == tail and raw[8] == 0x4 | 0x1
    assert Policy.unpack(raw) == p


@pytest.mark.parametrize("url", [
    "socks5://alice:hunter2@proxy.example",          # no port
    "ftp://alice:hunter2@proxy.example:21",
    "socks5://alice:hunter2@proxy.example:1080/path",
])
def test_refusals_never_show_the_password(url):
    from netleak_hook.core import proxyspec
    with pytest.raises(NetleakError) as e:
        proxyspec.parse(url)
    assert "hunter2" not in e.value.message and "alice:***@" in e.value.message


def test_an_empty_iface_is_refused_without_proxy(monkeypatch):
    """`netleak-exec -- '' true`: IFACE is optional only with --proxy (or
    --block); an empty one is refused before anything is done."""
    monkeypatch.setattr(execcmd.os, "geteuid", lambda: 0)
    monkeypatch.setattr(execsetup, "open_exec_session",
                        lambda *a: pytest.fail("reached open_exec_session"))
    with pytest.raises(NetleakError) as e:
        execcmd.run(["--", "", "true"])
    assert "interface name is empty" in e.value.message
