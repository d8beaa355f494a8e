"""The benchmark's figures: ratios against baselines, goals, the Markdown
table and the README's copy of it. Pure: run.py measures, this decides and
formats."""
from __future__ import annotations

import dataclasses
import statistics

BEGIN = "<!-- bench:begin -->"
END = "<!-- bench:end -->"


@dataclasses.dataclass
class Figure:
    """One measured figure: the median of netleak's runs next to the median
    of its baseline's, measured in the same run."""
    key: str
    label: str
    unit: str
    value: float
    baseline: float
    baseline_label: str
    runs: int
    goal: str = ""          # "ratio <= 3", "ratio >= 0.97", "value <= 60", "ratio == 1",
                            # "delta <= 10" (netleak's less the baseline's, in UNIT)
    spread: float = 0.0     # (max - min) / median of netleak's runs
    samples: tuple = ()     # netleak's runs, then the baseline's, as measured
    base_samples: tuple = ()
    paired: bool = False    # run i of each was measured next to the other's run i

    def _pair_ratios(self) -> list[float]:
        return sorted(a / b for a, b in zip(self.samples, self.base_samples) if b)

    @property
    def ratio(self) -> float:
        """Paired runs: the median of the per-round ratios (drift between
        rounds cancels); otherwise the ratio of the two medians."""
        if self.paired and self._pair_ratios():
            return statistics.median(self._pair_ratios())
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def ratio_iqr(self) -> tuple[float, float] | None:
        """Quartiles of the per-round ratios (paired runs, 4 or more)."""
        r = self._pair_ratios() if self.paired else []
        if len(r) < 4:
            return None
        q = statistics.quantiles(r, n=4)
        return q[0], q[2]

    @property
    def delta(self) -> float:
        """Netleak's less the baseline's: paired runs, the median of the
        per-round differences; otherwise of the two medians."""
        if self.paired and self.samples and self.base_samples:
            return statistics.median(a - b for a, b in zip(self.samples, self.base_samples))
        return self.value - self.baseline

    @property
    def met(self) -> bool | None:
        """Whether the goal is met; None without a goal."""
        if not self.goal:
            return None
        what, op, limit = self.goal.split()
        x = {"ratio": self.ratio, "delta": self.delta}.get(what, self.value)
        return {"<=": x <= float(limit), ">=": x >= float(limit),
                "==": abs(x - float(limit)) < 1e-9}[op]

    def as_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(ratio=self.ratio, ratio_iqr=self.ratio_iqr, met=self.met, delta=self.delta)
        return d


@dataclasses.dataclass(frozen=True)
class Missing:
    """A row of the table with no figure: not measured, and why (never a
    made-up number)."""
    key: str
    label: str
    why: str
    goal: str = ""
    met = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def figure(key: str, label: str, unit: str, runs: list[float], base: list[float],
           baseline_label: str, goal: str = "", paired: bool = False) -> Figure:
    """A figure from repeated runs of netleak and of its baseline (PAIRED:
    run i of each was measured next to the other's run i)."""
    if not runs or not base:
        raise ValueError(f"{key}: no runs")
    med = statistics.median(runs)
    spread = (max(runs) - min(runs)) / med if med else 0.0
    return Figure(key, label, unit, med, statistics.median(base), baseline_label,
                  len(runs), goal, spread, tuple(runs), tuple(base),
                  paired and len(runs) == len(base))


def _num(x: float, unit: str) -> str:
    if unit in ("rules",):
        return f"{x:.0f} {unit}"
    if abs(x) >= 100:
        return f"{x:,.0f} {unit}"
    if abs(x) >= 10:
        return f"{x:.1f} {unit}"
    return f"{x:.2f} {unit}"


def _goal(f: Figure) -> str:
    if not f.goal:
        return ""
    return f"{_goal_text(f.goal, f.unit)} {'met' if f.met else 'MISSED'}"


def _goal_text(goal: str, unit: str) -> str:
    what, op, limit = goal.split()
    sign = {"<=": "≤", ">=": "≥", "==": "="}[op]
    if what == "delta":
        return f"{sign} +{limit}" + (f" {unit}" if unit else "") + " over it"
    return f"{sign} {limit}" + ("x" if what == "ratio" else f" {unit}" if unit else "")


