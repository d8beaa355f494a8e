"""Leak guards beyond routing, the pure parts: --dns, --allow and --block
as netleak-exec, the hook's annotations and the daemon read them; the
interface's resolvers as systemd-resolved records them; a session's map
entry and its line in `netleak status`."""
from __future__ import annotations

import json

import pytest

from netleak_hook.core import dnsconf, oci, validate
from netleak_hook import execcmd, status
from netleak_hook.core.errors import NetleakError
from netleak_hook.core.policy import Policy
from netleak_hook.core.state import from_json, policy_for, to_json, State
from tests.helpers import make_session


# ---------- --dns ----------

def test_dns_servers_normalized_deduplicated_in_order():
    assert validate.dns_servers(["10.64.0.1", " 2001:DB8::53 ", "10.64.0.1",
                                 "::ffff:192.0.2.53"]) == (
        "10.64.0.1", "2001:db8::53", "192.0.2.53")


@pytest.mark.parametrize("value,words", [
    ("resolver", "not an IP address"), ("127.0.0.53", "non-loopback"), ("::1", "non-loopback"),
    ("0.0.0.0", "unicast"), ("224.0.0.251", "unicast"), ("10.0.0.0/8", "not an IP address")])
def test_dns_servers_refused_with_one_line(value, words):
    with pytest.raises(NetleakError) as e:
        validate.dns_servers([value])
    assert words in e.value.message and "\n" not in e.value.message


def test_dns_servers_at_most_four():
    validate.dns_servers([f"192.0.2.{i}" for i in range(1, 5)])
    with pytest.raises(NetleakError, match="at most 4"):
        validate.dns_servers([f"192.0.2.{i}" for i in range(1, 6)])


# ---------- --allow ----------

def test_allow_rules_take_hosts_and_loose_prefixes():
    assert validate.allow_rules(["192.168.1.7/24", "192.0.2.9", "2001:db8::/32"]) == (
        "192.168.1.0/24", "192.0.2.9/32", "2001:db8::/32")


@pytest.mark.parametrize("value,words", [
    ("lan", "not an address or prefix"), ("0.0.0.0/0", "allows everything"),
    ("::/0", "allows everything"), ("::/0:53", "give"), ("::ffff:0:0/96", "allows everything"),
    ("::/80", "covers all of IPv4"), ("192.168.1.0/33", "not an address or prefix")])
def test_allow_rules_refused_with_one_line(value, words):
    with pytest.raises(NetleakError) as e:
        validate.allow_rules([value])
    assert words in e.value.message and "\n" not in e.value.message


def test_allow_rules_at_most_eight():
    validate.allow_rules([f"10.{i}.0.0/16" for i in range(8)])
    with pytest.raises(NetleakError, match="at most 8"):
        validate.allow_rules([f"10.{i}.0.0/16" for i in range(9)])


def test_block_with_dns_needs_the_resolver_allowed():
    validate.guards((), (), True)
    validate.guards(("192.0.2.53",), ("192.0.2.0/24",), True)
    validate.guards(("192.0.2.53",), (), False)
    with pytest.raises(NetleakError, match="--allow 192.0.2.53"):
        validate.guards(("192.0.2.53",), ("198.51.100.0/24",), True)


# ---------- netleak-exec's command line ----------

def test_exec_parses_guards_in_order():
    a = execcmd.parse(["--dns", "10.64.0.1", "--allow", "192.168.1.0/24", "--dns", "::2",
                       "wg0", "curl", "x"])
    assert (a.iface, a.command, a.dns, a.allow, a.block) == (
        "wg0", ["curl", "x"], ["10.64.0.1", "::2"], ["192.168.1.0/24"], False)


def test_exec_block_takes_no_interface():
    a = execcmd.parse(["--block", "make", "test"])
    assert (a.iface, a.command, a.block) == ("", ["make", "test"], True)
    assert execcmd.parse(["--block", "--", "ls"]).command == ["ls"]


@pytest.mark.parametrize("argv,words", [
    (["--block"], "no COMMAND"), (["--dns"], "requires argument")])
def test_exec_block_and_guard_mistakes(argv, words):
    with pytest.raises(NetleakError, match=words):
        execcmd.parse(argv)


def test_allow_mapped_prefixes_are_the_ipv4_ones_they_are():
    assert validate.allow_rules(["::ffff:192.168.1.0/120", "::ffff:10.1.2.3"]) == (
        "192.168.1.0/24", "10.1.2.3/32")


def test_guard_request_is_what_the_daemon_gets():
    assert validate.guard_request(["10.64.0.1"], [], False, ["192.0.2.1"]) == {
        "dns": ["10.64.0.1"], "allow": [], "block": False}
    with pytest.raises(NetleakError, match="--via goes with an interface"):
        validate.guard_request([], [], True, ["192.0.2.1"])


def test_an_older_daemon_that_ignores_guards_is_refused():
    from netleak_hook import client
    client.check_guards({"dns": []}, {"ok": True})
    client.check_guards({"dns": ["10.64.0.1"]}, {"ok": True, "block": False})
    with pytest.raises(NetleakError, match="older than --dns"):
        client.check_guards({"dns": ["10.64.0.1"]}, {"ok": True})


