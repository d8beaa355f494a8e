"""Proxy handshakes, byte for byte as RFC 1928, RFC 1929 and RFC 9110 have
them, and every way a proxy can refuse."""
from __future__ import annotations

import pytest

from netleak_hook.proxymode.handshake import Handshake, ProxyError

GREETING = b"\x05\x01\x00"                   # VER 5, 1 method: no auth
GREETING_AUTH = b"\x05\x02\x00\x02"          # no auth, user/password
# CONNECT 192.0.2.1:443
CONNECT_V4 = b"\x05\x01\x00\x01\xc0\x00\x02\x01\x01\xbb"
# succeeded, bound 10.0.0.1:1080
REPLY_OK = b"\x05\x00\x00\x01\x0a\x00\x00\x01\x04\x38"
AUTH_ALICE = b"\x01\x05alice\x06s3cret"      # RFC 1929: VER 1, ULEN, UNAME, PLEN, PASSWD


def feed_bytewise(h: Handshake, data: bytes) -> bytes:
    return b"".join(h.feed(data[i:i + 1]) for i in range(len(data)))


def test_socks5_no_auth():
    h = Handshake("socks5", "192.0.2.1", 443)
    assert h.start() == GREETING
    assert h.feed(b"\x05\x00") == CONNECT_V4
    assert not h.done
    assert h.feed(REPLY_OK) == b""
    assert h.done and h.leftover == b"" and h.bound == ("10.0.0.1", 1080)


@pytest.mark.parametrize("host, port, request_", [
    ("example.com", 80, b"\x05\x01\x00\x03\x0bexample.com\x00\x50"),
    ("2001:db8::1", 8080,
     b"\x05\x01\x00\x04\x20\x01\x0d\xb8" + b"\x00" * 11 + b"\x01\x1f\x90"),
    ("a" * 255, 1, b"\x05\x01\x00\x03\xff" + b"a" * 255 + b"\x00\x01"),
])
def test_socks5_connect_request(host, port, request_):
    h = Handshake("socks5h", host, port)
    h.start()
    assert h.feed(b"\x05\x00") == request_


def test_socks5_user_password():
    h = Handshake("socks5", "192.0.2.1", 443, "alice", "s3cret")
    assert h.start() == GREETING_AUTH
    assert h.feed(b"\x05\x02") == AUTH_ALICE
    assert h.feed(b"\x01\x00") == CONNECT_V4
    assert h.feed(REPLY_OK + b"SSH-2.0-x\r\n") == b""
    assert h.done and h.leftover == b"SSH-2.0-x\r\n"


def test_socks5_user_may_get_no_auth():
    h = Handshake("socks5", "192.0.2.1", 443, "alice", "s3cret")
    h.start()
    assert h.feed(b"\x05\x00") == CONNECT_V4


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_socks5_any_split(split):
    h = Handshake("socks5", "192.0.2.1", 443, "alice", "s3cret")
    h.start()
    stream = b"\x05\x02" + b"\x01\x00" + REPLY_OK + b"hello"
    sent = h.feed(stream) if split == "whole" else feed_bytewise(h, stream)
    assert sent == AUTH_ALICE + CONNECT_V4
    assert h.done and h.leftover == b"hello" and h.bound == ("10.0.0.1", 1080)
    assert h.feed(b" more") == b"" and h.leftover == b"hello more"


@pytest.mark.parametrize("reply, bound", [
    (b"\x05\x00\x00\x03\x07proxy.x\x00\x35", ("proxy.x", 53)),
    (b"\x05\x00\x00\x04" + b"\xfe\x80" + b"\x00" * 13 + b"\x02\xff\xff", ("fe80::2", 65535)),
])
def test_socks5_bound_address(reply, bound):
    h = Handshake("socks5", "192.0.2.1", 443)
    h.start()
    h.feed(b"\x05\x00")
    assert feed_bytewise(h, reply + b"!") == b""
    assert h.done and h.bound == bound and h.leftover == b"!"


