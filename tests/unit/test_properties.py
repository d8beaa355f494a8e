"""Properties of every parser of outside input (OCI state and annotations,
interface names, addresses and prefixes, cgroup paths, units and PIDs,
NETLEAK_* settings, the state file, systemd-resolved's link files, and the
command lines of netleak and netleak-exec): anything malformed is refused
with NetleakError, one line, exit status 125 (2 for click's usage errors),
before anything changes; what is well formed is accepted and round-trips.

The command-line properties run as root in CI: every case is one that must
be refused before any action, and the actions themselves are replaced by a
tripwire, so a case that got through would fail here instead of acting.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import ipaddress
import json
import os
import re
import socket
import subprocess
import sys
from unittest import mock

import pytest
from tests.helpers import cli_runner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from netleak_hook import cli, client, execcmd, hook, hookspec, execsetup
from netleak_hook.core import dnsconf, oci
from netleak_hook.core import targets, validate
from netleak_hook.core.config import VARIABLES, Config
from netleak_hook.core.errors import NetleakError
from netleak_hook.kernel import cgroupfs
from netleak_hook.core.plan import Binding
from netleak_hook.core.state import STATE_VERSION, Session, State, from_json, to_json
from netleak_hook.rundir.store import Store

from . import strategies as S

PROPS = settings(database=None, derandomize=True, deadline=None, max_examples=60,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEW = settings(PROPS, max_examples=40)

MOUNTS = ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")


def one_line(msg: str) -> bool:
    return bool(msg.strip()) and "\n" not in msg and "\r" not in msg


def refused(fn, *args, **kw) -> NetleakError:
    """FN(*ARGS) refuses: NetleakError, status 125, one line."""
    with pytest.raises(NetleakError) as e:
        fn(*args, **kw)
    assert e.value.exit_status == 125
    assert one_line(e.value.message), repr(e.value.message)
    return e.value


def message(fn, *args, **kw) -> str:
    try:
        fn(*args, **kw)
    except NetleakError as e:
        return e.message
    raise AssertionError(f"{fn.__name__}{args} accepted")


def dedupe(items) -> list:
    out: list = []
    for i in items:
        if i not in out:
            out.append(i)
    return out


# ---------- interface names ----------

def kernel_would_take(name: str) -> bool:
    """The rules of validate.interface_name, written out."""
    return (0 < len(name.encode("utf-8", "surrogateescape")) < 16
            and name not in (".", "..", "lo")
            and not any(c in "/:" or c.isspace() or not c.isprintable() for c in name))


@PROPS
@given(st.one_of(st.text(max_size=20), S.plain_ifaces, S.bad_ifaces))
def test_interface_name_accepts_exactly_what_the_kernel_would(name):
    """A name is taken unchanged iff it is 1-15 bytes with no '/', ':',
    space or control character and is not '.', '..' or 'lo'; otherwise one
    line says why."""
    if kernel_would_take(name):
        assert validate.interface_name(name) == name
    else:
        refused(validate.interface_name, name)


@PROPS
@given(st.integers(0xD800, 0xDC7F).map(chr))
@example("\ud800")
def test_interface_name_refuses_lone_surrogates(c):
    """A name with a surrogate no byte decodes to (JSON can carry one) is
    refused in one line, not with an encoding error."""
    refused(validate.interface_name, "wg" + c)


# ---------- OCI state ----------

def annotated(annotations: dict, **doc) -> oci.ContainerState:
    return oci.parse_state(S.encode({"id": "c0ffee", "pid": 4242, **doc,
                                     "annotations": annotations}))


@PROPS
@given(st.one_of(st.text(max_size=20), S.plain_ifaces, S.bad_ifaces))
def test_annotation_interface_is_a_plain_name_or_refused(value):
    """io.netleak.interface is taken iff it is a plain name (ASCII letters,
    digits, _ . @ -, 1-15 characters, not lo); a refusal names the
    annotation in one line."""
    st_ = annotated({oci.ANNOTATION_IFACE: value})
    if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,14}", value) and value != "lo":
        assert st_.interface() == value
    else:
        e = refused(st_.interface)
        assert e.message.startswith(f"annotation {oci.ANNOTATION_IFACE}=")


@PROPS
@given(st.dictionaries(st.text(max_size=20).filter(lambda k: not k.startswith("io.netleak")),
                       st.text(max_size=20), max_size=4))
def test_no_netleak_annotation_asks_for_nothing(annotations):
    """Other annotations are none of netleak's business."""
    st_ = annotated(annotations)
    assert st_.interface() is None and st_.guards() == {}


def _annotation_list(draw, items):
    sep = st.sampled_from([",", ", ", " ,", ",,"])
    out = ""
    for i, item in enumerate(items):
        out += (draw(sep) if i else "") + item
    return out


@PROPS
@given(st.data(), st.lists(S.unicast_text, max_size=4), st.lists(S.allow_text, max_size=8))
def test_annotation_guards_mean_what_the_options_mean(data, dns, allow):
    """io.netleak.dns and io.netleak.allow, comma-separated, give what
    --dns and --allow give for the same values."""
    ann = {oci.ANNOTATION_DNS: _annotation_list(data.draw, dns),
           oci.ANNOTATION_ALLOW: _annotation_list(data.draw, allow)}
    assert annotated(ann).guards() == {"dns": list(validate.dns_servers(dns)),
                                       "allow": list(validate.allow_rules(allow))}


_BAD_ANNOTATION_ITEMS = {
    oci.ANNOTATION_DNS: (st.one_of(S.not_addresses, S.not_local), S.unicast_text),
    oci.ANNOTATION_ALLOW: (st.one_of(S.not_prefixes, S.everything), S.allow_text)}


@PROPS
@given(st.sampled_from(sorted(_BAD_ANNOTATION_ITEMS)), st.data())
def test_annotation_guards_refusals_name_the_annotation(key, data):
    """A bad resolver or prefix in an annotation is refused in one line that
    names the annotation."""
    bad, good = _BAD_ANNOTATION_ITEMS[key]
    items = data.draw(st.lists(good, max_size=2))
    items.insert(data.draw(st.integers(0, len(items))), data.draw(
        bad.filter(lambda b: b.strip() and "," not in b)))
    st_ = annotated({key: ",".join(items)})
    assert refused(st_.guards).message.startswith(f"annotation {key} ")


def _well_typed(st_: oci.ContainerState) -> None:
    assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", st_.id)
    assert type(st_.pid) is int and 0 <= st_.pid < oci.MAX_PID
    assert isinstance(st_.bundle, str) and isinstance(st_.status, str)
    assert all(isinstance(k, str) and isinstance(v, str)
               for k, v in st_.annotations.items())


