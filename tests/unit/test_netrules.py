"""--allow and --deny rules: their syntax, canonical texts, what they hold,
the routing rules --allow makes of them, and how the daemon checks them."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from netleak_hook.core import netrules, plan, validate
from netleak_hook.core.errors import NetleakError, one_line
from netleak_hook.core.netrules import NetRule
from netleak_hook.core.plan import MAIN_TABLE, Rule


@pytest.mark.parametrize("raw,rule,text", [
    ("192.168.1.0/24", NetRule("192.168.1.0/24"), "192.168.1.0/24"),
    ("192.168.1.7/24", NetRule("192.168.1.0/24"), "192.168.1.0/24"),
    ("192.0.2.9", NetRule("192.0.2.9/32"), "192.0.2.9/32"),
    ("192.168.1.0/24:631/tcp", NetRule("192.168.1.0/24", 631, 631, "tcp"),
     "192.168.1.0/24:631/tcp"),
    ("192.168.1.0/24:631/TCP", NetRule("192.168.1.0/24", 631, 631, "tcp"),
     "192.168.1.0/24:631/tcp"),
    ("[2001:db8::/64]:53", NetRule("2001:db8::/64", 53, 53), "[2001:db8::/64]:53"),
    ("[2001:db8::1]:443/tcp", NetRule("2001:db8::1/128", 443, 443, "tcp"),
     "[2001:db8::1/128]:443/tcp"),
    ("2001:db8::/64/udp", NetRule("2001:db8::/64", proto="udp"), "2001:db8::/64/udp"),
    ("[2001:db8::/64]", NetRule("2001:db8::/64"), "2001:db8::/64"),
    (":8000-8100", NetRule(None, 8000, 8100), ":8000-8100"),
    (":53/udp", NetRule(None, 53, 53, "udp"), ":53/udp"),
    ("/udp", NetRule(None, proto="udp"), "/udp"),
    ("10.0.0.0/8:1-65535", NetRule("10.0.0.0/8", 1, 65535), "10.0.0.0/8:1-65535"),
    ("::ffff:192.168.1.0/120:631", NetRule("192.168.1.0/24"), None),
    ("0.0.0.0/0:443/tcp", NetRule("0.0.0.0/0", 443, 443, "tcp"), "0.0.0.0/0:443/tcp"),
    ("::/0/udp", NetRule("::/0", proto="udp"), "::/0/udp"),
    (" 192.0.2.0/24:80 ", NetRule("192.0.2.0/24", 80, 80), "192.0.2.0/24:80"),
    # an IPv6 port needs brackets: without them, it is part of the address
    ("2001:db8::1:53", NetRule("2001:db8::1:53/128"), "2001:db8::1:53/128"),
])
def test_rules_parse_to_canonical_texts(raw, rule, text):
    if text is None:        # an IPv6 text with a port needs brackets
        with pytest.raises(NetleakError):
            netrules.parse(raw)
        return
    assert netrules.parse(raw) == rule
    assert rule.text() == text and netrules.parse(text) == rule


@pytest.mark.parametrize("raw,words", [
    ("", "is empty"), ("   ", "is empty"),
    ("192.168.1.0/24:", "port after ':' is missing"),
    ("[2001:db8::/64]:", "port after ':' is missing"),
    ("192.168.1.0/24:0", "1 to 65535"), ("192.168.1.0/24:65536", "1 to 65535"),
    ("192.168.1.0/24:http", "1 to 65535"), (":-5", "1 to 65535"),
    (":100-50", "runs backwards"),
    ("lan:80", "not an address or prefix"), ("192.168.1.0/33", "not an address or prefix"),
    ("192.168.1.0/24/sctp", "tcp or udp"), ("/icmp", "tcp or udp"),
    ("[2001:db8::/64]x:53", "[2001:db8::/64]:443"), ("[2001:db8::/64:53", "[2001:db8::/64]"),
    ("fe80::1%eth0", "%zone"), ("::/80", "covers all of IPv4"),
    ("/", "not an address or prefix"),
])
def test_bad_rules_get_one_line_that_says_what_to_give(raw, words):
    with pytest.raises(NetleakError) as e:
        netrules.parse(raw, "--deny")
    assert words in e.value.message, e.value.message
    assert e.value.message.startswith("--deny") and one_line(e.value.message)


@given(st.text(max_size=30))
def test_any_text_parses_or_is_refused_in_one_line(raw):
    try:
        rule = netrules.parse(raw)
    except NetleakError as e:
        assert one_line(e.message) and len(e.message) < 240
    else:
        assert netrules.parse(rule.text()) == rule


@given(st.ip_addresses(), st.integers(0, 128), st.integers(0, 65535), st.integers(0, 65535),
       st.sampled_from(["", "tcp", "udp"]))
def test_a_rule_text_is_taken_back_unchanged(addr, plen, lo, hi, proto):
    import ipaddress
    plen = min(plen, addr.max_prefixlen)
    net = ipaddress.ip_network(f"{addr}/{plen}", strict=False)
    lo, hi = sorted((lo, hi))
    raw = NetRule(str(net), lo if lo else 0, hi if lo else 0, proto).text()
    try:
        rule = netrules.parse(raw)
    except NetleakError:
        return      # the mapped range, or a /n over it
    assert rule.text() == raw or net.version == 6


# ---------- what a rule holds ----------

PRINTER = netrules.parse("192.168.1.0/24:631/tcp")


@pytest.mark.parametrize("flow,held", [
    (("192.168.1.20", 631, "tcp"), True),
    (("192.168.1.20", 632, "tcp"), False),
    (("192.168.1.20", 631, "udp"), False),
    (("192.168.2.20", 631, "tcp"), False),
    (("::ffff:192.168.1.20", 631, "tcp"), True),    # as a dual-stack socket says it
    (("192.168.1.20", None, "tcp"), False),         # a later fragment: not allowed
    (("192.168.1.20", 631, None), False),           # behind extension headers
    (("192.168.1.20", None, "icmp"), False),
])
def test_an_allow_rule_holds_only_what_it_names(flow, held):
    assert PRINTER.holds(*flow) is held


@pytest.mark.parametrize("rule,flow,held", [
    (":25/tcp", ("203.0.113.5", 25, "tcp"), True),
    (":25/tcp", ("2001:db8::5", 25, "tcp"), True),
    (":25/tcp", ("203.0.113.5", None, "tcp"), True),    # a later fragment: fail closed
    (":25/tcp", ("203.0.113.5", 25, None), True),       # unknown protocol: fail closed
    (":25/tcp", ("203.0.113.5", 25, "udp"), False),
    (":25/tcp", ("203.0.113.5", None, "icmp"), False),  # known, and has no ports
    (":25", ("203.0.113.5", 25, "udp"), True),          # no protocol: TCP and UDP
    ("/udp", ("203.0.113.5", 9, "udp"), True),
    ("/udp", ("203.0.113.5", None, None), True),
    ("/udp", ("203.0.113.5", 9, "tcp"), False),
    ("10.0.0.0/8", ("10.1.2.3", None, "icmp"), True),
    ("10.0.0.0/8", ("2001:db8::1", 80, "tcp"), False),
    ("::/0/udp", ("192.0.2.1", 53, "udp"), False),      # IPv6 only
    ("::/0/udp", ("2001:db8::1", 53, "udp"), True),
    ("0.0.0.0/0:443/tcp", ("2001:db8::1", 443, "tcp"), False),
])
def test_a_deny_rule_holds_what_it_cannot_rule_out(rule, flow, held):
    assert netrules.parse(rule).holds(*flow, deny=True) is held


def test_first_holding_names_the_rule():
    rules = ("10.0.0.0/8", ":53/udp", ":53")
    assert netrules.first_holding(rules, "192.0.2.1", 53, "udp", deny=True) == 1
    assert netrules.first_holding(rules, "192.0.2.1", 53, "tcp", deny=True) == 2
    assert netrules.first_holding(rules, "192.0.2.1", 80, "tcp", deny=True) is None


# ---------- the options ----------

def test_allow_and_deny_take_rules_deduplicated_and_bounded():
    assert validate.allow_rules(["192.168.1.7/24:631/tcp", "192.168.1.0/24:631/tcp",
                                 "[2001:db8::/64]:53"]) == (
        "192.168.1.0/24:631/tcp", "[2001:db8::/64]:53")
    assert validate.deny_rules(["0.0.0.0/0", "/udp", ":25"]) == ("0.0.0.0/0", "/udp", ":25")
    with pytest.raises(NetleakError, match="at most 8"):
        validate.deny_rules([f":{p}" for p in range(1, 10)])


@pytest.mark.parametrize("raw", ["0.0.0.0/0", "::/0", "::ffff:0:0/96"])
def test_an_allow_rule_for_everything_is_refused(raw):
    with pytest.raises(NetleakError, match="allows everything"):
        validate.allow_rules([raw])


def test_a_port_of_every_address_may_be_allowed():
    assert validate.allow_rules(["0.0.0.0/0:443/tcp", ":8000-8100"]) == (
        "0.0.0.0/0:443/tcp", ":8000-8100")


def test_a_resolver_a_deny_rule_holds_is_refused():
    with pytest.raises(NetleakError, match="--dns 192.0.2.53 is refused by --deny :53"):
        validate.guard_request(["192.0.2.53"], [], False, [], [":53"])
    assert validate.guard_request(["192.0.2.53"], [], False, [], [":53/tcp", ":80"]) == {
        "dns": ["192.0.2.53"], "allow": [], "block": False, "deny": [":53/tcp", ":80"]}


def test_block_with_dns_needs_an_allow_rule_for_port_53():
    validate.guards(("192.0.2.53",), ("192.0.2.53/32:53/udp",), True)
    with pytest.raises(NetleakError, match="--allow 192.0.2.53"):
        validate.guards(("192.0.2.53",), ("192.0.2.53/32:80",), True)


def test_guard_request_without_deny_is_as_before():
    assert "deny" not in validate.guard_request([], ["10.0.0.0/8"], False, [])


# ---------- routing rules ----------

def test_allow_rules_route_ports_and_protocols():
    got = plan.allow_rules(0x100, 1001, ("192.168.1.0/24:631/tcp", ":53", "/udp",
                                         "2001:db8::/64", "0.0.0.0/0:443/tcp"), 1700)
    main = {r for r in got if r.table == MAIN_TABLE}
    assert {r for r in got if r.table != MAIN_TABLE} == {
        Rule(4, 1700, 1001, fwmark=0x100), Rule(6, 1700, 1001, fwmark=0x100)}
    assert main == {
        Rule(4, 1699, MAIN_TABLE, 0x100, dst="192.168.1.0/24", ipproto=6, dport=(631, 631)),
        Rule(4, 1699, MAIN_TABLE, 0x100, ipproto=6, dport=(53, 53)),
        Rule(4, 1699, MAIN_TABLE, 0x100, ipproto=17, dport=(53, 53)),
        Rule(6, 1699, MAIN_TABLE, 0x100, ipproto=6, dport=(53, 53)),
        Rule(6, 1699, MAIN_TABLE, 0x100, ipproto=17, dport=(53, 53)),
        Rule(4, 1699, MAIN_TABLE, 0x100, ipproto=17),
        Rule(6, 1699, MAIN_TABLE, 0x100, ipproto=17),
        Rule(6, 1699, MAIN_TABLE, 0x100, dst="2001:db8::/64"),
        Rule(4, 1699, MAIN_TABLE, 0x100, ipproto=6, dport=(443, 443)),  # /0: no `to`
    }


def test_port_rules_are_ours_only_into_main_with_a_session_mark():
    base = 0x6E6C0000
    mark = base + plan.SESSION_MARKS
    tables = {1001}
    assert plan.is_ours(Rule(4, 1699, MAIN_TABLE, mark, ipproto=6, dport=(631, 631)),
                        tables, base)
    assert plan.is_ours(Rule(4, 1699, MAIN_TABLE, mark, ipproto=17), tables, base)
    assert not plan.is_ours(Rule(4, 1699, MAIN_TABLE, mark), tables, base)
    assert not plan.is_ours(Rule(4, 1699, MAIN_TABLE, 5, ipproto=6), tables, base)
    # netleak never routes ports into its own tables: another tool's rule
    assert not plan.is_ours(Rule(4, 1700, 1001, mark, ipproto=6), tables, base)
    assert plan.is_ours(Rule(4, 1700, 1001, mark), tables, base)


def test_port_rules_as_netlink_and_ip_rule_say_them():
    from netleak_hook.core.precedence import rule_text
    from netleak_hook.kernel import netlink
    kw = netlink._rule_kw(Rule(4, 1699, MAIN_TABLE, 0x100, dst="192.168.1.0/24",
                               ipproto=6, dport=(631, 632)))
    assert (kw["ip_proto"], kw["dport_range"], kw["dst_len"]) == (6, "631:632", 24)
    assert "ip_proto" not in netlink._rule_kw(Rule(4, 1699, MAIN_TABLE, 0x100, dst="10.0.0.0/8"))
    assert netlink._ports("631:632") == (631, 632) and netlink._ports(None) is None
    assert rule_text(1699, dst="192.168.1.0/24", fwmark=0x100, table=254, ipproto=6,
                     dport=(631, 631)) == \
        "1699: from all to 192.168.1.0/24 fwmark 0x100 ipproto tcp dport 631 lookup main"
