"""netleak_hook.core.config: defaults and NETLEAK_* environment parsing."""
from __future__ import annotations

import os

import pytest

from netleak_hook.core import config as cf
from netleak_hook.core.config import Config
from netleak_hook.core.errors import NetleakError


def test_defaults():
    c = Config()
    assert c.run_dir is None
    assert c.bpf_dir == "/sys/fs/bpf/netleak"
    assert c.cgroup_parent == "netleak"
    assert c.mark_base == cf.DEFAULT_MARK_BASE == 0x6E6C0000
    assert c.table_base == cf.DEFAULT_TABLE_BASE == 28200
    assert c.rule_priority == cf.DEFAULT_RULE_PRIORITY == 1700
    assert c.max_interfaces == cf.DEFAULT_MAX_INTERFACES == 64
    assert c.log_file is None
    c.check()   # defaults are valid


def test_defaults_clear_of_other_tools():
    assert cf.DEFAULT_MARK_BASE & 0xFFFF == 0
    assert cf.DEFAULT_TABLE_BASE >= 256
    for t in (51820, 52, 1836018789):    # wg-quick, Tailscale, Mullvad
        assert not cf.DEFAULT_TABLE_BASE <= t < cf.DEFAULT_TABLE_BASE + cf.DEFAULT_MAX_INTERFACES
    assert not 5210 <= cf.DEFAULT_RULE_PRIORITY <= 5310
    assert cf.DEFAULT_RULE_PRIORITY < 32766


def test_from_env_empty_is_defaults():
    assert Config.from_env({}) == Config()


def test_from_env_empty_values_are_unset():
    env = {k: "" for k in ("NETLEAK_RUN_DIR", "NETLEAK_MARK_BASE", "NETLEAK_TABLE_BASE",
                           "NETLEAK_RULE_PRIORITY", "NETLEAK_CGROUP_PARENT")}
    assert Config.from_env(env) == Config()


def test_from_env_all_variables():
    env = {
        "NETLEAK_RUN_DIR": "/tmp/nl",
        "NETLEAK_BPF_DIR": "/sys/fs/bpf/other",
        "NETLEAK_CGROUP_PARENT": "test.slice/nl",
        "NETLEAK_MARK_BASE": "0x12340000",
        "NETLEAK_TABLE_BASE": "5000",
        "NETLEAK_RULE_PRIORITY": "0x10",
        "NETLEAK_LOG_FILE": "/tmp/nl.log",
        "NETLEAK_RECONCILE_SECONDS": "2.5",
        "UNRELATED": "x",
        "NETLEAK_UNKNOWN": "ignored",
    }
    c = Config.from_env(env)
    assert c == Config(run_dir="/tmp/nl", bpf_dir="/sys/fs/bpf/other",
                       cgroup_parent="test.slice/nl", mark_base=0x12340000,
                       table_base=5000, rule_priority=16, log_file="/tmp/nl.log",
                       reconcile_seconds=2.5)
    assert isinstance(c.mark_base, int) and isinstance(c.table_base, int)


@pytest.mark.parametrize("raw,value", [("0x20000", 0x20000), ("0X30000", 0x30000),
                                       ("131072", 131072), ("0o400000", 0o400000)])
def test_from_env_number_bases(raw, value):
    assert Config.from_env({"NETLEAK_MARK_BASE": raw}).mark_base == value


@pytest.mark.parametrize("name", ["NETLEAK_MARK_BASE", "NETLEAK_TABLE_BASE",
                                  "NETLEAK_RULE_PRIORITY"])
@pytest.mark.parametrize("raw", ["abc", "12x", "0xZZ", "1.5", "ten\nlines"])
def test_from_env_bad_number(name, raw):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({name: raw})
    e = ei.value
    assert e.exit_status == 125
    assert name in e.message
    assert "\n" not in e.message
    assert str(e) == e.message


@pytest.mark.parametrize("raw", ["x", "1s", "0x10", "1,5"])
def test_reconcile_seconds_not_a_number(raw):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({"NETLEAK_RECONCILE_SECONDS": raw})
    assert "NETLEAK_RECONCILE_SECONDS" in ei.value.message
    assert "a number" in ei.value.message


@pytest.mark.parametrize("raw", ["0", "0.05", "-1", "86401", "inf", "nan"])
def test_reconcile_seconds_out_of_range(raw):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({"NETLEAK_RECONCILE_SECONDS": raw})
    assert "between 0.1 and 86400" in ei.value.message


