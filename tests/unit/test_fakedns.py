"""Fake DNS for proxy mode: messages byte for byte as RFC 1035 has them,
the pool's reuse order, and the refusals."""
from __future__ import annotations

import ipaddress

import pytest

from netleak_hook.proxymode import fakedns
from netleak_hook.proxymode.fakedns import FakePool, parse_query, reply, respond


def FIRST(n: int) -> int:
    """The pool's draw, made predictable: the lowest free address."""
    return 0


def query(question: bytes, flags: bytes = b"\x01\x00", counts: bytes = b"\x00\x01",
          rest: bytes = b"", arcount: bytes = b"\x00\x00") -> bytes:
    """Header: ID 0x1234, FLAGS (RD), QDCOUNT COUNTS; then QUESTION, REST."""
    return b"\x12\x34" + flags + counts + b"\x00\x00\x00\x00" + arcount + question + rest


Q_EXAMPLE = b"\x07ExAmple\x03COM\x00"
Q_A = Q_EXAMPLE + b"\x00\x01\x00\x01"                  # A, IN
Q_AAAA = Q_EXAMPLE + b"\x00\x1c\x00\x01"               # AAAA, IN
Q_PTR = b"\x011\x010\x0218\x03198\x07in-addr\x04arpa\x00\x00\x0c\x00\x01"
# an answer: pointer to offset 12, TYPE, CLASS IN, TTL 60, RDLENGTH
ANS_A = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04"
# ID, flags QR RD RA (+rcode), QDCOUNT 1, ANCOUNT, NSCOUNT 0, ARCOUNT 0
HEAD_1 = b"\x12\x34\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00"
HEAD_0 = b"\x12\x34\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00"
REFUSED = b"\x12\x34\x81\x85\x00\x01\x00\x00\x00\x00\x00\x00"


def test_parse_query():
    q = parse_query(query(Q_A))
    assert (q.id, q.flags, q.name, q.qtype, q.qclass) == (0x1234, 0x0100, "example.com", 1, 1)
    assert q.question == Q_A                             # case kept for the echo
    assert parse_query(query(b"\x00\x00\x02\x00\x01")).name == ""
    assert parse_query(query(Q_PTR)).name == "1.0.18.198.in-addr.arpa"


def test_reply_bytes():
    q = parse_query(query(Q_A))
    assert reply(q, addrs=["198.18.0.1"]) == HEAD_1 + Q_A + ANS_A + b"\xc6\x12\x00\x01"
    assert reply(q, addrs=["2001:db8::1"], ttl=300) == (
        HEAD_1 + Q_A + b"\xc0\x0c\x00\x1c\x00\x01\x00\x00\x01\x2c\x00\x10"
        b"\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01")
    assert reply(q, fakedns.RCODE_SERVFAIL) == b"\x12\x34\x81\x82" + HEAD_0[4:] + Q_A
    # RD not set in the query: not set in the answer
    q = parse_query(query(Q_A, flags=b"\x00\x00"))
    assert reply(q, fakedns.RCODE_NXDOMAIN) == b"\x12\x34\x80\x83" + HEAD_0[4:] + Q_A


def test_respond_a_aaaa_ptr():
    pool = FakePool(random=FIRST)
    assert respond(query(Q_A), pool) == (HEAD_1 + Q_A + ANS_A + b"\xc6\x12\x00\x01", "fake")
    assert respond(query(Q_A), pool)[0].endswith(b"\xc6\x12\x00\x01")     # same again
    assert respond(query(Q_AAAA), pool) == (HEAD_0 + Q_AAAA, "nodata")
    # no PTR: any local program could list the names sessions looked up
    assert respond(query(Q_PTR), pool) == (
        b"\x12\x34\x81\x85" + HEAD_0[4:] + Q_PTR, "refused-type")


def test_respond_pool_full():
    """An address held within the last HOLD seconds is not given away:
    SERVFAIL instead."""
    pool = FakePool("192.0.2.0/30", hold=3600, random=FIRST)
    assert pool.address_for("a") and pool.address_for("b")
    assert respond(query(Q_A), pool) == (
        b"\x12\x34\x81\x82" + HEAD_0[4:] + Q_A, "pool-full")
    assert pool.address_for("a") == "192.0.2.1"         # the known keep theirs