# ---------- annotations ----------

def _state(**ann) -> oci.ContainerState:
    doc = {"id": "c" * 64, "pid": 42, "annotations": {"io.netleak.interface": "wg0", **ann}}
    return oci.parse_state(json.dumps(doc).encode())


def test_annotations_give_dns_and_allow_lists():
    st = _state(**{"io.netleak.dns": "10.64.0.1, 2001:db8::53",
                   "io.netleak.allow": "192.168.1.0/24,,"})
    assert st.guards() == {"dns": ["10.64.0.1", "2001:db8::53"], "allow": ["192.168.1.0/24"]}
    assert _state().guards() == {}


def test_annotations_give_port_rules():
    st = _state(**{"io.netleak.allow": "192.168.1.0/24:631/tcp, [2001:db8::/64]:53",
                   "io.netleak.deny": ":25/tcp,10.0.0.0/8"})
    assert st.guards() == {"allow": ["192.168.1.0/24:631/tcp", "[2001:db8::/64]:53"],
                           "deny": [":25/tcp", "10.0.0.0/8"]}


@pytest.mark.parametrize("key,value", [
    ("io.netleak.dns", "127.0.0.53"), ("io.netleak.dns", "x" * 500),
    ("io.netleak.allow", "0.0.0.0/0"), ("io.netleak.allow", "a,b"),
    ("io.netleak.deny", ":0"), ("io.netleak.deny", ",".join(f":{p}" for p in range(1, 10)))])
def test_bad_annotations_refused_naming_the_annotation(key, value):
    with pytest.raises(NetleakError) as e:
        _state(**{key: value}).guards()
    assert e.value.message.startswith(f"annotation {key} ") and len(e.value.message) < 160


# ---------- the interface's resolvers ----------

RESOLVED = """# This is private data. Do not parse.
ADMIN_STATE=yes
OPER_STATE=routable
LLMNR=no
MDNS=no
SERVERS=10.64.0.1 [2001:db8::53]:53 [2001:db8::54]:5353 192.0.2.53:53 fe80::1%wg0 \
127.0.0.53 198.51.100.53#dns.example 10.64.0.1 192.0.2.54:5353
DOMAINS=~.
"""


def test_resolved_link_state_parsed():
    assert dnsconf.parse_link_state(RESOLVED) == (
        "10.64.0.1", "2001:db8::53", "192.0.2.53", "198.51.100.53")
    assert dnsconf.parse_link_state("ADMIN_STATE=yes\n") == ()


def test_interface_servers_read_by_ifindex(tmp_path):
    (tmp_path / "7").write_text(RESOLVED)
    assert dnsconf.interface_servers(7, str(tmp_path), limit=2) == ("10.64.0.1", "2001:db8::53")
    assert dnsconf.interface_servers(8, str(tmp_path)) == ()


# ---------- a session's entry, state and status ----------

S = make_session(cgroup="netleak/exec-s1-1", cgroup_id=9, dns=("10.64.0.1",), dns_from="user",
                 allow=("192.168.1.0/24",), mark=0x6E6C8000)


def test_policy_for_takes_the_sessions_own_guards_over_the_interfaces_state():
    base = Policy(ifindex=7, mark=0x6E6C0001, killed=True, netns=3, event_rate=50)
    assert policy_for(S, base) == Policy(
        ifindex=7, mark=0x6E6C8000, killed=True, netns=3, event_rate=50,
        dns=("10.64.0.1",), allow=("192.168.1.0/24",))
    plain = make_session(id="s2", cgroup="c", cgroup_id=10)
    assert policy_for(plain, base) == base


def test_state_keeps_guards_across_a_save():
    st = State().with_session(S)
    assert from_json(to_json(st)).sessions["s1"] == S


def test_status_shows_guards_and_no_network():
    blocked = make_session(id="b1", iface="", cgroup="c", cgroup_id=11, block=True,
                           committed=True, created=1.0)
    st = State().with_session(S).with_session(blocked)
    facts = {"s1": status.Facts(policy=Policy(7, 1, False), link_index=7, link_up=True),
             "b1": status.Facts(policy=Policy(0, 0, False, block=True))}
    rows = {r["id"]: r for r in status.rows(st, facts, 10.0)}
    assert rows["b1"]["state"] == "no-network" and rows["b1"]["block"] is True
    assert rows["s1"]["allow"] == ["192.168.1.0/24"] and rows["s1"]["mark"] == 0x6E6C8000
    assert rows["s1"]["guards"] == "dns 10.64.0.1 (--dns); allow 192.168.1.0/24"
    assert rows["b1"]["guards"] == "loopback dns refused (no --dns)"
    text = status.render(list(rows.values()))
    assert "  dns 10.64.0.1 (--dns); allow 192.168.1.0/24" in text
    assert "b1         -        no-network" in text
    assert all(len(ln) <= 79 for ln in text.splitlines())