@PROPS
@given(S.good_states())
def test_good_state_round_trips(doc):
    """A well-formed state gives back its id, pid, bundle, status and
    annotations; unknown fields are ignored."""
    st_ = oci.parse_state(S.encode(doc))
    assert (st_.id, st_.pid, st_.bundle, st_.status, st_.annotations) == (
        doc["id"], doc.get("pid", 0), doc.get("bundle", ""), doc.get("status", ""),
        doc.get("annotations") or {})
    assert st_.short_id == doc["id"][:12]


@PROPS
@given(st.one_of(S.spoiled_states().map(S.encode), S.json_values.map(S.encode),
                 st.binary(max_size=64)))
def test_any_stdin_is_refused_in_one_line_or_well_typed(raw):
    """Whatever is on stdin: NetleakError in one line, or a state whose
    fields have the types and ranges the hook relies on."""
    try:
        st_ = oci.parse_state(raw)
    except NetleakError as e:
        assert one_line(e.message) and e.exit_status == 125
    else:
        _well_typed(st_)


@FEW
@given(st.integers(20_000, 100_000), st.sampled_from([b"[", b'{"a":']))
@example(100_000, b"[")
def test_deeply_nested_state_is_refused(depth, opener):
    """However deep the JSON nests (within the size limit), it is refused in
    one line."""
    refused(oci.parse_state, opener * depth)


@PROPS
@given(S.container_ids)
@example("abc")
def test_container_id_with_a_trailing_newline_is_refused(cid):
    """An id is letters, digits, _ . - only: a trailing newline is refused."""
    refused(oci.parse_state, S.encode({"id": cid + "\n", "pid": 1}))


@PROPS
@given(S.good_states(), st.lists(st.one_of(st.sampled_from(oci.STAGES), st.text(max_size=12)),
                                 max_size=3))
def test_stage_is_a_known_one_or_usage(doc, argv):
    """The stage is the one named (or taken from the status); anything else
    is a one-line usage; a set-up stage needs a pid."""
    st_ = oci.parse_state(S.encode(doc))
    if len(argv) > 1 or (argv and argv[0] not in oci.STAGES):
        assert "usage" in refused(oci.stage, argv, st_).message
        return
    want = argv[0] if argv else ("poststop" if st_.status == "stopped" else "createRuntime")
    if want != "poststop" and st_.pid == 0:
        refused(oci.stage, argv, st_)
    else:
        assert oci.stage(argv, st_) == want


# ---------- what changes nothing: the sandbox and the tripwire ----------

class ReachedAction(AssertionError):
    """A case that should have been refused got to a real action."""


def _tripwire(name):
    def trip(*a, **kw):
        raise ReachedAction(f"{name} reached with {a!r}")
    return trip


@contextlib.contextmanager
def tripwire():
    """Every action the commands take (daemon requests and start, cgroup
    creation, exec, hook writing) raises ReachedAction instead."""
    with contextlib.ExitStack() as stack:
        for target, name in ((client, "request"), (client, "request_starting_daemon"),
                             (client, "ensure_daemon"), (execsetup, "open_exec_session"),
                             (cgroupfs, "make"), (cgroupfs, "join"), (hook, "protect"),
                             (hookspec, "write"), (hookspec, "build_zipapp"),
                             (os, "execv")):
            stack.enter_context(mock.patch.object(target, name, _tripwire(name)))
        yield


class Sandbox:
    """A run directory, bpf directory and hooks directory in a tmp dir,
    and a cgroup parent nobody uses: nothing in them may change."""

    def __init__(self, root) -> None:
        self.root = str(root)
        self.run = os.path.join(self.root, "run")
        os.makedirs(self.run)
        os.makedirs(os.path.join(self.root, "bpf"))
        os.makedirs(os.path.join(self.root, "hooks"))
        with open(os.path.join(self.run, "state.json"), "w") as f:
            f.write(to_json(State()))
        with open(os.path.join(self.run, "hook.log"), "w") as f:
            f.write("an earlier line\n")
        self.parent = f"netleak-proptest-{os.getpid()}"
        self.env = {"NETLEAK_RUN_DIR": self.run,
                    "NETLEAK_BPF_DIR": os.path.join(self.root, "bpf"),
                    "NETLEAK_CGROUP_PARENT": self.parent,
                    "NETLEAK_AUTOSTART": "0",
                    "PATH": "/usr/bin:/bin"}
        try:
            self.cgroot: str | None = cgroupfs.find_cgroup2()
        except (OSError, NetleakError):
            self.cgroot = None

    def snapshot(self) -> dict:
        seen = {}
        for d, dirs, files in os.walk(self.root):
            for n in dirs + files:
                p = os.path.join(d, n)
                s = os.lstat(p)
                digest = ""
                if os.path.isfile(p):
                    with open(p, "rb") as f:
                        digest = hashlib.sha256(f.read()).hexdigest()
                seen[os.path.relpath(p, self.root)] = (s.st_mode, s.st_size,
                                                       s.st_mtime_ns, digest)
        return seen

    @contextlib.contextmanager
    def unchanged(self):
        """The body changes nothing here, and makes no cgroup."""
        before = self.snapshot()
        with tripwire():
            yield
        assert self.snapshot() == before
        if self.cgroot:
            assert not os.path.exists(os.path.join(self.cgroot, self.parent))


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    box = Sandbox(tmp_path_factory.mktemp("netleak-props"))
    present = {name for _, name in socket.if_nameindex()}
    assert not any(n.startswith(S.ABSENT_PREFIX) for n in present), present
    return box


# ---------- the hook, before anything ----------

@st.composite
def refused_hook_input(draw):
    """A state the hook refuses: malformed, or with a bad annotation."""
    kind = draw(st.sampled_from(["state", "iface", "dns", "allow"]))
    if kind == "state":
        raw = draw(st.one_of(S.spoiled_states().map(S.encode), st.binary(max_size=32)))
        if not S.refuses(oci.parse_state, raw):
            raw = b"[" + raw
        return raw
    ann = {oci.ANNOTATION_IFACE: draw(S.plain_ifaces)}
    if kind == "iface":
        ann[oci.ANNOTATION_IFACE] = draw(S.bad_ifaces)
    elif kind == "dns":
        ann[oci.ANNOTATION_DNS] = draw(S.not_addresses.filter(
            lambda s: s.strip() and "," not in s) | S.not_local)
    else:
        ann[oci.ANNOTATION_ALLOW] = draw(S.not_prefixes.filter(
            lambda s: s.strip() and "," not in s) | S.everything)
    return S.encode({"id": draw(S.container_ids), "pid": draw(st.integers(1, 99999)),
                     "status": "creating", "annotations": ann})


@FEW
@given(refused_hook_input(), st.sampled_from([[], ["createRuntime"], ["prestart"]]))
def test_hook_refuses_before_anything(sandbox, raw, argv):
    """netleak-hook refuses a bad state or annotation in one line before it
    touches the run directory, a cgroup or the daemon."""
    with sandbox.unchanged():
        refused(hook.run, argv, raw, dict(sandbox.env))


