"""The benchmark's report: ratios, goals, the table and the README section."""
from __future__ import annotations

import pytest

from bench import report


def test_figure_is_the_median_of_runs_against_the_median_of_its_baseline():
    f = report.figure("k", "thing", "ms", [10, 30, 20], [5, 100, 10], "base",
                      goal="ratio <= 3")
    assert (f.value, f.baseline, f.runs) == (20, 10, 3)
    assert f.ratio == 2 and f.met is True
    assert f.spread == pytest.approx(1.0)


@pytest.mark.parametrize("goal, value, baseline, met", [
    ("ratio <= 3", 31, 10, False),
    ("ratio >= 0.97", 96, 100, False),
    ("ratio >= 0.97", 97, 100, True),
    ("value <= 60", 61, 1, False),
    ("value <= 60", 59, 1000, True),
    ("ratio == 1", 9, 9, True),
    ("ratio == 1", 10, 9, False),
    ("", 1, 2, None),
])
def test_goals(goal, value, baseline, met):
    assert report.figure("k", "l", "u", [value], [baseline], "b", goal=goal).met is met


def test_no_runs_is_an_error():
    with pytest.raises(ValueError):
        report.figure("k", "l", "u", [], [1], "b")


def test_table_has_one_row_per_figure_and_says_missed():
    figs = [report.figure("a", "start", "ms", [40], [20], "python", goal="ratio <= 3"),
            report.figure("b", "tcp", "Gbit/s", [9], [10], "outside", goal="ratio >= 0.97")]
    rows = report.table(figs).splitlines()
    assert len(rows) == 4
    assert "2.000" in rows[2] and "≤ 3x met" in rows[2]
    assert "0.900" in rows[3] and "MISSED" in rows[3]


def test_readme_section_replaced_between_markers_only():
    text = f"intro\n{report.BEGIN}\nold table\n{report.END}\nafter\n"
    out = report.replace_section(text, "new table")
    assert out == f"intro\n{report.BEGIN}\nnew table\n{report.END}\nafter\n"
    assert report.replace_section(out, "new table") == out
    with pytest.raises(ValueError):
        report.replace_section("no markers", "x")
    with pytest.raises(ValueError):
        report.replace_section(f"{report.BEGIN} but no end", "x")


def test_buckets_take_the_median_per_bucket():
    pts = [(0, 1.0), (1, 3.0), (2, 2.0), (10, 5.0), (19, 7.0)]
    assert report.buckets(pts, 10) == [(0, 2.0), (10, 6.0)]


def test_paired_ratio_is_the_median_of_per_round_ratios_with_quartiles():
    # drift: both sides double halfway; the per-round ratios stay at 0.9
    runs, base = [9, 9, 18, 18, 9], [10, 10, 20, 20, 10]
    f = report.figure("k", "l", "u", runs, base, "b", goal="ratio >= 0.97", paired=True)
    assert f.ratio == pytest.approx(0.9) and f.met is False
    assert f.ratio_iqr == pytest.approx((0.9, 0.9))
    assert "(0.90–0.90)" in report.table([f])
    unpaired = report.figure("k", "l", "u", [1, 2, 3], [1, 2], "b", paired=True)
    assert not unpaired.paired and unpaired.ratio_iqr is None


def test_per_unit_is_the_median_share_per_amount_of_each_part():
    parts = [{"relay": 1.0, "proxy": 2.0}, {"relay": 3.0, "proxy": 2.0},
             {"relay": 2.0}, {"relay": 9.0, "proxy": 9.0}]
    amounts = [1.0, 1.0, 2.0, 0.0]          # the last run moved nothing: left out
    out = report.per_unit(parts, amounts)
    assert out == {"proxy": pytest.approx(2.0), "relay": pytest.approx(1.0)}
    assert report.per_unit([], []) == {}


