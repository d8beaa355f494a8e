"""core/abi.py against bpf/netleak.h: a small parser of the header (structs
and unions with C's natural alignment, #define constants, enums) and the
comparison of every layout, code and limit with it; edits of the header's
text prove the comparison fails when they differ (pure)."""
from __future__ import annotations

import dataclasses
import os
import re
import struct

import pytest

from netleak_hook.core import abi, events, policy, validate
from netleak_hook.proxymode import relay

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "bpf", "netleak.h")
# structs of the header that only the programs read and write
KERNEL_ONLY = {"nl_relayed"}


def header_text() -> str:
    with open(HEADER) as f:
        return f.read()


# ---------- the parser ----------

SCALAR_SIZES = {"u8": 1, "s8": 1, "char": 1, "u16": 2, "s16": 2, "u32": 4, "s32": 4,
                "u64": 8, "s64": 8}
TOKEN = re.compile(r"[A-Za-z_]\w*|0[xX][0-9a-fA-F]+|\d+|\S")


@dataclasses.dataclass
class Member:
    name: str
    ctype: str          # "u32", "char", "struct nl_addr"...
    count: int          # 0: not an array
    offset: int
    size: int           # bytes, all of the array's


@dataclasses.dataclass
class Aggregate:
    kind: str           # struct, union
    name: str
    members: list = dataclasses.field(default_factory=list)
    size: int = 0
    align: int = 1


@dataclasses.dataclass
class Header:
    defines: dict
    structs: dict       # name -> Aggregate (unions too)
    enums: dict         # name -> {member: value}


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def parse_header(text: str) -> Header:
    text = strip_comments(text)
    defines: dict[str, int] = {}
    body = []
    for line in text.splitlines():
        m = re.match(r"\s*#\s*define\s+(\w+)\s+(\S+)\s*$", line)
        if m:
            defines[m.group(1)] = _value(m.group(2), defines)
        if not line.lstrip().startswith("#"):
            body.append(line)
    return _Parser(TOKEN.findall("\n".join(body)), defines).header()


def _value(tok: str, defines: dict) -> int:
    if tok in defines:
        return defines[tok]
    return int(tok, 0)


