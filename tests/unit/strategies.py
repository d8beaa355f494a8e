"""Hypothesis strategies for what netleak reads from outside: interface
names, addresses, prefixes, cgroup paths, unit names, NETLEAK_* settings,
OCI state documents and systemd-resolved link files."""
from __future__ import annotations

import ipaddress
import json

from hypothesis import strategies as st

from netleak_hook.core import oci, validate
from netleak_hook.core.errors import NetleakError

# what str.splitlines() breaks on: none of these may split a one-line message
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"

# text without line breaks of any kind; for argv, also without NUL and
# without digits int() does not take such as '\u00b2' (see
# test_exec_user_that_looks_like_a_number)
line_text = st.text(st.characters(blacklist_characters=LINE_BREAKS), max_size=40)
argv_text = st.text(st.characters(blacklist_characters=LINE_BREAKS + "\0",
                                  blacklist_categories=("Cs", "No")), max_size=30)


def refuses(check, *args) -> bool:
    """Whether CHECK(*ARGS) refuses with NetleakError."""
    try:
        check(*args)
    except NetleakError:
        return True
    return False


# ---------- interface names ----------

# names the hook's annotation takes: stricter than the kernel
plain_ifaces = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}", fullmatch=True).filter(
    lambda s: s != "lo")

# interface names that surely do not exist here (checked by the tests)
ABSENT_PREFIX = "nlpt"
absent_ifaces = st.from_regex(r"nlpt[a-z0-9]{1,8}", fullmatch=True)

_bad_iface_char = st.sampled_from(list("/: \t\n\x7f\u00a0\u2028\x1b") + ["\x00"])

_bad_ifaces_all = st.one_of(
    st.sampled_from(["", ".", "..", "lo", "x" * 16, "\u00e9" * 8, "wg0 ", " wg0"]),
    st.builds(lambda a, c, b: a + c + b, plain_ifaces, _bad_iface_char,
              st.from_regex(r"[a-z0-9]{0,3}", fullmatch=True)),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=16,
            max_size=24),
)

# names interface_name refuses; those of bad_argv_ifaces can be argv words
bad_ifaces = _bad_ifaces_all
bad_argv_ifaces = _bad_ifaces_all.filter(lambda s: "\0" not in s)


# ---------- addresses and prefixes ----------

def _usable(a) -> bool:
    return not (a.is_loopback or a.is_unspecified or a.is_multicast)


def _plain_v6(a) -> bool:
    return a.version == 4 or a.ipv4_mapped is None


# unicast, not loopback, unspecified or multicast: public and private IPv4;
# global, unique local and link-local IPv6
v4_unicast = st.one_of(st.integers(0x01000000, 0x7EFFFFFF),
                       st.integers(0x80000000, 0xDFFFFFFF)).map(ipaddress.IPv4Address)
v6_unicast = st.one_of(st.integers(0x2000 << 112, (0x4000 << 112) - 1),
                       st.integers(0xFC00 << 112, (0xFE00 << 112) - 1),
                       st.integers(0xFE80 << 112, (0xFE80 << 112) + (1 << 64) - 1)).map(
    ipaddress.IPv6Address)
unicast = st.one_of(v4_unicast, v6_unicast)


def spelled(addr) -> st.SearchStrategy[str]:
    """Ways a user may write ADDR."""
    forms = {str(addr), addr.exploded}
    if addr.version == 6:
        forms.add(addr.exploded.upper())
    return st.sampled_from(sorted(forms))


unicast_text = unicast.flatmap(spelled)


def _not_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s.strip())
    except ValueError:
        return True
    return False


# words no one can take for an address (no '%' zones: see the zone tests)
not_addresses = st.one_of(
    st.sampled_from(["", " ", "resolver", "example.org", "192.0.2", "192.0.2.1/24",
                     "300.1.1.1", "2001:db8::g", "1.2.3.4:53", "01.2.3.4", "[::1]",
                     "fe80::1%", "0x7f000001"]),
    argv_text.filter(lambda s: "%" not in s).filter(_not_ip),
)
not_local = st.sampled_from(["127.0.0.1", "127.0.0.53", "127.255.255.254", "::1",
                             "0.0.0.0", "::", "224.0.0.251", "239.1.2.3", "ff02::1",
                             "::ffff:127.0.0.1", "::ffff:0.0.0.0"])


_MAPPED = ipaddress.ip_network("::ffff:0:0/96")


def _allow(pair) -> tuple[str, str]:
    addr, plen = pair
    return f"{addr}/{plen}", str(ipaddress.ip_network(f"{addr}/{plen}", strict=False))