def test_a_failed_part_is_said_under_the_table():
    fig = report.figure("a", "start", "ms", [40], [20], "python")
    info = {"date": "d", "cpu": "c", "cpus": 2, "memory_gb": 1.0, "os": "o",
            "kernel": "k", "python": "p"}
    out = report.readme_section([fig], info, None,
                                {"proxy": "the proxy did not start:\n  no such file"})
    assert out.endswith("Not measured: proxy (the proxy did not start: no such file).")
    assert "Not measured" not in report.readme_section([fig], info, None, {})


def test_run_delta_counts_what_ran_between_snapshots():
    before = {"egress": (1000, 10), "ingress": (500, 5), "connect4": (70, 1),
              "sendmsg4": (9000, 90)}
    after = {"egress": (3000, 30), "ingress": (500, 5), "connect4": (70, 1),
             "sendmsg4": (40, 1),            # loaded anew in between: counts from 0
             "sock_create": (300, 2)}        # loaded in between
    assert report.run_delta(before, after) == {
        "egress": (2000, 20), "sendmsg4": (40, 1), "sock_create": (300, 2)}
    assert report.run_delta({}, {}) == {}


def test_program_costs_sum_each_workloads_runs_before_dividing():
    deltas = [("udp", {"egress": (100, 1)}), ("tcp", {"egress": (300, 10)}),
              ("udp", {"egress": (500, 3), "ingress": (60, 2)})]
    costs = report.program_costs(deltas)
    assert [(c["workload"], c["program"], c["ns"], c["runs"]) for c in costs] == [
        ("udp", "egress", 600, 4), ("udp", "ingress", 60, 2), ("tcp", "egress", 300, 10)]
    assert costs[0]["ns_per_run"] == 150 and costs[2]["ns_per_run"] == 30
    assert report.program_costs([]) == []


def test_program_table_has_a_row_per_program_and_a_column_per_workload():
    costs = report.program_costs([("tcp", {"egress": (60_000, 1000), "ingress": (900, 20)}),
                                  ("conn", {"connect4": (1234, 2), "egress": (500, 5)})])
    rows = report.program_table(costs, {"tcp": "TCP", "conn": "connect"}).splitlines()
    assert rows[0] == "| program: ns per run (runs counted) | TCP | connect |"
    assert len(rows) == 2 + 3
    assert rows[2] == "| egress | 60.0 ns (1,000) | 100 ns (5) |"     # most runs first
    assert rows[3] == "| ingress | 45.0 ns (20) | – |"
    assert rows[4] == "| connect4 | – | 617 ns (2) |"
    assert report.program_table([], {"tcp": "TCP"}) == ""


def test_readme_section_shows_the_program_table_when_there_is_one():
    fig = report.figure("a", "start", "ms", [40], [20], "python")
    info = {"date": "d", "cpu": "c", "cpus": 2, "memory_gb": 1.0, "os": "o",
            "kernel": "k", "python": "p"}
    out = report.readme_section([fig], info, None, programs="| program | x |")
    assert out.endswith(f"{report.PROGRAMS_NOTE}\n\n| program | x |")
    assert report.PROGRAMS_NOTE not in report.readme_section([fig], info, None)


def test_a_row_not_measured_says_why_and_its_goal_and_is_never_met_or_missed():
    fig = report.figure("a", "start", "ms", [40], [20], "python", goal="ratio <= 3")
    gone = report.Missing("sd", "systemd scope start", "no podman\nhere", "ratio <= 1.5")
    rows = report.table([gone, fig]).splitlines()
    assert rows[2] == ("| systemd scope start | not measured: no podman here | – | – | "
                       "≤ 1.5x not measured |")
    assert "≤ 3x met" in rows[3]
    assert gone.met is None and gone.as_dict()["why"] == "no podman\nhere"
    assert report.table([report.Missing("k", "l", "why")]).splitlines()[2].endswith("| – |  |")


def test_ns_per_sums_every_program_over_the_operations():
    assert report.ns_per({"connect4": (3000, 10), "egress": (7000, 40)}, 10) == 1000
    assert report.ns_per({}, 10) == 0 and report.ns_per({"egress": (5, 1)}, 0) == 0