# ---------- --via, --dns, --allow, --block ----------

@PROPS
@given(st.none() | S.v4_unicast, st.none() | S.v6_unicast, st.booleans(), st.data())
def test_gateways_one_per_family(v4, v6, swap, data):
    """--via takes at most one unicast address per family, in any order and
    spelling, and gives it back canonical."""
    given_ = [data.draw(S.spelled(a)) for a in (v4, v6) if a is not None]
    if swap:
        given_.reverse()
    assert validate.gateways(given_) == (v4 and str(v4), v6 and str(v6))


@PROPS
@given(st.lists(S.v4_unicast | S.v6_unicast, max_size=2),
       st.one_of(S.not_addresses, S.not_local.filter(lambda s: "ffff" not in s)),
       st.integers(0, 2))
def test_gateways_refuse_what_is_no_unicast_address(good, bad, at):
    """A --via that is not a unicast address is refused in one line, wherever
    it stands among good ones."""
    values = [str(a) for a in good]
    values.insert(min(at, len(values)), bad)
    assert "--via" in refused(validate.gateways, values).message


@PROPS
@given(st.lists(S.v4_unicast, min_size=2, max_size=3) | st.lists(S.v6_unicast, min_size=2,
                                                                   max_size=3))
def test_gateways_refuse_two_of_a_family(values):
    """Two gateways of one family are refused, even the same one twice."""
    assert "given twice" in refused(validate.gateways, [str(a) for a in values]).message


@st.composite
def dns_pairs(draw):
    """(what a user writes for --dns, the resolver netleak should make of it)."""
    a = draw(S.unicast)
    text = draw(S.spelled(a))
    if a.version == 4 and draw(st.booleans()):
        text = f"::ffff:{a}"
    return draw(st.sampled_from([text, f" {text}", f"{text} "])), str(a)


@PROPS
@given(st.lists(dns_pairs(), max_size=6), st.sampled_from(["--dns", "annotation x"]))
def test_dns_servers_canonical_deduplicated_at_most_four(pairs, what):
    """--dns values come back canonical (v4-mapped as IPv4), without
    repeats, in order; more than four resolvers are refused; the result
    is taken again unchanged."""
    values = [p[0] for p in pairs]
    want = dedupe(p[1] for p in pairs)
    if len(want) > validate.MAX_DNS:
        assert "at most" in refused(validate.dns_servers, values, what).message
        return
    got = validate.dns_servers(values, what)
    assert list(got) == want
    assert validate.dns_servers(list(got), what) == got


@PROPS
@given(st.lists(S.unicast_text, max_size=2), st.one_of(S.not_addresses, S.not_local),
       st.integers(0, 2), st.sampled_from(["--dns", "annotation io.netleak.dns"]))
def test_dns_servers_refuse_what_is_no_resolver(good, bad, at, what):
    """A --dns value that is no address, or loopback, unspecified or
    multicast, is refused in one line that names the option."""
    values = list(good)
    values.insert(min(at, len(values)), bad)
    assert refused(validate.dns_servers, values, what).message.startswith(what + " ")


@PROPS
@given(st.lists(S.allow_pairs, max_size=10), st.sampled_from(["--allow", "annotation y"]))
def test_allow_rules_canonical_deduplicated_at_most_eight(pairs, what):
    """--allow values come back as canonical prefixes (host bits cleared,
    v4-mapped as IPv4), without repeats, in order; more than eight are
    refused; the result is taken again unchanged."""
    values = [p[0] for p in pairs]
    want = dedupe(p[1] for p in pairs)
    if len(want) > validate.MAX_ALLOW:
        assert "at most" in refused(validate.allow_rules, values, what).message
        return
    got = validate.allow_rules(values, what)
    assert list(got) == want
    assert validate.allow_rules(list(got), what) == got
    for text, prefix in pairs:
        addr = ipaddress.ip_address(text.split("/")[0])
        assert (addr.ipv4_mapped or addr if addr.version == 6 else addr) in \
            ipaddress.ip_network(prefix)


@PROPS
@given(st.lists(S.allow_text, max_size=2), st.one_of(S.not_prefixes, S.everything),
       st.integers(0, 2), st.sampled_from(["--allow", "annotation io.netleak.allow"]))
def test_allow_rules_refuse_garbage_and_everything(good, bad, at, what):
    """A value that is no prefix, or that covers everything (or all of IPv4
    as ::ffff:0:0/96), is refused in one line that names the option."""
    values = list(good)
    values.insert(min(at, len(values)), bad)
    assert refused(validate.allow_rules, values, what).message.startswith(what + " ")


def _covered(dns, allow) -> bool:
    nets = [ipaddress.ip_network(p) for p in allow]
    return all(any(ipaddress.ip_address(d) in n for n in nets) for d in dns)


@PROPS
@given(st.lists(S.unicast_text, max_size=3), st.lists(S.allow_text, max_size=3),
       st.booleans(), st.lists(S.v4_unicast.map(str), max_size=1))
def test_guard_request_is_the_checked_options(dns, allow, block, via):
    """netleak-exec's and attach's guards are --dns and --allow as checked;
    --block refuses --via, and --dns unless --allow covers it."""
    d, a = validate.dns_servers(dns), validate.allow_rules(allow)
    if block and via:
        assert "--via" in refused(validate.guard_request, dns, allow, block, via).message
    elif block and not _covered(d, a):
        assert "--block" in refused(validate.guard_request, dns, allow, block, via).message
    else:
        assert validate.guard_request(dns, allow, block, via) == {
            "dns": list(d), "allow": list(a), "block": block}


@PROPS
@given(st.sampled_from(["fe80::1", "ff02::1", "2001:db8::1", "::"]),
       st.text(st.characters(blacklist_characters="%"), min_size=1, max_size=8),
       st.sampled_from(["dns", "via", "allow"]))
@example("ff02::1", "x\ny", "dns")
def test_addresses_with_a_zone_are_one_line_values(addr, zone, which):
    """An address with a zone is refused in one line, or taken as a value
    with no whitespace or control characters in it."""
    text = f"{addr}%{zone}"
    check = {"dns": validate.dns_servers, "via": validate.gateways,
             "allow": validate.allow_rules}[which]
    if which == "allow":
        text += "/64"
    try:
        got = check([text])
    except NetleakError as e:
        assert one_line(e.message), repr(e.message)
    else:
        assert all(v is None or all(c.isprintable() and not c.isspace() for c in v)
                   for v in got), got


# ---------- cgroup paths, units, PIDs ----------

_path_part = st.one_of(S.cgroup_component, st.sampled_from(["", ".", "..", "sys", "fs",
                                                             "cgroup", "unified"]),
                       S.line_text.filter(lambda s: "/" not in s))