def test_respond_with_edns():
    opt = b"\x00\x00\x29\x10\x00\x00\x00\x00\x00\x00\x00"   # root, OPT, 4096, no options
    answer, why = respond(query(Q_A, rest=opt, arcount=b"\x00\x01"), FakePool(random=FIRST))
    assert why == "fake" and answer == HEAD_1 + Q_A + ANS_A + b"\xc6\x12\x00\x01"


@pytest.mark.parametrize("question, rcode, why", [
    # PTR, of the pool's addresses too
    (b"\x012\x010\x0218\x03198\x07in-addr\x04arpa\x00\x00\x0c\x00\x01", 5, "refused-type"),
    (b"\x010\x010\x0218\x03198\x07in-addr\x04arpa\x00\x00\x0c\x00\x01", 5, "refused-type"),
    # PTR outside the pool, or not an address
    (b"\x011\x012\x010\x03192\x07in-addr\x04arpa\x00\x00\x0c\x00\x01", 5, "refused-type"),
    (b"\x0201\x010\x0218\x03198\x07in-addr\x04arpa\x00\x00\x0c\x00\x01", 5, "refused-type"),
    (b"\x0218\x03198\x07in-addr\x04arpa\x00\x00\x0c\x00\x01", 5, "refused-type"),
    (Q_EXAMPLE + b"\x00\x0c\x00\x01", 5, "refused-type"),            # PTR of a name
    (Q_EXAMPLE + b"\x00\x0f\x00\x01", 5, "refused-type"),            # MX
    (Q_EXAMPLE + b"\x00\x01\x00\x03", 5, "refused-type"),            # A, class CH
    (b"\x00\x00\x01\x00\x01", 5, "refused-type"),                    # A for the root
])
def test_respond_other(question, rcode, why):
    pool = FakePool(random=FIRST)
    assert respond(query(Q_A), pool)[1] == "fake"
    assert respond(query(question), pool) == (
        b"\x12\x34\x81" + bytes([0x80 | rcode]) + HEAD_0[4:] + question, why)


def test_respond_without_pool():
    for question in (Q_A, Q_AAAA, Q_PTR):
        assert respond(query(question), None) == (REFUSED + question, "refused-local")


MALFORMED = [
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00",                   # short header
    query(Q_A, flags=b"\x81\x00"),                                      # QR: a response
    query(Q_A, flags=b"\x11\x00"),                                      # opcode 2
    query(Q_A, counts=b"\x00\x00"),
    query(Q_A + Q_A, counts=b"\x00\x02"),
    query(b"\x03www\xc0\x0c\x00\x01\x00\x01"),                          # pointer
    query(b"\x40" + b"a" * 64 + b"\x00\x00\x01\x00\x01"),               # label 64
    query(b"\x80" + b"a" * 63 + b"\x00\x00\x01\x00\x01"),               # label type 10
    query((b"\x3f" + b"a" * 63) * 4 + b"\x00\x00\x01\x00\x01"),         # name 257
    query(Q_EXAMPLE + b"\x00\x01\x00"),                                 # no QCLASS
    query(b"\x07example\x03com"),                                       # no root label
    query(b"\x07exam"),                                                 # label cut
    query(b"\x03a b\x00\x00\x01\x00\x01"),                              # a space
    query(b"\x03a.b\x00\x00\x01\x00\x01"),                              # a dot
    query(b"\x02\xc3\xa9\x00\x00\x01\x00\x01"),                         # not ASCII
    b"",
]


@pytest.mark.parametrize("packet", MALFORMED)
def test_malformed(packet):
    with pytest.raises(ValueError):
        parse_query(packet)
    assert respond(packet, FakePool(random=FIRST)) == (None, "malformed")
    assert respond(packet, None) == (None, "malformed")


def test_longest_name():
    name = (b"\x3f" + b"a" * 63) * 3 + b"\x3d" + b"b" * 61 + b"\x00"     # 255 bytes
    assert parse_query(query(name + b"\x00\x01\x00\x01")).name.endswith(".bbb" + "b" * 58)
    assert parse_query(query(name + b"\x00\x01\x00\x01junk")).qtype == 1