def table(figures: list[Figure | Missing]) -> str:
    """The Markdown table: one row per figure (a Missing one says why it
    has no figure)."""
    rows = ["| figure | netleak | baseline (same run) | ratio (quartiles) | goal |",
            "|---|---|---|---|---|"]
    for f in figures:
        if isinstance(f, Missing):
            goal = f"{_goal_text(f.goal, '')} not measured" if f.goal else ""
            rows.append(f"| {f.label} | not measured: {' '.join(f.why.split())} | – | – | "
                        f"{goal} |")
            continue
        iqr = f.ratio_iqr
        spread = f" ({iqr[0]:.2f}–{iqr[1]:.2f})" if iqr else ""
        rows.append(f"| {f.label} | {_num(f.value, f.unit)} | "
                    f"{_num(f.baseline, f.unit)} ({f.baseline_label}) | {f.ratio:.3f}{spread} | "
                    f"{_goal(f)} |")
    return "\n".join(rows)


def machine_line(machine: dict) -> str:
    return (f"Measured {machine['date']} on {machine['cpu']} ({machine['cpus']} CPUs), "
            f"{machine['memory_gb']:.1f} GB, {machine['os']}, Linux {machine['kernel']}, "
            f"Python {machine['python']}. Each figure is the median of its runs "
            f"(all of them in bench/results.json); runs alternate with their "
            f"baseline's, and the ratio of such pairs is the median of the "
            f"per-pair ratios, with their quartiles.")


def not_measured(failures: dict[str, str]) -> str:
    """One line per part that failed (and so has no rows): which, and why."""
    return "\n".join(f"Not measured: {part} ({' '.join(str(why).split())})."
                     for part, why in failures.items())


PROGRAMS_NOTE = ("Each netleak program's own time per run, as the kernel counts it "
                 "(kernel.bpf_stats_enabled, on for the traffic runs), over all the "
                 "runs inside sessions of each traffic figure above:")


def readme_section(figures: list[Figure | Missing], machine: dict, plot: str | None,
                   failures: dict[str, str] | None = None, programs: str = "",
                   peers: str = "") -> str:
    parts = [machine_line(machine), "", table(figures)]
    if programs:
        parts += ["", PROGRAMS_NOTE, "", programs]
    if peers:
        parts += ["", PEERS_NOTE, "", peers]
    if failures:
        parts += ["", not_measured(failures)]
    if plot:
        parts += ["", f"![start time and daemon memory against sessions]({plot})"]
    return "\n".join(parts)


def replace_section(text: str, section: str) -> str:
    """TEXT with what stands between the bench markers replaced by SECTION."""
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        raise ValueError(f"no {BEGIN} marker")
    _, sep, tail = rest.partition(END)
    if not sep:
        raise ValueError(f"no {END} marker after {BEGIN}")
    return f"{head}{BEGIN}\n{section}\n{END}{tail}"


def per_unit(parts: list[dict[str, float]], amounts: list[float]) -> dict[str, float]:
    """The median over runs of each part's share divided by the run's
    amount (CPU seconds per GB moved, say); runs with no amount are left
    out, and a part missing from a run counts as 0 in it."""
    runs = [(p, a) for p, a in zip(parts, amounts) if a]
    keys = sorted({k for p, _ in runs for k in p})
    return {k: statistics.median(p.get(k, 0.0) / a for p, a in runs) for k in keys}


def lone_pause(linger: float | None, least: float) -> float:
    """The pause before a lone start "after a pause": LEAST, or a second
    more than LINGER (how long an interface's set-up stays after its last
    session, when netleak says) when that is longer."""
    return max(least, linger + 1.0) if linger is not None else least