@PROPS
@given(st.lists(_path_part, max_size=6).map("/".join), st.sampled_from(["", "/"]),
       st.sampled_from(MOUNTS))
def test_cgroup_rel_stays_under_the_mount(path, lead, mount):
    """Any --cgroup is refused in one line, or gives a clean relative path
    ('' for the root) that cannot leave the cgroup2 mount."""
    path = lead + path
    try:
        rel = targets.cgroup_rel(path, mount)
    except NetleakError as e:
        assert one_line(e.message) and e.exit_status == 125
        return
    assert ".." not in path.split("/") and path and "\0" not in path
    if rel:
        assert not rel.startswith("/") and not rel.endswith("/") and "//" not in rel
        assert not {"", ".", ".."} & set(rel.split("/"))
    inside = os.path.normpath(os.path.join(mount, rel))
    assert inside == mount or inside.startswith(mount + "/")


@PROPS
@given(S.cgroup_rels, st.sampled_from(MOUNTS), st.data())
def test_cgroup_rel_every_spelling_gives_the_same_path(rel, mount, data):
    """'/a/b', 'a/b', 'a/b/', '//a/./b' and '<mount>/a/b' name one cgroup."""
    slashed = "/" + "/".join(data.draw(st.sampled_from([p, p + "/.", p + "/"]))
                             for p in rel.split("/"))
    for given_ in ("/" + rel, rel, rel + "/", slashed, f"{mount}/{rel}",
                   f"{mount}//{rel}/"):
        assert targets.cgroup_rel(given_, mount) == rel, given_
    for root in ("/", ".", mount, mount + "/"):
        assert targets.cgroup_rel(root, mount) == ""


@PROPS
@given(S.line_text, st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from(MOUNTS))
@example("x", "\n", "/sys/fs/cgroup/unified")
def test_cgroup_rel_refusal_is_one_line_whatever_the_path(tail, brk, mount):
    """A path that is not under the mount is refused in one line, whatever
    characters it holds."""
    try:
        targets.cgroup_rel(f"/sys/fs/cgroup/{tail}{brk}y", mount)
    except NetleakError as e:
        assert one_line(e.message), repr(e.message)


@PROPS
@given(st.one_of(S.unit_names, S.bad_unit_names, S.argv_text))
def test_unit_name_is_systemds_or_refused(name):
    """A unit name of systemd's characters (1-255) is taken, '.service'
    added when it has no type; anything else is refused in one line."""
    if re.fullmatch(r"[A-Za-z0-9:_.\\@-]{1,255}", name):
        unit = targets.unit_name(name)
        assert unit.endswith(targets.UNIT_SUFFIXES)
        assert unit == name or unit == name + ".service"
        assert targets.unit_name(unit) == unit
    else:
        assert "not a systemd unit name" in refused(targets.unit_name, name).message


@PROPS
@given(S.unit_names)
@example("foo")
def test_unit_name_with_a_trailing_newline_is_refused(name):
    """A trailing newline is no character of a unit name."""
    refused(targets.unit_name, name + "\n")


_proc_line = st.tuples(st.sampled_from(["0", "1", "12", "x"]),
                       st.sampled_from(["", "cpu,cpuacct", "name=systemd"]),
                       S.line_text.filter(lambda s: "\x00" not in s))


@PROPS
@given(st.integers(1, 1 << 22), st.lists(_proc_line, max_size=4), st.booleans())
def test_pid_cgroup_is_the_v2_line(pid, lines, newline):
    """The cgroup of --pid is the path of the first '0::' line of
    /proc/PID/cgroup; without one, a one-line refusal."""
    text = "\n".join(f"{h}:{c}:{p}" for h, c, p in lines) + ("\n" if newline else "")
    read_paths = []

    def read(path):
        read_paths.append(path)
        return text

    v2 = [p for h, c, p in lines if h == "0" and c == ""]
    if v2:
        assert targets.pid_cgroup(pid, read) == v2[0]
    else:
        assert "no cgroup v2" in refused(targets.pid_cgroup, pid, read).message
    assert read_paths == [f"/proc/{pid}/cgroup"]


@PROPS
@given(st.integers(-(1 << 40), 0) | st.integers(1, 1 << 40),
       st.sampled_from([FileNotFoundError(), ProcessLookupError(), PermissionError(13, "x"),
                        OSError(5, "I/O error"), None]))
def test_pid_cgroup_refusals(pid, failure):
    """A PID <= 0 is refused without reading anything; a process that is
    gone or unreadable is refused in one line."""
    def read(path):
        assert pid > 0, "read for a PID <= 0"
        if failure is None:
            return "1:name=systemd:/a\n"
        raise failure

    refused(targets.pid_cgroup, pid, read)


@PROPS
@given(S.cgroup_rels, st.sampled_from([c for c in S.LINE_BREAKS if c not in "\r\n"]))
@example("x", "\u2028")
def test_pid_cgroup_reads_lines_as_the_kernel_writes_them(rel, brk):
    """Only '\\n' ends a line of /proc/PID/cgroup (as cgroupfs.of_pid reads
    it): any other character is part of the path."""
    path = f"/{rel}{brk}y"
    assert targets.pid_cgroup(7, lambda p: f"0::{path}\n") == path


@PROPS
@given(st.none() | S.line_text, st.none() | st.integers(-5, 5), st.none() | S.line_text)
def test_resolve_wants_exactly_one_target(cgroup, pid, unit):
    """--cgroup, --pid and --unit: exactly one, else a one-line refusal
    that asks nothing of /proc or systemd."""
    given_ = [x for x in (cgroup, pid, unit) if x is not None]
    if len(given_) == 1:
        return

    def never(*a):
        raise AssertionError("looked up a target that should have been refused")

    e = refused(targets.resolve, "/sys/fs/cgroup", cgroup=cgroup, pid=pid, unit=unit,
                run=never, read=never)
    assert "exactly one" in e.message


@PROPS
@given(S.unit_names, st.integers(-1, 3),
       st.tuples(S.line_text, st.sampled_from(["", "\n"])).map("".join),
       st.text(max_size=60), st.sampled_from(MOUNTS))
def test_unit_cgroup_any_systemctl_answer(unit, rc, out, err, mount):
    """Whatever systemctl prints, --unit gives its cgroup (stdout) or a
    one-line refusal."""
    def run(argv):
        assert argv[:4] == ["systemctl", "show", "--property=ControlGroup", "--value"]
        return subprocess.CompletedProcess(argv, rc, out, err)

    try:
        got = targets.resolve(mount, unit=unit, run=run)
    except NetleakError as e:
        assert one_line(e.message) and e.exit_status == 125
    else:
        assert rc == 0 and got == targets.cgroup_rel(out.strip(), mount)