class _Parser:
    def __init__(self, tokens: list[str], defines: dict) -> None:
        self.toks, self.at, self.defines = tokens, 0, defines
        self.structs: dict[str, Aggregate] = {}
        self.enums: dict[str, dict] = {}

    def peek(self, ahead: int = 0) -> str | None:
        i = self.at + ahead
        return self.toks[i] if i < len(self.toks) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise SyntaxError(f"expected {want!r}, found {tok!r} (token {self.at})")
        self.at += 1
        return tok

    def header(self) -> Header:
        while self.peek() is not None:
            if self.peek() in ("struct", "union") and self.peek(2) == "{":
                self.aggregate()
                self.take(";")
            elif self.peek() == "enum" and self.peek(2) == "{":
                self.enum()
            else:
                self.take()
        return Header(self.defines, self.structs, self.enums)

    def enum(self) -> None:
        self.take("enum")
        name = self.take()
        self.take("{")
        values, nxt = {}, 0
        while self.peek() != "}":
            member = self.take()
            if self.peek() == "=":
                self.take("=")
                nxt = _value(self.take(), {**self.defines, **values})
            values[member] = nxt
            nxt += 1
            if self.peek() == ",":
                self.take(",")
        self.take("}")
        self.take(";")
        self.enums[name] = values

    def aggregate(self) -> Aggregate:
        """struct|union [NAME] { MEMBERS }: laid out, and kept by its name."""
        kind = self.take()
        name = self.take() if self.peek() != "{" else ""
        agg = Aggregate(kind, name)
        self.take("{")
        at = 0
        while self.peek() != "}":
            at = self.member(agg, at)
        self.take("}")
        if kind == "union":
            at = max((m.offset + m.size for m in agg.members), default=0)
        agg.size = -(-at // agg.align) * agg.align
        if name:
            self.structs[name] = agg
        return agg

    def member(self, agg: Aggregate, at: int) -> int:
        """One member declaration of AGG, placed after AT; the end of it."""
        if self.peek() in ("struct", "union"):
            if self.peek(1) == "{" or self.peek(2) == "{":
                inner = self.aggregate()
            else:
                kind, ref = self.take(), self.take()
                inner = self.structs[ref]
                assert inner.kind == kind, f"{kind} {ref} is a {inner.kind}"
            if self.peek() == ";":      # anonymous: its members are AGG's
                self.take(";")
                start = self._place(agg, at, inner.align)
                for m in inner.members:
                    agg.members.append(Member(m.name, m.ctype, m.count, start + m.offset,
                                              m.size))
                return start + inner.size if agg.kind == "struct" else at
            ctype = f"{inner.kind} {inner.name}" if inner.name else inner
            size, align = inner.size, inner.align
        else:
            ctype = re.sub(r"^__", "", self.take())
            size = align = SCALAR_SIZES[ctype]
        while True:
            name = self.take()
            count = 0
            while self.peek() == "[":
                self.take("[")
                count = (count or 1) * _value(self.take(), self.defines)
                self.take("]")
            start = self._place(agg, at, align)
            total = size * (count or 1)
            agg.members.append(Member(name, ctype if isinstance(ctype, str) else
                                      f"{ctype.kind} <anonymous>", count, start, total))
            if agg.kind == "struct":
                at = start + total
            if self.take() == ";":
                return at
            # ",": another declarator of the same type

    @staticmethod
    def _place(agg: Aggregate, at: int, align: int) -> int:
        agg.align = max(agg.align, align)
        return 0 if agg.kind == "union" else -(-at // align) * align


# ---------- the comparison ----------

def abi_name(c_define: str) -> str:
    """Where abi keeps a #define: its name without NL_."""
    return c_define[3:] if c_define.startswith("NL_") else c_define


def layout_members(layout: abi.Layout) -> list[tuple]:
    out = []
    for name, ctype, count in layout.fields:
        c = f"struct {ctype.c_name}" if isinstance(ctype, abi.Layout) else ctype
        out.append((name, c, count, layout.offsets[name]))
    return out


def mismatches(text: str) -> list[str]:
    """How abi differs from the header TEXT (nothing: it matches)."""
    h = parse_header(text)
    bad: list[str] = []
    for layout in abi.LAYOUTS:
        c = h.structs.get(layout.c_name)
        if c is None or c.kind != "struct":
            bad.append(f"struct {layout.c_name}: not in the header")
            continue
        want = [(m.name, m.ctype, m.count, m.offset) for m in c.members]
        have = layout_members(layout)
        if have != want:
            diff = next((f"{a} != header {b}" for a, b in zip(have, want) if a != b),
                        f"{len(have)} members, the header {len(want)}")
            bad.append(f"struct {layout.c_name}: {diff}")
        if (layout.size, layout.align) != (c.size, c.align):
            bad.append(f"struct {layout.c_name}: {layout.size} bytes aligned to "
                       f"{layout.align}, the header {c.size} aligned to {c.align}")
        if struct.calcsize(layout.format) != layout.size:
            bad.append(f"struct {layout.c_name}: format {layout.format} is not "
                       f"{layout.size} bytes")
    known = {layout.c_name for layout in abi.LAYOUTS} | KERNEL_ONLY
    bad += [f"struct {n}: no layout in abi" for n in sorted(set(h.structs) - known)]
    for codes in abi.ENUMS:
        want = h.enums.get(codes.c_name)
        have = {c_name: value for c_name, value, _ in codes.members}
        if have != want:
            bad.append(f"enum {codes.c_name}: {have} != header {want}")
    bad += [f"enum {n}: no codes in abi" for n in
            sorted(set(h.enums) - {c.c_name for c in abi.ENUMS})]
    for name, value in h.defines.items():
        if getattr(abi, abi_name(name), None) != value:
            bad.append(f"#define {name} {value}: abi.{abi_name(name)} is "
                       f"{getattr(abi, abi_name(name), 'missing')}")
    return bad


def test_abi_matches_the_header():
    assert mismatches(header_text()) == []


def test_the_header_is_parsed_whole():
    h = parse_header(header_text())
    assert set(h.structs) == {"nl_addr", "nl_prefix", "nl_rule", "nl_policy", "nl_count",
                              "nl_stats", "nl_event", "nl_redirect", "nl_local_key",
                              "nl_relayed", "nl_flowstat"}
    assert {n: s.size for n, s in h.structs.items()} == {
        "nl_addr": 16, "nl_prefix": 32, "nl_rule": 40, "nl_policy": 776, "nl_count": 16,
        "nl_stats": 288,
        "nl_event": 72, "nl_redirect": 56, "nl_local_key": 24, "nl_relayed": 8,
        "nl_flowstat": 56}
    assert set(h.enums) == {"nl_reason", "nl_hook"}
    assert h.defines["NL_MAX_REDIRECTS"] == 1048576 and h.defines["NL_FLAG_PROXY"] == 4
    assert "NETLEAK_H" not in h.defines       # the include guard has no value


# a header edit, and what the comparison must then name
EDITS = [
    ("u16 dport;", "u32 dport;", "struct nl_event"),               # a field widened
    ("    u16 rule;", "", "struct nl_event"),                      # same size, moved fields
    ("u8 daddr[16];", "u8 daddr[20];", "struct nl_event"),        # an array grown
    ("u32 dns_port;", "u32 answer_port;", "struct nl_policy"),    # a field renamed
    ("u64 refused_limit;", "u64 refused_limit;\n    u64 refused_more;", "struct nl_stats"),
    ("    u64 refused_kill_sendmsg;", "", "struct nl_stats"),         # a counter gone
    ("u32 w[4];", "u64 w[2];", "struct nl_addr"),                 # the alignment changed
    ("struct nl_addr addr;\n};", "struct nl_prefix addr;\n};", "struct nl_local_key"),
    ("#define NL_MAX_DNS 4", "#define NL_MAX_DNS 5", "NL_MAX_DNS"),
    ("#define NL_MAX_DNS 4", "#define NL_MAX_DNS 5", "struct nl_policy"),
    ("#define NL_RING_PAGES 16", "#define NL_RING_PAGES 32", "NL_RING_PAGES"),
    ("#define NL_FLAG_PROXY 0x4", "#define NL_FLAG_PROXY 0x8", "NL_FLAG_PROXY"),
    ("#define DNS_PORT 53", "#define DNS_PORT 53\n#define NL_NEW_LIMIT 3", "NL_NEW_LIMIT"),
    ("NL_R_LIMIT = 10,", "NL_R_LIMIT = 11,", "enum nl_reason"),
    ("NL_H_SETSOCKOPT = 5,", "NL_H_SETSOCKOPT = 5,\n    NL_H_BIND = 6,", "enum nl_hook"),
    ("#endif /* NETLEAK_H */", "struct nl_new {\n    u32 x;\n};\n#endif", "struct nl_new"),
    ("#endif /* NETLEAK_H */", "enum nl_new { NL_N_A = 1 };\n#endif", "enum nl_new"),
]


@pytest.mark.parametrize("old,new,named", EDITS)
def test_an_edited_header_fails_the_comparison(old, new, named):
    text = header_text()
    assert text.count(old) == 1, old
    bad = mismatches(text.replace(old, new))
    assert bad and any(named in b for b in bad), bad


# ---------- the parser itself, on C of its own ----------

def test_parser_pads_as_c_does():
    h = parse_header("""
        #define N 3
        struct a { u8 x; u32 y; u16 z; };               /* 1+3, 4, 2+2 */
        struct b { u16 h; struct a inner; u8 tail[N]; };
        struct c { __u8 one; __u64 two; };
    """)
    a, b, c = h.structs["a"], h.structs["b"], h.structs["c"]
    assert [(m.name, m.offset) for m in a.members] == [("x", 0), ("y", 4), ("z", 8)]
    assert (a.size, a.align) == (12, 4)
    assert [(m.name, m.ctype, m.count, m.offset) for m in b.members] == [
        ("h", "u16", 0, 0), ("inner", "struct a", 0, 4), ("tail", "u8", 3, 16)]
    assert (b.size, b.align) == (20, 4)
    assert [(m.ctype, m.offset) for m in c.members] == [("u8", 0), ("u64", 8)]
    assert c.size == 16


def test_parser_unions_anonymous_members_and_enums():
    h = parse_header("""
        union u { u8 b[5]; u32 w; };
        struct s {
            u8 tag;
            union { u16 port; u64 cookie; };
            struct { u8 p, q; } pair;
            union u which[2];
        };
        enum e { E_A = 2, E_B, E_C = 7, };
    """)
    u, s = h.structs["u"], h.structs["s"]
    assert (u.size, u.align) == (8, 4)
    assert [(m.name, m.offset) for m in s.members] == [
        ("tag", 0), ("port", 8), ("cookie", 8), ("pair", 16), ("which", 20)]
    assert s.size == 40 and s.align == 8
    assert h.enums["e"] == {"E_A": 2, "E_B": 3, "E_C": 7}


# ---------- abi's own derivations ----------

def test_layout_derives_padding_like_c():
    t = abi.Layout("t", (("x", "u8"), ("y", "u32"), ("z", "u16")))
    assert (t.size, t.align, t.offsets) == (12, 4, {"x": 0, "y": 4, "z": 8})
    assert t.format == "<B3xIH2x" and t.struct.size == 12
    assert t.unpack(t.pack(x=1, y=2, z=3)) == {"x": 1, "y": 2, "z": 3}


def test_layout_pack_and_unpack():
    raw = abi.POLICY.pack(ifindex=7, dns=(abi.addr16("192.0.2.1"),), dns_n=1)
    assert len(raw) == abi.POLICY.size
    v = abi.POLICY.unpack(raw)
    assert v["ifindex"] == 7 and v["dns_n"] == 1 and v["mark"] == 0
    assert v["dns"][0] == b"\0" * 10 + b"\xff\xff" + bytes([192, 0, 2, 1])
    assert v["dns"][1:] == (b"\0" * 16,) * 3 and len(v["allow"]) == abi.MAX_ALLOW
    with pytest.raises(TypeError):
        abi.POLICY.pack(nonesuch=1)
    with pytest.raises(ValueError):
        abi.POLICY.pack(dns=(b"",) * (abi.MAX_DNS + 1))


def test_inline_struct_members_are_named_after_both():
    assert abi.STATS.names[:3] == ("passed_packets", "passed_bytes", "loopback_packets")
    assert abi.STATS.format == "<" + "Q" * 36


def test_addresses_and_ports():
    for addr in ("192.0.2.1", "2001:db8::1", "::1"):
        assert abi.addr_text(abi.addr16(addr)) == addr
    for cidr in ("10.0.0.0/8", "2001:db8::/32", "192.168.1.7/32"):
        assert abi.prefix_text(abi.prefix16(cidr)) == cidr
    assert abi.net_port(53) == 0x3500 and abi.net_port(abi.net_port(8080)) == 8080


# ---------- the modules that take theirs from abi ----------

def test_stats_fields_are_the_struct_members():
    assert tuple(f.name for f in dataclasses.fields(policy.Stats)) == abi.STATS.names


def test_the_modules_export_abis_values():
    assert (policy.POLICY_SIZE, policy.STATS_SIZE, policy.LOCAL_KEY_SIZE) == \
        (abi.POLICY.size, abi.STATS.size, abi.LOCAL_KEY.size)
    assert (policy.MAX_DNS, policy.MAX_ALLOW) == (abi.MAX_DNS, abi.MAX_ALLOW)
    assert (validate.MAX_DNS, validate.MAX_ALLOW) == (abi.MAX_DNS, abi.MAX_ALLOW)
    assert (policy.FLAG_KILL, policy.FLAG_BLOCK, policy.FLAG_PROXY) == \
        (abi.FLAG_KILL, abi.FLAG_BLOCK, abi.FLAG_PROXY)
    assert events.EVENT_SIZE == abi.EVENT.size
    assert events.REASONS == abi.REASON.names and events.HOOKS == abi.HOOK.names
    assert relay.REDIRECT_SIZE == abi.REDIRECT.size
    with pytest.raises(AttributeError):
        validate.NO_SUCH_LIMIT