@pytest.mark.parametrize("rep, text", [
    (1, "general SOCKS server failure"),
    (2, "connection not allowed by ruleset"),
    (3, "network unreachable"),
    (4, "host unreachable"),
    (5, "connection refused by destination"),
    (6, "TTL expired"),
    (7, "command not supported"),
    (8, "address type not supported"),
    (9, "unassigned reply code"),
])
def test_socks5_refusals(rep, text):
    h = Handshake("socks5", "192.0.2.1", 443)
    h.start()
    h.feed(b"\x05\x00")
    with pytest.raises(ProxyError) as e:
        h.feed(bytes([5, rep]))            # known before the address arrives
    assert e.value.message == f"socks5 proxy refused: {text} (reply {rep})"


@pytest.mark.parametrize("user, answer, words", [
    ("", b"\x05\xff", "none of the offered authentication methods: give user:pass@"),
    ("alice", b"\x05\xff", "none of the offered authentication methods: check the user"),
    ("", b"\x05\x02", "chose authentication method 2, which was not offered"),
    ("alice", b"\x05\x01", "chose authentication method 1"),
    ("", b"\x04\x00", "answered version 4, not 5"),
    ("", b"HTTP/1.1 400 Bad Request\r\n\r\n", "answered version 72, not 5"),
])
def test_socks5_method_refusals(user, answer, words):
    h = Handshake("socks5", "192.0.2.1", 443, user, "pw" if user else "")
    h.start()
    with pytest.raises(ProxyError, match=words):
        h.feed(answer)


@pytest.mark.parametrize("answer, words", [
    (b"\x01\x01", "rejected the user name and password \\(status 1\\): check"),
    (b"\x05\x00", "answered version 5, not 1"),
])
def test_socks5_auth_refusals(answer, words):
    h = Handshake("socks5h", "example.com", 443, "alice", "s3cret")
    h.start()
    h.feed(b"\x05\x02")
    with pytest.raises(ProxyError, match="^socks5h proxy " + words):
        h.feed(answer)


@pytest.mark.parametrize("reply, words", [
    (b"\x04\x00\x00\x01" + bytes(6), "answered version 4, not 5"),
    (b"\x05\x00\x00\x02" + bytes(6), "address type 2"),
])
def test_socks5_reply_garbage(reply, words):
    h = Handshake("socks5", "192.0.2.1", 443)
    h.start()
    h.feed(b"\x05\x00")
    with pytest.raises(ProxyError, match=words):
        h.feed(reply)


@pytest.mark.parametrize("scheme, before", [
    ("socks5", b""), ("socks5", b"\x05"), ("socks5", b"\x05\x00\x05\x00\x00"),
    ("http", b""), ("http", b"HTTP/1.1 200 OK\r\n"),
])
def test_closed_during_handshake(scheme, before):
    h = Handshake(scheme, "192.0.2.1", 443)
    h.start()
    if before:
        h.feed(before)
    with pytest.raises(ProxyError, match=f"^{scheme} proxy closed the connection "
                                         "during the handshake$"):
        h.feed(b"")


@pytest.mark.parametrize("host, user, password, words", [
    ("a" * 256, "", "", "256 bytes long: at most 255"),
    ("192.0.2.1", "u" * 256, "", "user name is 256 bytes"),
    ("192.0.2.1", "u", "p" * 256, "password is 256 bytes"),
    ("", "", "", "no destination host"),
    ("bad host", "", "", "not a host name"),
    ("a\r\nb", "", "", "not a host name"),
    ("h\u00e9.example", "", "", "not a host name"),
    ("[2001:db8::1]", "", "", "not an IPv6 address"),
    ("fe80::1%eth0", "", "", "%zone is not taken"),
])
def test_bad_destination_or_credentials(host, user, password, words):
    for scheme in ("socks5", "http"):
        with pytest.raises(ProxyError, match=words):
            Handshake(scheme, host, 443, user, password)


