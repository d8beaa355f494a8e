"""Proxy URLs: what proxy mode takes, and one-line refusals for the rest."""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netleak_hook.core import proxyspec
from netleak_hook.core.errors import NetleakError


@pytest.mark.parametrize("url, want", [
    ("socks5://127.0.0.1:1080", ("socks5", "127.0.0.1", 1080, "", "")),
    ("SOCKS5H://u%40x:p%3Aw@[2001:db8::1]:1080/", ("socks5h", "2001:db8::1", 1080, "u@x", "p:w")),
    ("http://proxy.example:3128", ("http", "proxy.example", 3128, "", "")),
    ("socks5://user@192.0.2.1:9050", ("socks5", "192.0.2.1", 9050, "user", "")),
])
def test_accepted(url, want):
    s = proxyspec.parse(url)
    assert (s.scheme, s.host, s.port, s.user, s.password) == want
    assert s.remote_dns is (s.scheme == "socks5h")
    assert proxyspec.parse(s.url(secret=True)) == s


def test_password_hidden_unless_asked():
    s = proxyspec.parse("socks5://me:secret@192.0.2.1:1080")
    assert "secret" not in s.url() and "***" in s.url()
    assert "secret" in s.url(secret=True)


@pytest.mark.parametrize("url, words", [
    ("socks4://192.0.2.1:1080", "scheme must be one of"),
    ("192.0.2.1:1080", "scheme must be one of"),
    ("socks5://192.0.2.1", "port"),
    ("socks5://192.0.2.1:0", "port"),
    ("socks5://192.0.2.1:70000", "range"),
    ("socks5://:1080", "no proxy host"),
    ("http://192.0.2.1:3128/path", "only scheme, host and port"),
    ("socks5://192.0.2.1:1080?x=1", "only scheme, host and port"),
    ("socks5://:pw@192.0.2.1:1080", "needs a user name"),
    ("socks5://[fe80::1%25eth0]:1080", "zone"),
    ("socks5://bad_host!:1080", "neither an address nor a host name"),
    ("socks5://" + "a" * 300 + "@192.0.2.1:1", "at most 255 bytes"),
])
def test_refused_in_one_line(url, words):
    with pytest.raises(NetleakError) as e:
        proxyspec.parse(url)
    assert words in e.value.message
    assert "\n" not in e.value.message and e.value.exit_status == 125


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.text(max_size=80) | st.builds(lambda s, rest: s + "://" + rest,
                                        st.sampled_from(proxyspec.SCHEMES), st.text(max_size=60)))
def test_any_text_is_a_proxy_or_a_one_line_refusal(url):
    """Whatever the text: a spec that round-trips, or a one-line refusal."""
    try:
        s = proxyspec.parse(url)
    except NetleakError as e:
        assert e.message.isprintable()
        return
    assert s.scheme in proxyspec.SCHEMES and 0 < s.port < 65536 and s.host
    assert proxyspec.parse(s.url(secret=True)) == s