def test_pool_lru():
    pool = FakePool("192.0.2.0/29", capacity=3, hold=0, random=FIRST)
    assert [pool.address_for(n) for n in "abc"] == ["192.0.2.1", "192.0.2.2", "192.0.2.3"]
    assert pool.address_for("a") == "192.0.2.1"          # order now b, c, a
    assert pool.address_for("d") == "192.0.2.2"          # b forgotten
    assert pool.name_for("192.0.2.2") == "d"
    assert pool.name_for("192.0.2.3") == "c"             # order now a, d, c
    assert pool.address_for("e") == "192.0.2.1"
    assert pool.address_for("b") == "192.0.2.2"          # d forgotten
    assert [pool.name_for(f"192.0.2.{i}") for i in range(8)] == [
        None, "e", "b", "c", None, None, None, None]
    assert len(pool) == 3


def test_pool_network_size():
    pool = FakePool("192.0.2.0/30", hold=0, random=FIRST)             # .1 and .2 only
    assert [pool.address_for(n) for n in "abcd"] == [
        "192.0.2.1", "192.0.2.2", "192.0.2.1", "192.0.2.2"]
    assert pool.name_for("192.0.2.1") == "c"
    assert FakePool().capacity == 65536 and FakePool(capacity=10**6).capacity == 2**17 - 2


def test_pool_membership():
    pool = FakePool(random=FIRST)
    for addr in ("198.18.0.0", "198.18.0.1", "198.19.255.255"):
        assert addr in pool and pool.name_for(addr) is None
    for addr in ("198.17.255.255", "198.20.0.0", "::1", "garbage", ""):
        assert addr not in pool and pool.name_for(addr) is None


@pytest.mark.parametrize("network, capacity", [
    ("198.18.0.0/31", 10), ("198.18.0.0/32", 10), ("fd00::/64", 10),
    ("198.18.0.0/15", 0), ("198.18.0.1/15", 10),
])
def test_pool_refused(network, capacity):
    with pytest.raises(ValueError):
        FakePool(network, capacity)


def test_tcp_frames():
    assert fakedns.tcp_frame(b"abc") == b"\x00\x03abc"
    assert fakedns.tcp_frame(b"x" * 300)[:2] == b"\x01\x2c"
    assert fakedns.tcp_frames(b"\x00\x03abc\x00\x02de\x00\x05xy") == (
        [b"abc", b"de"], b"\x00\x05xy")
    assert fakedns.tcp_frames(b"\x00") == ([], b"\x00")
    assert fakedns.tcp_frames(b"") == ([], b"")
    assert fakedns.tcp_frames(b"\x00\x00\x00\x01z") == ([b"", b"z"], b"")
    with pytest.raises(ValueError):
        fakedns.tcp_frame(b"x" * 65536)


def test_tcp_round_trip():
    stream = fakedns.tcp_frame(query(Q_A)) + fakedns.tcp_frame(query(Q_AAAA))
    pool = FakePool(random=FIRST)
    msgs, rest = fakedns.tcp_frames(stream[:-3])
    assert len(msgs) == 1 and respond(msgs[0], pool)[1] == "fake"
    msgs, rest = fakedns.tcp_frames(rest + stream[-3:])
    assert rest == b"" and respond(msgs[0], pool)[1] == "nodata"


def test_new_names_get_addresses_in_no_order():
    """The order of names asked tells nothing: two pools (as two sessions)
    hand out other addresses, and none in sequence."""
    a, b = FakePool(), FakePool()
    got_a = [a.address_for(f"n{i}.test") for i in range(50)]
    got_b = [b.address_for(f"n{i}.test") for i in range(50)]
    assert got_a != got_b
    ints = [int(ipaddress.IPv4Address(x)) for x in got_a]
    assert ints != sorted(ints) and len(set(ints)) == 50
    assert all(ipaddress.IPv4Address(x) in ipaddress.ip_network("198.18.0.0/15") for x in got_a)
    assert all(a.name_for(x) == f"n{i}.test" for i, x in enumerate(got_a))