# ---------- NETLEAK_* settings ----------

@PROPS
@given(S.good_env(), st.dictionaries(st.text(max_size=12).filter(lambda k: k not in VARIABLES),
                                     st.text(max_size=12), max_size=3))
def test_config_round_trips(good, others):
    """Valid NETLEAK_* settings, in any number base, give those values; the
    rest are defaults and other variables are ignored."""
    env, want = good
    cfg = Config.from_env({**others, **env})
    expected = Config(**want)
    assert cfg == expected
    cfg.check()


@PROPS
@given(S.bad_env())
def test_config_refusal_names_the_variable(case):
    """One bad NETLEAK_* value is refused in one line that names it."""
    env, name = case
    assert refused(Config.from_env, env).message.startswith(name + "=")


@PROPS
@given(st.dictionaries(st.sampled_from(VARIABLES), S.line_text, max_size=4))
def test_config_any_values_checked_or_refused(env):
    """Whatever NETLEAK_* holds: a Config that passes its own check, or a
    one-line refusal naming a variable."""
    try:
        cfg = Config.from_env(env)
    except NetleakError as e:
        assert one_line(e.message)
        assert e.message.split("=", 1)[0] in VARIABLES
    else:
        cfg.check()


# ---------- the state file ----------

_ids = st.from_regex(r"[0-9a-f]{10}", fullmatch=True)
_sessions = st.builds(
    Session, id=_ids, iface=S.plain_ifaces | st.just(""), cgroup=S.cgroup_rels,
    cgroup_id=st.integers(1, 2**63), pinset=st.text(max_size=20), owned=st.booleans(),
    pid=st.integers(0, 1 << 22), created=st.floats(0, 2e9), committed=st.booleans(),
    container=S.container_ids | st.just(""), block=st.booleans(),
    dns=st.lists(S.unicast.map(str), max_size=4).map(tuple),
    dns_from=st.sampled_from(["", "user", "interface"]),
    allow=st.lists(S.allow_pairs.map(lambda p: p[1]), max_size=3).map(tuple),
    mark=st.integers(0, 0xFFFFFFFF))
_bindings = st.builds(
    Binding, iface=S.plain_ifaces, slot=st.integers(0, 63), mark=st.integers(1, 0xFFFFFFFF),
    table=st.integers(256, 0xFFFFFFFF), via4=st.none() | S.v4_unicast.map(str),
    via6=st.none() | S.v6_unicast.map(str), user_via4=st.booleans(), user_via6=st.booleans())


@FEW
@given(st.lists(_sessions, max_size=3), st.lists(_bindings, max_size=3))
def test_state_file_round_trips(sessions, bindings):
    """What the daemon writes, it reads back the same."""
    s = State()
    for b in bindings:
        s = s.with_binding(b)
    for x in sessions:
        s = s.with_session(x)
    assert from_json(to_json(s)) == s


_state_docs = st.one_of(
    S.json_values,
    st.fixed_dictionaries({"version": st.just(STATE_VERSION)},
                          optional={"bindings": S.json_values, "sessions": S.json_values}),
    st.fixed_dictionaries({"version": st.just(STATE_VERSION),
                           "sessions": st.dictionaries(_ids, S.json_values, max_size=2)}),
)


@PROPS
@given(st.one_of(_state_docs.map(json.dumps), st.text(max_size=60)))
def test_state_file_bad_content_loads_as_a_state(text):
    """A corrupted state file never stops the reader: it loads as a State
    (empty when it makes no sense)."""
    assert isinstance(from_json(text), State)


def _load(tmp_path_factory, raw: bytes) -> State:
    """Store.load of a state file holding RAW; the file must stay as it was."""
    d = tmp_path_factory.mktemp("store")
    with open(d / "state.json", "wb") as f:
        f.write(raw)
    store = Store(str(d))
    try:
        return store.load()
    finally:
        store.close()
        assert os.listdir(d) == ["state.json"] and (d / "state.json").read_bytes() == raw


@FEW
@given(st.text(max_size=80).map(str.encode)
       | _state_docs.map(lambda d: json.dumps(d).encode()))
def test_store_load_reads_without_writing(tmp_path_factory, raw):
    """Store.load of any text gives a State and changes no file."""
    assert isinstance(_load(tmp_path_factory, raw), State)


@FEW
@given(st.binary(min_size=1, max_size=40).filter(lambda b: not _utf8(b)))
@example(b"\xff")
def test_store_load_of_undecodable_bytes(tmp_path_factory, raw):
    """A state file that is not UTF-8 loads as an empty State too."""
    assert _load(tmp_path_factory, raw) == State()