def _mapped_allow(pair) -> tuple[str, str]:
    addr, plen = pair
    return (f"::ffff:{addr}/{96 + plen}",
            str(ipaddress.ip_network(f"{addr}/{plen}", strict=False)))


def _v6_allowable(pair) -> bool:
    net = ipaddress.ip_network(f"{pair[0]}/{pair[1]}", strict=False)
    return not (net.supernet_of(_MAPPED) or net.subnet_of(_MAPPED))


# (what a user writes for --allow, the prefix netleak should make of it)
allow_pairs = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.integers(1, 32)).map(_allow),
    st.tuples(st.ip_addresses(v=6), st.integers(1, 128)).filter(_v6_allowable).map(_allow),
    st.tuples(st.ip_addresses(v=4), st.integers(1, 32)).map(_mapped_allow),
    st.ip_addresses(v=4).map(lambda a: (str(a), f"{a}/32")),
)
allow_text = allow_pairs.map(lambda p: p[0])
not_prefixes = st.one_of(
    st.sampled_from(["", "lan", "192.168.1.0/33", "2001:db8::/129", "192.168.1.0/-1",
                     "192.168.1.0/24/8", "10.0.0.0/8.0", "/24"]),
    argv_text.filter(lambda s: "%" not in s).filter(
        lambda s: refuses(validate.allow_rules, [s])),
)
everything = st.sampled_from(["0.0.0.0/0", "::/0", "::/80", "::ffff:0:0/96",
                              "::ffff:1.2.3.4/96", "10.1.2.3/0"])


# ---------- cgroup paths and units ----------

cgroup_component = st.from_regex(r"[A-Za-z0-9_@:-][A-Za-z0-9_.@:-]{0,15}",
                                 fullmatch=True)
cgroup_rels = st.lists(cgroup_component, min_size=1, max_size=5).map("/".join).filter(
    lambda r: not ("/" + r).startswith("/sys/fs/cgroup"))

unit_names = st.from_regex(r"[A-Za-z0-9:_.\\@-]{1,60}", fullmatch=True)
# refused unit names, none of them ending in a newline (see the unit tests)
bad_unit_names = st.one_of(
    st.sampled_from(["", "a b", "a;rm", "a/b", "x" * 256, "$(id)", "*", "a\tb"]),
    st.builds(lambda a, c, b: a + c + b, unit_names, st.sampled_from(list(" /;$*'\"!?\t~")),
              unit_names),
)


# ---------- NETLEAK_* settings ----------

def _int_text(n: int) -> st.SearchStrategy[str]:
    forms = [str(n), hex(n), oct(n), f"{n:_}"]
    return st.sampled_from(forms + [f" {n} "])


@st.composite
def good_env(draw) -> tuple[dict, dict]:
    """Valid NETLEAK_* settings, and the Config attributes they give."""
    env: dict[str, str] = {}
    want: dict = {}

    def maybe(name, attr, value, text):
        if draw(st.booleans()):
            env[name] = draw(text) if isinstance(text, st.SearchStrategy) else text
            want[attr] = value

    mark = draw(st.integers(1, 0xFFFF)) << 16
    maybe("NETLEAK_MARK_BASE", "mark_base", mark, _int_text(mark))
    table = draw(st.integers(256, 0xFFFFFFFF - 64))
    maybe("NETLEAK_TABLE_BASE", "table_base", table, _int_text(table))
    prio = draw(st.integers(1, 32000))
    maybe("NETLEAK_RULE_PRIORITY", "rule_priority", prio, _int_text(prio))
    rate = draw(st.integers(0, 100000))
    maybe("NETLEAK_EVENT_RATE", "event_rate", rate, _int_text(rate))
    secs = draw(st.floats(0.1, 86400))
    maybe("NETLEAK_RECONCILE_SECONDS", "reconcile_seconds", secs, repr(secs))
    auto = draw(st.booleans())
    maybe("NETLEAK_AUTOSTART", "autostart", auto, "1" if auto else "0")
    for name, attr in (("NETLEAK_RUN_DIR", "run_dir"), ("NETLEAK_BPF_DIR", "bpf_dir"),
                       ("NETLEAK_LOG_FILE", "log_file")):
        value = draw(st.text(min_size=1, max_size=30))
        maybe(name, attr, value, value)
    parent = draw(cgroup_rels)
    maybe("NETLEAK_CGROUP_PARENT", "cgroup_parent", parent, parent)
    return env, want


def _refused_int(s: str) -> bool:
    try:
        int(s, 0)
    except ValueError:
        return True
    return False