def test_reconcile_seconds_default_and_bounds():
    assert Config().reconcile_seconds == 1.0
    Config(reconcile_seconds=0.1).check()
    Config(reconcile_seconds=86400).check()


@pytest.mark.parametrize("mark", ["0x6e6c0001", "0x8000", "1", "0xFFFF"])
def test_mark_base_low_bits_refused(mark):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({"NETLEAK_MARK_BASE": mark})
    assert "NETLEAK_MARK_BASE" in ei.value.message
    assert ei.value.exit_status == 125
    assert "\n" not in ei.value.message


@pytest.mark.parametrize("mark", [0, -0x10000])
def test_mark_base_zero_or_negative_refused(mark):
    with pytest.raises(NetleakError):
        Config(mark_base=mark).check()


def test_mark_base_extremes():
    Config(mark_base=0x10000).check()
    Config(mark_base=0xFFFF0000).check()
    with pytest.raises(NetleakError):
        Config(mark_base=0x100000000).check()


@pytest.mark.parametrize("var,value", [
    *[("NETLEAK_TABLE_BASE", t) for t in ("0", "52", "253", "254", "255")],
    *[("NETLEAK_RULE_PRIORITY", p) for p in ("0", "-1", "32001", "32766", "99999")],
])
def test_out_of_range_refused(var, value):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({var: value})
    assert var in ei.value.message
    assert "\n" not in ei.value.message


def test_table_base_bounds():
    Config(table_base=256).check()
    Config(table_base=0xFFFFFFFF - 64).check()
    with pytest.raises(NetleakError):
        Config(table_base=0xFFFFFFFF - 63).check()     # last slot would overflow
    with pytest.raises(NetleakError):
        Config(table_base=-1).check()


@pytest.mark.parametrize("prio", [1, 32000])
def test_priority_bounds_accepted(prio):
    Config(rule_priority=prio).check()


@pytest.mark.parametrize("parent", ["/", "//", "..", "a/../b", "../x", "netleak/.."])
def test_cgroup_parent_refused(parent):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({"NETLEAK_CGROUP_PARENT": parent})
    assert "NETLEAK_CGROUP_PARENT" in ei.value.message
    assert ei.value.exit_status == 125


def test_cgroup_parent_empty_refused_by_check():
    # from_env treats "" as unset; check() itself refuses an empty parent
    with pytest.raises(NetleakError):
        Config(cgroup_parent="").check()


@pytest.mark.parametrize("parent", ["netleak", "/netleak/", "a/b/c", "a..b", "x.slice"])
def test_cgroup_parent_accepted(parent):
    assert Config.from_env({"NETLEAK_CGROUP_PARENT": parent}).cgroup_parent == parent


def test_eq():
    assert Config() == Config()
    assert Config(table_base=300) == Config(table_base=300)
    assert Config(table_base=300) != Config(table_base=301)
    assert Config(log_file="/x") != Config()
    assert Config() != object()
    assert Config() != "Config()"


def test_repr_names_every_field():
    r = repr(Config(run_dir="/tmp/r", mark_base=0x10000))
    assert r.startswith("Config(") and r.endswith(")")
    for k in Config.__slots__:
        assert f"{k}=" in r
    assert "run_dir='/tmp/r'" in r
    assert "mark_base=65536" in r


@pytest.mark.parametrize("raw,want", [("1", True), ("0", False), ("", True)])
def test_autostart(raw, want):
    assert Config.from_env({"NETLEAK_AUTOSTART": raw}).autostart is want


@pytest.mark.parametrize("raw", ["yes", "true", "2", " 1"])
def test_autostart_bad_value(raw):
    with pytest.raises(NetleakError) as ei:
        Config.from_env({"NETLEAK_AUTOSTART": raw})
    assert ei.value.message == f"NETLEAK_AUTOSTART={raw!r} must be 1 or 0"


def test_no_autostart_refuses_with_who_should_start_it(tmp_path):
    from netleak_hook import client
    from netleak_hook.rundir.store import Store
    with pytest.raises(NetleakError) as ei:
        client.request_starting_daemon(Store(str(tmp_path)), {"op": "ping"},
                                       autostart=False)
    assert "NETLEAK_AUTOSTART=0" in ei.value.message
    assert "\n" not in ei.value.message
    assert os.listdir(tmp_path) == []