def _utf8(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@FEW
@given(st.sampled_from(["deep", "digits"]), st.integers(0, 10))
@example("deep", 0)
def test_state_file_hostile_content_loads_as_a_state(kind, extra):
    """A state file built to break the parser loads as a State too."""
    text = ("[" * (100_000 + extra) if kind == "deep" else
            '{"version": 1, "sessions": ' + "9" * (5000 + extra) + "}")
    assert isinstance(from_json(text), State)


# ---------- systemd-resolved's link state ----------

@PROPS
@given(st.lists(S.resolved_tokens(), max_size=6),
       st.lists(st.sampled_from(["LLMNR=yes", "DOMAINS=example.org", "NTP=192.0.2.1",
                                 "# comment", ""]), max_size=3))
def test_resolved_servers_round_trip(tokens, other):
    """The servers of a SERVERS= line come back canonical, in order, without
    repeats: those on port 53 that are not loopback, link-local, multicast or
    unspecified; zones and names are dropped."""
    text = "\n".join(other + ["SERVERS=" + " ".join(t for t, _ in tokens)]) + "\n"
    want = dedupe(a for _, a in tokens if a is not None)
    assert list(dnsconf.parse_link_state(text)) == want


@PROPS
@given(st.text(max_size=120) | st.lists(S.line_text, max_size=4).map(
    lambda ws: "SERVERS=" + " ".join(ws)))
def test_resolved_any_file_gives_usable_servers(text):
    """Whatever the file holds, the result is distinct, canonical, usable
    addresses."""
    got = dnsconf.parse_link_state(text)
    assert len(set(got)) == len(got)
    for a in got:
        addr = ipaddress.ip_address(a)
        assert str(addr) == a
        assert not (addr.is_loopback or addr.is_unspecified or addr.is_multicast
                    or addr.is_link_local)


@FEW
@given(st.binary(max_size=200), st.integers(0, 4))
def test_resolved_file_read_never_fails(tmp_path_factory, raw, limit):
    """interface_servers reads any file (or none) without failing, and gives
    at most LIMIT servers."""
    root = tmp_path_factory.mktemp("netif")
    (root / "7").write_bytes(raw)
    got = dnsconf.interface_servers(7, str(root), limit)
    assert isinstance(got, tuple) and len(got) <= limit
    assert dnsconf.interface_servers(8, str(root), limit) == ()


@PROPS
@given(st.sampled_from(["127.0.0.1", "127.0.0.53", "0.0.0.0", "192.0.2.53"]))
@example("127.0.0.1")
def test_resolved_servers_are_ones_dns_would_take(v4):
    """Every server taken from systemd-resolved is one --dns would take, as
    it is."""
    got = dnsconf.parse_link_state(f"SERVERS=::ffff:{v4}\n")
    assert validate.dns_servers(list(got)) == got


# ---------- netleak-exec ----------

_EXEC_LONG = ["help", "user=", "via=", "version", "dump-bpf", "dns=", "allow=", "block", "proxy=",
              "proxy-file=", "keep-fds"]


def _unknown_long(tok: str) -> bool:
    name = tok[2:].split("=", 1)[0]
    return not any(o.rstrip("=").startswith(name) for o in _EXEC_LONG)


_unknown_options = st.one_of(
    st.from_regex(r"--[e-z][a-z-]{0,8}", fullmatch=True).filter(_unknown_long),
    st.from_regex(r"--nlpt-[a-z]{1,6}", fullmatch=True),
    st.from_regex(r"-[a-gi-tv-zA-Z0-9]", fullmatch=True))


def _options(draw, via, dns, allow, block, user):
    """The options in some order and spelling; repeated ones keep theirs."""
    groups = [[draw(st.sampled_from([[name, v], [f"{name}={v}"]])) for v in values]
              for name, values in (("--via", via), ("--dns", dns), ("--allow", allow))]
    if block:
        groups.append([["--block"]])
    if user is not None:
        groups.append([draw(st.sampled_from([["-u", user], ["--user", user],
                                             [f"--user={user}"]]))])
    labels = [i for i, g in enumerate(groups) for _ in g]
    return [w for i in draw(st.permutations(labels)) for w in groups[i].pop(0)]


def _guard_message(dns, allow, block, via):
    return message(validate.guard_request, dns, allow, block, via)


@st.composite
def exec_case(draw, sandbox_env):
    """A netleak-exec command line with one fault that must be refused
    before any action: (argv, environment, exit status, message or a
    piece of it)."""
    block = draw(st.booleans())
    iface = draw(S.absent_ifaces)
    via = [] if block else draw(st.lists(S.v4_unicast.map(str), max_size=1))
    dns = [] if block else draw(st.lists(S.unicast_text, max_size=2))
    allow = draw(st.lists(S.allow_text, max_size=2))
    user = None
    command = ["true"] + draw(st.lists(S.argv_text, max_size=2))
    env = dict(sandbox_env)
    fault = draw(st.sampled_from(["option", "missing-value", "no-iface", "no-command",
                                  "iface", "via", "dns", "allow", "block-via",
                                  "block-dns", "not-found", "directory", "user",
                                  "config"]))
    status, want, piece = 125, None, None
    if fault == "iface":
        block, iface = False, draw(S.bad_argv_ifaces)
        want = message(validate.interface_name, iface)
    elif fault == "via":
        block = False
        via = draw(st.one_of(
            st.lists(S.not_addresses | S.not_local.filter(lambda s: "ffff" not in s),
                     min_size=1, max_size=1).map(lambda b: via + b),
            st.lists(S.v6_unicast.map(str), min_size=2, max_size=2)))
        want = message(validate.gateways, via)
    elif fault == "dns":
        dns = dns + [draw(S.not_addresses | S.not_local)]
        want = _guard_message(dns, allow, block, via)
    elif fault == "allow":
        allow = allow + [draw(S.not_prefixes | S.everything)]
        want = _guard_message(dns, allow, block, via)
    elif fault == "block-via":
        block, via = True, [draw(S.v4_unicast.map(str))]
        want = _guard_message(dns, allow, block, via)
    elif fault == "block-dns":
        block, via, dns = True, [], [draw(S.unicast_text)]
        if _covered(validate.dns_servers(dns), validate.allow_rules(allow)):
            allow = []
        want = _guard_message(dns, allow, block, via)
    elif fault == "not-found":
        command[0] = draw(st.sampled_from(["nlpt-no-such-tool", "/nonexistent/nlpt",
                                           "./nlpt-missing"]))
        status, want = 127, f"{command[0]}: command not found"
    elif fault == "directory":
        command[0] = draw(st.sampled_from(["/", "/usr", "/usr/bin/"]))
        status, want = 126, f"{command[0]}: is a directory"
    elif fault == "user":
        user = draw(st.from_regex(r"nlpt-[a-z]{4,8}", fullmatch=True))
        want = f"no such user {user!r}: give a name or uid from /etc/passwd"
    elif fault == "config":
        bad, name = draw(S.bad_env())
        env.update({k: v for k, v in bad.items()
                    if k == name or k not in ("NETLEAK_RUN_DIR", "NETLEAK_BPF_DIR",
                                              "NETLEAK_CGROUP_PARENT", "NETLEAK_LOG_FILE")})
        want = message(Config.from_env, env)
    opts = _options(draw, via, dns, allow, block, user)
    if fault == "option":
        argv = [draw(_unknown_options)] + opts + ["--", iface] + command
        piece = "(see 'netleak-exec --help')"
    elif fault == "missing-value":
        argv = opts + [draw(st.sampled_from(["--via", "--dns", "--allow", "-u", "--user"]))]
        piece = "requires argument"
    elif fault == "no-iface":
        argv = [w for w in opts if w != "--block"]
        want = f"no IFACE given: {execcmd.USAGE}"
    elif fault == "no-command":
        argv = opts + (["--"] if block else ["--", iface]) + draw(
            st.sampled_from([[], ["--"]]))
        want = f"no COMMAND given: {execcmd.USAGE}"
    else:
        argv = opts + (["--"] if block else ["--", iface]) + command
    return argv, env, status, want, piece


def run_exec(argv, env):
    """netleak-exec's main with ARGV and ENV: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with mock.patch.dict(os.environ, env, clear=True), \
            mock.patch.object(sys, "argv", ["netleak-exec", *argv]), \
            contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with pytest.raises(SystemExit) as e:
            execcmd.main()
    return e.value.code, out.getvalue(), err.getvalue()


@PROPS
@given(st.data())
def test_exec_refuses_before_anything(sandbox, data):
    """netleak-exec refuses a bad command line or setting with its exit
    status (125; 126 or 127 for COMMAND) and one line on stderr, having
    changed nothing."""
    argv, env, status, want, piece = data.draw(exec_case(sandbox.env))
    with sandbox.unchanged():
        code, out, err = run_exec(argv, env)
    assert (code, out) == (status, "")
    assert err.startswith("netleak-exec: ") and err.endswith("\n") and one_line(err[:-1])
    if want is not None:
        assert err == f"netleak-exec: {want}\n"
    else:
        assert piece in err


_exec_words = st.one_of(
    st.sampled_from(["--", "-", "-u", "--user", "--via", "--dns", "--allow", "--block",
                     "--help", "-h", "--version", "nlpt0", "true", "/usr", "lo", "wg0",
                     "192.0.2.1", "127.0.0.1", "0.0.0.0/0", "10.0.0.0/8", "--via=x"]),
    S.argv_text)


def _existing_iface(argv) -> bool:
    names = {n for _, n in socket.if_nameindex()} - {"lo"}
    return any(w in names for w in argv)


@PROPS
@given(st.lists(_exec_words, max_size=6).filter(lambda a: not _existing_iface(a)))
def test_exec_parse_any_argv(argv):
    """Any command line parses into Args or is refused in one line with 125."""
    try:
        a = execcmd.parse(argv)
    except NetleakError as e:
        assert one_line(e.message) and e.exit_status == 125
    else:
        assert a.action in ("run", "help", "version", "dump-bpf")
        assert a.action != "run" or a.command


@FEW
@given(st.lists(_exec_words, max_size=6).filter(lambda a: not _existing_iface(a)))
def test_exec_any_argv_ends_cleanly(sandbox, argv):
    """Whatever the command line, netleak-exec ends with 0 (help, version)
    or a status of its own and one line on stderr, and changes nothing."""
    with sandbox.unchanged():
        code, out, err = run_exec(argv, sandbox.env)
    if code == 0:
        assert err == "" and out
    else:
        assert code in (125, 126, 127) and out == ""
        assert err.startswith("netleak-exec: ") and one_line(err[:-1])


@st.composite
def exec_argv(draw):
    """A well-formed command line and what it says."""
    block = draw(st.booleans())
    via = [] if block else draw(st.lists(S.v4_unicast.map(str), max_size=1))
    dns = draw(st.lists(S.unicast_text, max_size=2))
    allow = draw(st.lists(S.allow_text, max_size=2))
    user = draw(st.none() | st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True))
    iface = "" if block else draw(S.plain_ifaces)
    command = [draw(S.argv_text.filter(lambda w: w and w != "--"))] + draw(
        st.lists(S.argv_text, max_size=3))
    before, after = draw(st.sampled_from([[], ["--"]])), draw(st.sampled_from([[], ["--"]]))
    if block and not before and not after and command[0].startswith("-"):
        before = ["--"]     # else COMMAND would be taken for an option
    argv = (_options(draw, via, dns, allow, block, user) + before
            + ([] if block else [iface]) + after + command)
    return argv, (user, via, dns, allow, block, iface, command)


@PROPS
@given(exec_argv())
def test_exec_parse_round_trips(case):
    """Options, IFACE and COMMAND come back as given, COMMAND untouched."""
    argv, want = case
    a = execcmd.parse(argv)
    assert (a.user, a.via, a.dns, a.allow, a.block, a.iface, a.command) == want
    assert a.action == "run"


@PROPS
@given(st.sampled_from(["\u00b2", "\u00b3", "\u2460", "1\u00b9"]))
@example("\u00b2")
def test_exec_user_that_looks_like_a_number(spec):
    """Any -u value is a user found, or a one-line refusal."""
    try:
        execcmd.resolve_user(spec)
    except NetleakError as e:
        assert one_line(e.message)


@PROPS
@given(st.sampled_from(["--x\ny", "-\n", "--bogus\r"]), st.sampled_from(["a\nb", "x\r"]))
@example("--x\ny", "a\nb")
def test_exec_refusal_is_one_line_whatever_the_words(option, command):
    """An unknown option or a COMMAND not found is refused in one line,
    whatever characters they hold."""
    assert one_line(refused(execcmd.parse, [option, "wg0", "true"]).message)
    with pytest.raises(NetleakError) as e:
        execcmd.resolve_command(command, "/nonexistent")
    assert one_line(e.value.message), repr(e.value.message)


# ---------- netleak (click) ----------

def invoke(sandbox, args, env=None):
    return cli_runner().invoke(cli.main, args, obj=cli.Env(env or sandbox.env),
                              catch_exceptions=False)


def assert_refused(r, status, want=None):
    """Status 125: one line 'netleak: ...' on stderr (WANT, if given);
    status 2: click's usage, its 'Error:' line last."""
    assert r.exit_code == status, (r.exit_code, r.output)
    assert r.stdout == ""
    if status == 125:
        assert r.stderr.startswith("netleak: ") and r.stderr.endswith("\n")
        assert one_line(r.stderr[:-1]), repr(r.stderr)
        if want is not None:
            assert r.stderr == f"netleak: {want}\n"
    else:
        lines = r.stderr.splitlines()
        assert lines[0].startswith("Usage: ") and lines[-1].startswith("Error: ")
        assert sum(ln.startswith("Error: ") for ln in lines) == 1
        if want is not None:
            assert lines[-1] == f"Error: {want}"
    assert "Traceback" not in r.output


_ABSENT_CGROUP = "/netleak-proptest-absent/x"
_EXACTLY_ONE = "give exactly one of --cgroup PATH, --pid PID, --unit UNIT"


def _not_click_int(s: str) -> bool:
    try:
        int(s)
    except ValueError:
        return True
    return False


@st.composite
def target_fault(draw, with_id=False):
    """(--cgroup/--pid/--unit arguments with a fault, status, message)."""
    fault = draw(st.sampled_from(["none", "two", "pid", "pid-text", "cgroup", "unit"]
                                 + (["id-and-target"] if with_id else [])))
    if fault == "none":
        return [], 2, _EXACTLY_ONE
    if fault == "two":
        kinds = draw(st.lists(st.sampled_from(["cgroup", "pid", "unit"]), min_size=2,
                              max_size=3, unique=True))
        vals = {"cgroup": f"--cgroup={_ABSENT_CGROUP}", "pid": "--pid=-1",
                "unit": "--unit=nlpt-absent.service"}
        return [vals[k] for k in kinds], 2, _EXACTLY_ONE
    if fault == "pid":
        pid = draw(st.integers(-(1 << 40), 0))
        return [f"--pid={pid}"], 125, message(targets.pid_cgroup, pid, None)
    if fault == "pid-text":
        return [f"--pid={draw(S.argv_text.filter(_not_click_int))}"], 2, None
    if fault == "cgroup":
        path = draw(st.one_of(st.just(""), st.lists(
            S.cgroup_component | st.just(".."), min_size=1, max_size=4).map(
            lambda parts: "/".join(parts + [".."]))))
        return [f"--cgroup={path}"], 125, message(targets.cgroup_rel, path, "/sys/fs/cgroup")
    if fault == "unit":
        name = draw(S.bad_unit_names)
        return [f"--unit={name}"], 125, message(targets.unit_name, name)
    target = draw(st.sampled_from([f"--cgroup={_ABSENT_CGROUP}", "--pid=1",
                                   "--unit=nlpt.service"]))
    return (["--id", draw(st.from_regex(r"[0-9a-f]{4,10}", fullmatch=True)), target], 125,
            "give --id or one of --cgroup/--pid/--unit, not both")


def _attach_message(iface, block, via, dns, allow):
    """What attach says first, in its order of checks (None: all good)."""
    if block == bool(iface):
        return "give an IFACE or --block (not both)"
    for check in (lambda: block or validate.interface_name(iface or ""),
                  lambda: validate.gateways(via),
                  lambda: validate.guard_request(dns, allow, block, via)):
        try:
            check()
        except NetleakError as e:
            return e.message
    return None


@st.composite
def attach_case(draw):
    """`netleak attach` arguments with one fault: (args, status, message)."""
    block = draw(st.booleans())
    iface = None if block else draw(S.absent_ifaces)
    via = [] if block else draw(st.lists(S.v4_unicast.map(str), max_size=1))
    dns = [] if block else draw(st.lists(S.unicast_text, max_size=2))
    allow = draw(st.lists(S.allow_text, max_size=2))
    target = [f"--cgroup={_ABSENT_CGROUP}"]
    fault = draw(st.sampled_from(["iface", "both", "neither", "via", "dns", "allow",
                                  "block-via", "block-dns", "target", "option"]))
    status = 125
    if fault == "iface":
        block, iface = False, draw(S.bad_argv_ifaces)
    elif fault == "both":
        block, iface = True, draw(S.absent_ifaces)
    elif fault == "neither":
        block, iface = False, None
    elif fault == "via":
        block, iface = False, iface or draw(S.absent_ifaces)
        via = via + [draw(S.not_addresses)]
    elif fault == "dns":
        dns = dns + [draw(S.not_addresses | S.not_local)]
    elif fault == "allow":
        allow = allow + [draw(S.not_prefixes | S.everything)]
    elif fault == "block-via":
        block, iface, via = True, None, [draw(S.v4_unicast.map(str))]
    elif fault == "block-dns":
        block, iface, via, dns = True, None, [], [draw(S.unicast_text)]
        if _covered(validate.dns_servers(dns), validate.allow_rules(allow)):
            allow = []
    elif fault == "target":
        target, status, want = draw(target_fault())
    opts = [f"--{name}={v}" for name, vals in (("via", via), ("dns", dns), ("allow", allow))
            for v in vals] + (["--block"] if block else []) + target
    opts = [opts[i] for i in draw(st.permutations(range(len(opts))))]
    if fault == "option":
        opts.insert(draw(st.integers(0, len(opts))), draw(
            st.from_regex(r"--nlpt-[a-z]{1,6}", fullmatch=True)))
        status, want = 2, None
    elif fault != "target":
        want = _attach_message(iface, block, via, dns, allow)
        assert want is not None
    return ["attach", *opts, *([] if iface is None else ["--", iface])], status, want


@PROPS
@given(attach_case())
def test_attach_refuses_before_anything(sandbox, case):
    """netleak attach refuses a bad IFACE, --via, --dns, --allow, --block or
    target with 125 and one line (2 and click's usage for a malformed
    command line), before it touches a cgroup, the run directory or the
    daemon."""
    args, status, want = case
    with sandbox.unchanged():
        r = invoke(sandbox, args)
    assert_refused(r, status, want)


@st.composite
def detach_case(draw):
    """`netleak detach` arguments with one fault: (args, status, message)."""
    if draw(st.booleans()):
        args, status, want = draw(target_fault(with_id=True))
    else:
        args, status, want = [f"--nlpt-{draw(st.sampled_from(['x', 'id2', 'all']))}"], 2, None
    return ["detach", *args], status, want


@FEW
@given(detach_case())
def test_detach_refuses_before_anything(sandbox, case):
    """netleak detach refuses a bad target, or --id with a target, before it
    asks anything of the daemon."""
    args, status, want = case
    with sandbox.unchanged():
        r = invoke(sandbox, args)
    assert_refused(r, status, want)


_NEEDS_ROOT_FIRST = {"status", "gc", "metrics", "events"}


@FEW
@given(S.bad_env(), st.sampled_from([["status"], ["status", "--json"], ["gc"],
                                     ["gc", "--json"], ["metrics"], ["events"],
                                     ["events", "--json"], ["install-hook"]]))
def test_commands_refuse_bad_settings(sandbox, case, args):
    """A bad NETLEAK_* value is refused with 125 and the one line naming it
    before a command reads or writes anything (root-only commands say
    first that they need root)."""
    bad, name = case
    env = {**sandbox.env, **{k: v for k, v in bad.items()
                             if k == name or k not in ("NETLEAK_RUN_DIR", "NETLEAK_BPF_DIR",
                                                       "NETLEAK_LOG_FILE")}}
    if args[0] == "install-hook":
        args = args + ["--hooks-dir", os.path.join(sandbox.root, "hooks")]
    if args[0] in _NEEDS_ROOT_FIRST and os.geteuid() != 0:
        want = "needs root (cgroups, BPF, routing): run it with sudo"
    else:
        want = message(Config.from_env, env)
    with sandbox.unchanged():
        r = invoke(sandbox, args, env)
    assert_refused(r, 125, want)


_COMMANDS = {"attach", "detach", "status", "gc", "doctor", "demo", "daemon", "metrics",
             "events", "install-hook", "agent", "prepare", "cleanup", "connections"}


@FEW
@given(st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True).filter(
    lambda c: c not in _COMMANDS), st.sampled_from(sorted(_COMMANDS)),
    st.from_regex(r"--nlpt-[a-z]{1,8}", fullmatch=True))
def test_unknown_command_or_option_is_a_usage_error(sandbox, command, known, option):
    """An unknown command, or an unknown option of any command, is a usage
    error (2) before the command runs."""
    assert set(cli.main.commands) == _COMMANDS
    with sandbox.unchanged():
        r1 = invoke(sandbox, [command])
        r2 = invoke(sandbox, [known, option])
    assert_refused(r1, 2)
    assert "No such command" in r1.stderr
    assert_refused(r2, 2)
    # click 8.1 (Debian 12) says "No such option: --x", later ones "... '--x'"
    assert "No such option" in r2.stderr and option in r2.stderr


def test_a_store_made_for_one_look_keeps_no_descriptor(tmp_path):
    """Store(path).load(), as a watcher polls it: the run directory's
    descriptor goes with the Store (a long run made thousands)."""
    Store(str(tmp_path)).load()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(50):
        Store(str(tmp_path)).load()
        Store(str(tmp_path)).daemon_pid()
    assert len(os.listdir("/proc/self/fd")) == before