def _refused_float(s: str) -> bool:
    try:
        return not 0.1 <= float(s) <= 86400
    except ValueError:
        return True


_bad_values = {
    "NETLEAK_MARK_BASE": st.one_of(
        st.sampled_from(["0", "-0x10000", "0x6e6c0001", "0x100000000", "1e6", "0x", "ten"]),
        st.integers(-2**40, 2**40).filter(
            lambda n: n & 0xFFFF or not 0 < n <= 0xFFFF0000).map(str),
        line_text.filter(bool).filter(_refused_int)),
    "NETLEAK_TABLE_BASE": st.one_of(
        st.sampled_from(["255", "0", "-1", str(0xFFFFFFFF), "010", "28200.0"]),
        st.integers(-2**40, 255).map(str), line_text.filter(bool).filter(_refused_int)),
    "NETLEAK_RULE_PRIORITY": st.one_of(
        st.sampled_from(["0", "32001", "-5", "1700x"]),
        st.integers(32001, 2**40).map(hex), line_text.filter(bool).filter(_refused_int)),
    "NETLEAK_EVENT_RATE": st.one_of(
        st.sampled_from(["-1", "100001", "fifty"]),
        st.integers(100001, 2**40).map(str), line_text.filter(bool).filter(_refused_int)),
    "NETLEAK_RECONCILE_SECONDS": st.one_of(
        st.sampled_from(["0", "0.05", "nan", "inf", "-1", "86401", "1e400", "1s", "0x10"]),
        line_text.filter(bool).filter(_refused_float)),
    "NETLEAK_AUTOSTART": line_text.filter(lambda s: s not in ("", "0", "1")),
    "NETLEAK_CGROUP_PARENT": st.sampled_from(["/", "//", ".", "..", "a/../b", "./x",
                                              "x/.", "/../netleak"]),
}
CONFIG_VARIABLES_WITH_CHECKS = sorted(_bad_values)


@st.composite
def bad_env(draw) -> tuple[dict, str]:
    """NETLEAK_* settings with exactly one bad value, and its variable."""
    env, _ = draw(good_env())
    name = draw(st.sampled_from(CONFIG_VARIABLES_WITH_CHECKS))
    env[name] = draw(_bad_values[name])
    return env, name


# ---------- OCI state ----------

container_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", fullmatch=True)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner,
                                                                 max_size=3),
    max_leaves=8)


@st.composite
def good_states(draw) -> dict:
    """OCI state documents netleak-hook takes."""
    doc: dict = {"id": draw(container_ids)}
    if draw(st.booleans()):
        doc["pid"] = draw(st.integers(0, oci.MAX_PID - 1))
    if draw(st.booleans()):
        doc["bundle"] = draw(st.text(max_size=40))
    if draw(st.booleans()):
        doc["status"] = draw(st.sampled_from(["creating", "created", "running",
                                              "stopped", ""]) | st.text(max_size=10))
    ann = draw(st.none() | st.dictionaries(st.text(max_size=20), st.text(max_size=20),
                                           max_size=4))
    if ann is not None or draw(st.booleans()):
        doc["annotations"] = ann
    for k, v in draw(st.dictionaries(st.sampled_from(["ociVersion", "x-extra", "root"]),
                                     json_values, max_size=2)).items():
        doc[k] = v
    return doc


@st.composite
def spoiled_states(draw) -> dict:
    """A good state document with one field replaced by a random value."""
    doc = draw(good_states())
    key = draw(st.sampled_from(["id", "pid", "bundle", "annotations", "status"]))
    doc[key] = draw(json_values)
    return doc


def encode(doc) -> bytes:
    return json.dumps(doc).encode()


# ---------- systemd-resolved link state ----------

def resolved_usable(a) -> bool:
    return _usable(a) and not a.is_link_local and _plain_v6(a)


@st.composite
def resolved_tokens(draw) -> tuple[str, str | None]:
    """One SERVERS= entry as systemd-resolved writes it, and the address
    netleak should take from it (None: not usable, e.g. another port)."""
    a = draw(st.ip_addresses().filter(_plain_v6))
    port = draw(st.sampled_from([None, 53, 53, 5353, 853]))
    name = draw(st.sampled_from(["", "#dns.example", "#a"]))
    if a.version == 4:
        token = str(a) if port is None else f"{a}:{port}"
    else:
        zone = draw(st.sampled_from(["", "%wg0", "%3"]))
        token = f"{a}{zone}" if port is None else f"[{a}{zone}]:{port}"
    usable = resolved_usable(a) and port in (None, 53)
    return token + name, str(a) if usable else None
