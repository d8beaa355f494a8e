"""netleak_hook.core.validate: interface names and --via gateways."""
from __future__ import annotations

import pytest

from netleak_hook.core import validate
from netleak_hook.core.errors import NetleakError


@pytest.mark.parametrize("name", ["wg0", "tun0", "ppp0", "eth0.100", "a" * 15,
                                  "wg-mullvad_se1", "enp0s31f6", "x", "lo0", "l"])
def test_interface_name_accepted(name):
    assert validate.interface_name(name) == name


@pytest.mark.parametrize("name", [
    "", "a" * 16, "a" * 40, "wg/0", "/", "wg:0", "eth0:1", "wg 0", " wg0", "wg0\t",
    "wg0\n", "wg\x00", "wg\x07", "wg\x7f", "\u00a0wg", ".", "..", "lo",
])
def test_interface_name_refused_one_line(name):
    with pytest.raises(NetleakError) as ei:
        validate.interface_name(name)
    e = ei.value
    assert e.exit_status == 125
    assert e.message and "\n" not in e.message and "\r" not in e.message
    assert str(e) == e.message


def test_interface_name_lo_message_suggests_alternative():
    with pytest.raises(NetleakError, match="lo"):
        validate.interface_name("lo")


def test_interface_name_too_long_message_mentions_limit():
    with pytest.raises(NetleakError, match="15"):
        validate.interface_name("a" * 16)


def test_interface_name_length_counts_bytes():
    name = "\u00e9" * 8          # 8 characters, 16 bytes in UTF-8
    with pytest.raises(NetleakError):
        validate.interface_name(name)


# ---------- gateways ----------

def test_gateways_none():
    assert validate.gateways(()) == (None, None)
    assert validate.gateways([]) == (None, None)


def test_gateways_split_families():
    assert validate.gateways(["192.0.2.1"]) == ("192.0.2.1", None)
    assert validate.gateways(["2001:db8::1"]) == (None, "2001:db8::1")
    assert validate.gateways(["2001:db8::1", "192.0.2.1"]) == ("192.0.2.1", "2001:db8::1")
    assert validate.gateways(("192.0.2.1", "fe80::1")) == ("192.0.2.1", "fe80::1")


def test_gateways_normalized():
    assert validate.gateways(["2001:DB8:0:0::1"]) == (None, "2001:db8::1")


@pytest.mark.parametrize("bad", ["gateway", "192.0.2", "192.0.2.1/24", "", "300.1.1.1",
                                 "2001:db8::g", "192.0.2.1\n"])
def test_gateways_not_an_ip(bad):
    with pytest.raises(NetleakError) as ei:
        validate.gateways([bad])
    assert ei.value.exit_status == 125
    assert "\n" not in ei.value.message
    assert "--via" in ei.value.message


@pytest.mark.parametrize("bad", ["224.0.0.1", "239.1.2.3", "ff02::1", "127.0.0.1",
                                 "127.1.2.3", "::1", "0.0.0.0", "::"])
def test_gateways_not_unicast(bad):
    with pytest.raises(NetleakError) as ei:
        validate.gateways([bad])
    assert "unicast" in ei.value.message
    assert "\n" not in ei.value.message


@pytest.mark.parametrize("pair,fam", [(["192.0.2.1", "192.0.2.2"], "IPv4"),
                                      (["192.0.2.1", "192.0.2.1"], "IPv4"),
                                      (["2001:db8::1", "fe80::1"], "IPv6")])
def test_gateways_two_of_one_family(pair, fam):
    with pytest.raises(NetleakError) as ei:
        validate.gateways(pair)
    assert fam in ei.value.message
    assert "\n" not in ei.value.message


def test_gateways_bad_later_value_still_refused():
    with pytest.raises(NetleakError):
        validate.gateways(["192.0.2.1", "2001:db8::1", "nope"])