def buckets(points: list[tuple[int, float]], width: int) -> list[tuple[int, float]]:
    """Median of (x, y) points per bucket of WIDTH on x: (bucket start, median)."""
    by: dict[int, list[float]] = {}
    for x, y in points:
        by.setdefault(x // width * width, []).append(y)
    return [(k, statistics.median(v)) for k, v in sorted(by.items())]


# ----- the programs' own time, as the kernel counts it (bpf_stats_enabled) -----

def run_delta(before: dict[str, tuple[int, int]],
              after: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """(ns, runs) of each program between two snapshots of its
    (run_time_ns, run_cnt); a program absent before (loaded in between)
    or counted lower (loaded anew) counts from 0, one that did not run is
    left out."""
    out = {}
    for name, (ns, runs) in after.items():
        ns0, runs0 = before.get(name, (0, 0))
        if runs < runs0 or ns < ns0:
            ns0, runs0 = 0, 0
        if runs > runs0:
            out[name] = (ns - ns0, runs - runs0)
    return out


def ns_per(delta: dict[str, tuple[int, int]], n: int) -> float:
    """The ns all programs of a run_delta spent, per one of N operations."""
    return sum(ns for ns, _ in delta.values()) / n if n else 0.0


def program_costs(deltas: list[tuple[str, dict[str, tuple[int, int]]]]) -> list[dict]:
    """Per workload and program, the sums over the workload's runs: ns,
    runs and ns per run (the mean, exact: the kernel's own totals), sorted
    by workload as first seen, then program."""
    sums: dict[tuple[str, str], list[int]] = {}
    order: dict[str, int] = {}
    for workload, delta in deltas:
        order.setdefault(workload, len(order))
        for prog, (ns, runs) in delta.items():
            s = sums.setdefault((workload, prog), [0, 0])
            s[0] += ns
            s[1] += runs
    return [{"workload": w, "program": p, "ns": ns, "runs": runs, "ns_per_run": ns / runs}
            for (w, p), (ns, runs) in sorted(sums.items(), key=lambda kv: (order[kv[0][0]],
                                                                              kv[0][1]))]


def program_table(costs: list[dict], labels: dict[str, str]) -> str:
    """The Markdown table of program_costs: a row per program, a column per
    workload (LABELS: workload -> its heading, in column order) holding ns
    per run and the runs counted. Empty without costs."""
    if not costs:
        return ""
    by = {(c["workload"], c["program"]): c for c in costs}
    workloads = [w for w in labels if any(c["workload"] == w for c in costs)]
    workloads += [w for w in dict.fromkeys(c["workload"] for c in costs) if w not in labels]
    progs = sorted({c["program"] for c in costs},
                   key=lambda p: (-sum(c["runs"] for c in costs if c["program"] == p), p))
    rows = ["| program: ns per run (runs counted) | " +
            " | ".join(labels.get(w, w) for w in workloads) + " |",
            "|---|" + "---|" * len(workloads)]
    for p in progs:
        cells = []
        for w in workloads:
            c = by.get((w, p))
            cells.append(f"{_ns(c['ns_per_run'])} ({c['runs']:,})" if c else "–")
        rows.append(f"| {p} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def _ns(x: float) -> str:
    return f"{x:,.0f} ns" if x >= 100 else f"{x:.1f} ns"


# ----- proxy mode against its peers -----

def proxychains_conf(proxy: str, port: int) -> str:
    """proxychains4's configuration for one SOCKS5 proxy, no other way out."""
    return ("strict_chain\ntcp_read_time_out 15000\ntcp_connect_time_out 8000\n"
            f"[ProxyList]\nsocks5 {proxy} {port}\n")


def relay_forward(status: dict) -> str:
    """The relay's forwarding mode as `netleak status --json` reports it:
    "relay_forward" at the top, or in a "relay" object ("relay_forward",
    "forward" or "mode"); "?" when it says nothing."""
    if isinstance(status.get("relay_forward"), str):
        return status["relay_forward"]
    relay = status.get("relay")
    if isinstance(relay, dict):
        for k in ("relay_forward", "forward", "mode"):
            if isinstance(relay.get(k), str):
                return relay[k]
    return "?"


PEER_ROWS = (("start_ms", "start, one-connection client (ms)", "{:.1f}"),
             ("connect_ms", "connect + first byte (ms, median)", "{:.2f}"),
             ("mbps", "download (MB/s)", "{:,.0f}"),
             ("relay_s_per_gb", "netleak daemon CPU (s per GB)", "{:.3f}"),
             ("machine_s_per_gb", "machine CPU, /proc/stat (s per GB)", "{:.3f}"))
PEER_NAMES = {"proxychains4": "proxychains4", "own": "client's own SOCKS5"}
PEERS_NOTE = ("The proxy part's paths side by side, all through one microsocks "
              "(medians over the rounds):")


def peer_columns(runs: dict[str, list[dict]], forward: dict[str, str]) -> list[dict]:
    """A column per path (in RUNS' order): its name, the mode the daemon
    reported (netleak's paths), and the median of each PEER_ROWS value
    over its rounds."""
    cols = []
    for path, rounds in runs.items():
        mode = path.partition(":")[2]
        name = f"netleak ({mode})" if mode else PEER_NAMES.get(path, path)
        col = {"path": path, "name": name, "reported": forward.get(mode, "?") if mode else ""}
        for key, _, _ in PEER_ROWS:
            vals = [r[key] for r in rounds if key in r]
            col[key] = statistics.median(vals) if vals else None
        cols.append(col)
    return cols


def peer_table(cols: list[dict]) -> str:
    """The Markdown table of peer_columns: a row per value, a column per
    path. Empty without columns."""
    if not cols:
        return ""
    rows = ["| | " + " | ".join(c["name"] for c in cols) + " |",
            "|---|" + "---|" * len(cols),
            "| forwarding mode reported | " +
            " | ".join(c["reported"] or "–" for c in cols) + " |"]
    for key, label, fmt in PEER_ROWS:
        rows.append(f"| {label} | " + " | ".join(
            "–" if c.get(key) is None else fmt.format(c[key]) for c in cols) + " |")
    return "\n".join(rows)
