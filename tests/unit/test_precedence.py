"""netleak's rules ahead of others', and what shadows them (core/precedence.py)."""
from __future__ import annotations

import pytest

from netleak_hook.core import precedence as pr
from netleak_hook.core.precedence import Listed


def others(*prios: int, table: int = 51820, action: str = "lookup", **kw) -> list[Listed]:
    return [Listed(4, p, table, False, action=action, **kw) for p in prios]


LOCAL0 = others(0, table=255)
MAIN_DEFAULT = others(32766, table=254) + others(32767, table=253)


@pytest.mark.parametrize("foreign,want", [
    ([], 1700),
    (LOCAL0 + MAIN_DEFAULT, 1700),        # local, main, default: not ahead
    (others(5210, 5230), 1700),           # Tailscale's: behind
    (others(1699, 1698), 1697),           # wg-quick up after netleak
    (others(1700), 1699),                 # a tie goes to whoever was first: move
    (others(1697, 1698, 1699), 1696),     # stable: the same answer once moved
    (others(100, 1699), 99),
    (others(3), 2),                       # never below 2 (--allow uses P-1):
    (others(2), 1700), (others(1), 1700),   # those it cannot get ahead of: no move
    # an admin's refusals and a VRF's rules stay ahead; so does the local table
    (others(100, action="prohibit") + others(1699), 1698),
    (others(1000, l3mdev=True), 1700),
    (others(1000, table=255) + others(1500), 1499),
    (others(1000, table=255) + others(999), 1700),    # no room after local: stay
    (others(1600, table=255) + others(1601), 1700),   # no room either
])
def test_rule_priority(foreign, want):
    assert pr.rule_priority(1700, LOCAL0 + foreign) == want


def test_a_configured_priority_below_the_floor_stays():
    assert pr.rule_priority(1, others(1)) == 1


def test_netleaks_own_rules_do_not_move_it():
    assert pr.rule_priority(1700, [Listed(4, 1697, 28200, True)]) == 1700


MARK, TABLE = 0x6E6C0001, 28200
OURS = Listed(4, 1697, TABLE, True, MARK, "1697: from all fwmark 0x6e6c0001 lookup 28200")
WG = Listed(4, 1698, 51820, False, 51820, "1698: not from all fwmark 0xca6c lookup 51820")
SUPPRESS = Listed(4, 1699, 254, False, None, "1699: from all lookup main suppress_prefixlength 0")
LOCAL = Listed(4, 0, 255, False, None, "0: from all lookup local")


def test_reaching_its_table_is_no_shadow():
    assert pr.shadowed_by([LOCAL, OURS, WG], 4, MARK, TABLE, TABLE) is None


def test_the_rule_whose_table_took_the_packet_is_named():
    listed = [LOCAL, SUPPRESS, WG, OURS]
    assert pr.shadowed_by(listed, 4, MARK, TABLE, 51820) == WG.text


def test_no_route_names_the_first_rule_ahead():
    assert pr.shadowed_by([LOCAL, SUPPRESS, WG, OURS], 4, MARK, TABLE, None) == SUPPRESS.text


def test_a_missing_rule_of_netleaks_is_said():
    assert "is missing" in pr.shadowed_by([LOCAL, WG], 4, MARK, TABLE, 51820)


def test_another_family_is_not_blamed():
    v6 = Listed(6, 1, 51820, False, None, "1: from all lookup 51820")
    why = pr.shadowed_by([LOCAL, v6, OURS], 4, MARK, TABLE, 254)
    assert why == "a rule of another kind (table main)"


def test_rule_text_reads_as_ip_rule_prints_it():
    assert pr.rule_text(1698, invert=True, fwmark=51820, table=51820) == \
        "1698: not from all fwmark 0xca6c lookup 51820"
    assert pr.rule_text(1699, table=254, suppress=0) == \
        "1699: from all lookup main suppress_prefixlength 0"
    assert pr.rule_text(10, src="192.0.2.0/24", dst="198.51.100.0/24", fwmark=1,
                        fwmask=0xFF, iif="eth0", oif="wg0", action="prohibit") == \
        "10: from 192.0.2.0/24 to 198.51.100.0/24 fwmark 0x1/0xff iif eth0 oif wg0 prohibit"