def test_http_connect_request():
    assert Handshake("http", "example.com", 443).start() == (
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
    assert Handshake("http", "2001:db8::1", 22).start() == (
        b"CONNECT [2001:db8::1]:22 HTTP/1.1\r\nHost: [2001:db8::1]:22\r\n\r\n")
    # the credentials of RFC 7617 section 2
    assert Handshake("http", "192.0.2.1", 80, "Aladdin", "open sesame").start() == (
        b"CONNECT 192.0.2.1:80 HTTP/1.1\r\nHost: 192.0.2.1:80\r\n"
        b"Proxy-Authorization: Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ==\r\n\r\n")


ANSWER_OK = b"HTTP/1.1 200 Connection established\r\nVia: 1.1 p\r\n\r\nSSH-2.0-x\r\n"


@pytest.mark.parametrize("split", ["whole", "bytewise"])
def test_http_established(split):
    h = Handshake("http", "192.0.2.1", 22)
    h.start()
    sent = h.feed(ANSWER_OK) if split == "whole" else feed_bytewise(h, ANSWER_OK)
    assert sent == b""
    assert h.done and h.leftover == b"SSH-2.0-x\r\n" and h.bound is None


def test_http_other_2xx_and_1_0():
    h = Handshake("http", "192.0.2.1", 22)
    h.feed(b"HTTP/1.0 204\r\n\r\n")
    assert h.done and h.leftover == b""


@pytest.mark.parametrize("user, answer, message", [
    ("alice", b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n",
     "http proxy answered 407 Proxy Authentication Required: "
     "check the user and password in --proxy"),
    ("", b"HTTP/1.1 407 Proxy Authentication Required\r\nX: y\r\n\r\n",
     "http proxy answered 407 Proxy Authentication Required: "
     "give user:pass@ in the proxy URL"),
    ("", b"HTTP/1.1 403 Forbidden\r\n\r\n", "http proxy answered 403 Forbidden"),
    ("", b"HTTP/1.1 502\r\n\r\n", "http proxy answered 502"),
    ("", b"HTTP/1.1 503 " + b"x" * 100 + b"\r\n\r\n", "http proxy answered 503 " + "x" * 60),
    ("", b"HTTP/1.1 500 bad\x1b[31m\x00\r\n\r\n", "http proxy answered 500 bad[31m"),
    ("", b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
     "http proxy answered 101 Switching Protocols"),
])
def test_http_refusals(user, answer, message):
    h = Handshake("http", "192.0.2.1", 22, user, "pw" if user else "")
    with pytest.raises(ProxyError) as e:
        feed_bytewise(h, answer)
    assert e.value.message == message and str(e.value) == message


@pytest.mark.parametrize("answer, words", [
    (b"SSH-2.0-OpenSSH\r\n", "answered 'SSH-2.0-OpenSSH', not HTTP$"),
    (b"\x05\x00", "not HTTP$"),
    (b"HTTP/2 200\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 OK\r\n\r\n", "not HTTP/1.x"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000, "more than 16 KiB of headers"),
    (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 3000 + b"\r\n", "more than 16 KiB"),
])
def test_http_garbage(answer, words):
    h = Handshake("http", "192.0.2.1", 22)
    with pytest.raises(ProxyError, match=words):
        h.feed(answer)


def test_http_headers_up_to_the_limit():
    head = b"HTTP/1.1 200 OK\r\nX: " + b"y" * (16 * 1024 - 24) + b"\r\n\r\n"
    assert len(head) == 16 * 1024
    h = Handshake("http", "192.0.2.1", 22)
    h.feed(head + b"z")
    assert h.done and h.leftover == b"z"
    with pytest.raises(ProxyError, match="more than 16 KiB"):
        Handshake("http", "192.0.2.1", 22).feed(head[:20] + b"y" + head[20:])