@pytest.mark.parametrize("linger, pause", [(None, 3.0), (0.5, 3.0), (2.0, 3.0), (5.0, 6.0)])
def test_the_lone_pause_outlasts_any_linger(linger, pause):
    assert report.lone_pause(linger, 3.0) == pause


@pytest.mark.parametrize("status, mode", [
    ({"relay_forward": "sockmap"}, "sockmap"),
    ({"relay": {"relay_forward": "splice"}}, "splice"),
    ({"relay": {"forward": "sockmap"}}, "sockmap"),
    ({"relay": {"mode": "splice"}}, "splice"),
    ({"relay": "up"}, "?"),
    ({"relay_forward": None, "sessions": []}, "?"),
    ({}, "?"),
])
def test_relay_forward_is_read_where_status_may_put_it(status, mode):
    assert report.relay_forward(status) == mode


def test_proxychains_conf_is_strict_with_the_one_socks5_proxy():
    conf = report.proxychains_conf("203.0.113.20", 1080).splitlines()
    assert conf[0] == "strict_chain"
    assert conf[-2:] == ["[ProxyList]", "socks5 203.0.113.20 1080"]
    assert not any(line.startswith(("dynamic_chain", "random_chain", "proxy_dns"))
                   for line in conf)


def test_peer_columns_take_medians_and_the_reported_mode_of_netleaks_paths():
    runs = {"netleak:sockmap": [{"mbps": 10.0, "start_ms": 5.0}, {"mbps": 30.0, "start_ms": 7.0},
                                {"mbps": 20.0, "start_ms": 6.0}],
            "own": [{"mbps": 40.0}]}
    cols = report.peer_columns(runs, {"sockmap": "splice"})
    assert [c["name"] for c in cols] == ["netleak (sockmap)", "client's own SOCKS5"]
    assert cols[0]["mbps"] == 20.0 and cols[0]["start_ms"] == 6.0
    assert cols[0]["reported"] == "splice" and cols[1]["reported"] == ""
    assert cols[1]["start_ms"] is None
    assert report.peer_columns({"netleak:splice": []}, {})[0]["reported"] == "?"


def test_peer_table_has_a_column_per_path_and_a_row_per_value():
    cols = report.peer_columns({"netleak:splice": [{"mbps": 1234.0, "connect_ms": 0.5}],
                                "proxychains4": [{"mbps": 1000.0, "connect_ms": 0.4}]}, {})
    rows = report.peer_table(cols).splitlines()
    assert rows[0] == "| | netleak (splice) | proxychains4 |"
    assert rows[2] == "| forwarding mode reported | ? | – |"
    assert len(rows) == 3 + len(report.PEER_ROWS)
    assert "| download (MB/s) | 1,234 | 1,000 |" in rows
    assert "| start, one-connection client (ms) | – | – |" in rows
    assert report.peer_table([]) == ""


def test_readme_section_shows_the_peer_table_when_there_is_one():
    fig = report.figure("a", "start", "ms", [40], [20], "python")
    info = {"date": "d", "cpu": "c", "cpus": 2, "memory_gb": 1.0, "os": "o",
            "kernel": "k", "python": "p"}
    out = report.readme_section([fig], info, None, peers="| | x |")
    assert out.endswith(f"{report.PEERS_NOTE}\n\n| | x |")
    assert report.PEERS_NOTE not in report.readme_section([fig], info, None)


@pytest.mark.parametrize("env, linger", [
    ({"NETLEAK_LINGER_SECONDS": "2.5"}, 2.5),
    ({"NETLEAK_LINGER_SECONDS": "soon"}, None),
    ({}, 5.0),                  # the configuration's default
])
def test_the_linger_is_read_from_the_environment_when_set(env, linger):
    from bench import run
    assert run.linger_seconds(env) == linger
