"""The results of a run as JSON, Markdown tables and a PNG chart.

Every ratio compares figures of the same run, scenario and load: "x stock" is the
row's figure divided by the stock proxy's, "x direct" by the direct RDB workers'
(real clients), "x echo" by the echo floor's. Trials/s ratios above 1 are faster;
CPU, statement and rows-read ratios below 1 are cheaper.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.counters import ROWS_READ
from bench.scenarios import Scenario
from bench.stats import ratio

# Statements; on MariaDB the rows-read counter the server has is added after them.
MARIADB_COLUMNS = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_commit")
POSTGRES_COLUMNS = ("xact_commit", "tup_returned", "tup_fetched", "tup_inserted", "tup_updated")


def describe_scenario(scenario: Scenario) -> dict[str, Any]:
    data = dataclasses.asdict(scenario)
    data["workload"] = dataclasses.asdict(scenario.workload)
    return data


def _num(value: float | None, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:,.{digits}f}"


def _times(value: float | None) -> str:
    return "—" if value is None else f"×{value:.2f}"


def one_line(cell: dict[str, Any]) -> str:
    if cell["status"] != "ok":
        return f"{cell['status']}: {cell.get('reason', '')}"
    parts = []
    if "trials_per_s" in cell:
        parts.append(f"{cell['trials']} trials, {_num(cell['trials_per_s'])} trials/s")
    if "proxy_cpu_ms_per_trial" in cell:
        parts.append(f"proxy CPU {_num(cell['proxy_cpu_ms_per_trial'], 2)} ms/trial")
    if "db_per_trial" in cell:
        questions = cell["db_per_trial"].get("Questions")
        if questions is not None:
            parts.append(f"{_num(questions)} statements/trial")
    if "db_rows_read_per_trial" in cell:
        parts.append(f"{_num(cell['db_rows_read_per_trial'])} rows read/trial")
    if cell.get("errors"):
        parts.append(f"errors: {cell['errors'][:2]}")
    return "; ".join(parts) or "latencies measured"


def _label(cell: dict[str, Any]) -> str:
    """The system's name in tables, with its worker count when several were run."""
    return str(cell.get("label") or cell["system"])


def _index(cells: Iterable[dict[str, Any]]) -> dict[tuple[str, str, str | None], dict]:
    return {(c["scenario"], c["system"], c["load"]): c for c in cells if c["status"] == "ok"}


def _reference(index: dict, cell: dict, system: str) -> dict | None:
    load = "real" if system == "direct" else cell["load"]
    return index.get((cell["scenario"], system, load))


def _figure(cell: dict | None, key: str) -> float | None:
    return None if cell is None else cell.get(key)


def _load_rows(cells: list[dict]) -> list[dict]:
    return [c for c in cells if c["status"] == "ok" and c.get("load")]


def throughput_table(cells: list[dict]) -> list[str]:
    index = _index(cells)
    lines = [
        "| scenario | load | system | trials | trials/s | × stock | × direct | × echo "
        "| proxy CPU ms/trial | × stock | × echo | proxy µs/RPC | RPCs/trial "
        "| load CPU ms/trial | DB server CPU ms/trial |",
        "|" + "---|" * 15,
    ]
    for cell in _load_rows(cells):
        stock, direct, echo = (_reference(index, cell, s) for s in ("stock", "direct", "echo"))
        tps, cpu = cell.get("trials_per_s"), cell.get("proxy_cpu_ms_per_trial")
        lines.append(
            f"| {cell['scenario']} | {cell['load']} | {_label(cell)} | {cell['trials']} "
            f"| {_num(tps)} | {_times(ratio(tps, _figure(stock, 'trials_per_s')))} "
            f"| {_times(ratio(tps, _figure(direct, 'trials_per_s')))} "
            f"| {_times(ratio(tps, _figure(echo, 'trials_per_s')))} "
            f"| {_num(cpu, 2)} | {_times(ratio(cpu, _figure(stock, 'proxy_cpu_ms_per_trial')))} "
            f"| {_times(ratio(cpu, _figure(echo, 'proxy_cpu_ms_per_trial')))} "
            f"| {_num(cell.get('proxy_cpu_us_per_rpc'), 0)} "
            f"| {_num(cell.get('rpcs_per_trial'), 2)} "
            f"| {_num(cell.get('load_cpu_ms_per_trial'), 2)} "
            f"| {_num(cell.get('db_cpu_ms_per_trial'), 2)} |"
        )
    return lines


def _rows_read_counter(cells: list[dict], backend: str) -> str:
    """The rows-read counter the run's cells have (the backend's first, if none has)."""
    names = ROWS_READ.get(backend, ("",))
    found = {c.get("db_rows_read_counter") for c in cells}
    return next((name for name in names if name in found), names[0])


def database_table(cells: list[dict], backend: str) -> list[str]:
    rows = _rows_read_counter(cells, backend)
    columns = POSTGRES_COLUMNS if backend == "postgres" else (*MARIADB_COLUMNS, rows)
    first = columns[0]
    index = _index(cells)
    lines = [
        "| scenario | load | system | " + " | ".join(columns)
        + f" | {first} × stock | {first} × direct | {rows} × stock | {rows} × direct "
        "| busy foreign sessions (max) |",
        "|" + "---|" * (len(columns) + 8),
    ]
    for cell in _load_rows(cells):
        per_trial = cell.get("db_per_trial")
        if not per_trial:
            continue
        references = [_reference(index, cell, s) for s in ("stock", "direct")]
        theirs = [(r or {}).get("db_per_trial", {}) for r in references]
        ratios = [ratio(per_trial.get(c), t.get(c)) for c in (first, rows) for t in theirs]
        lines.append(
            f"| {cell['scenario']} | {cell['load']} | {_label(cell)} | "
            + " | ".join(_num(per_trial.get(c)) for c in columns)
            + "".join(f" | {_times(r)}" for r in ratios)
            + f" | {cell.get('foreign_busy_sessions_max', '—')} |"
        )
    return lines


def _database_section(cells: list[dict], backend: str) -> list[str]:
    if backend == "sqlite":
        return ["SQLite has no statement counters."]
    rows = _rows_read_counter(cells, backend)
    if backend == "mariadb":
        note = ("MariaDB/MySQL: SHOW GLOBAL STATUS deltas, server-wide: a busy session of "
                "another database seen during the window means other work may be counted. "
                f"Rows read: {rows}"
                + (" (row read requests of all engines; this server has no "
                   "Innodb_rows_read)." if rows == "Rows_read" else "."))
    else:
        note = ("PostgreSQL: pg_stat_database of the run's database. Rows read: "
                "tup_returned (rows read by sequential scans and index entries returned by "
                "index scans); tup_fetched: rows fetched from tables by index scans.")
    return [note + " Each counter's delta over the window ÷ trials.", "",
            *database_table(cells, backend)]


def latency_table(cells: list[dict]) -> list[str]:
    index = _index(cells)
    lines = ["| scenario | system | method | calls/trial | p50 ms | p99 ms | p50 × stock "
             "| after the first trial: p50 ms | p99 ms | p99 ÷ p50 |",
             "|" + "---|" * 10]
    for cell in _load_rows(cells):
        stock = _reference(index, cell, "stock")
        steady_of = cell.get("steady_latency_ms", {})
        for method, figures in cell.get("latency_ms", {}).items():
            reference = (stock or {}).get("latency_ms", {}).get(method, {}).get("p50")
            steady = steady_of.get(method, {})
            lines.append(
                f"| {cell['scenario']} | {_label(cell)} | {method} "
                f"| {_num(cell['calls_per_trial'].get(method), 2)} | {_num(figures['p50'], 2)} "
                f"| {_num(figures['p99'], 2)} | {_times(ratio(figures['p50'], reference))} "
                f"| {_num(steady.get('p50'), 2)} | {_num(steady.get('p99'), 2)} "
                f"| {_num(ratio(steady.get('p99'), steady.get('p50')), 1)} |"
            )
    return lines


def fairness_table(cells: list[dict]) -> list[str]:
    """Trials each virtual worker finished: a starved worker is far below the median."""
    lines = ["| scenario | system | virtual workers | least | 1st percentile | median | most "
             "| least ÷ median |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        counts = c.get("trials_per_worker") if c["status"] == "ok" else None
        if not counts:
            continue
        lines.append(f"| {c['scenario']} | {_label(c)} | {counts['workers']} | {counts['least']} "
                     f"| {counts['p1']} | {counts['median']} | {counts['most']} "
                     f"| {_num(ratio(counts['least'], counts['median']), 2)} |")
    return lines


def health_checks_table(cells: list[dict]) -> list[str]:
    """How long a probe's health check waited for its answer through the load."""
    lines = ["| scenario | system | load | SERVING | p50 s | p99 s | max s | anything else |",
             "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        checks = c.get("health_checks") if c["status"] == "ok" else None
        if not checks:
            continue
        other = ", ".join(f"{n} {name}" for name, n in sorted(checks["other"].items()))
        lines.append(f"| {c['scenario']} | {_label(c)} | {c['load']} | {checks['serving']} "
                     f"| {_num(checks['p50_s'], 3)} | {_num(checks['p99_s'], 3)} "
                     f"| {_num(checks['max_s'], 3)} | {other or 'none'} |")
    return lines


def get_trials_table(cells: list[dict]) -> list[str]:
    rows = [c for c in cells if c["status"] == "ok" and c.get("getTrials")]
    stock: dict[str, dict] = next(
        (c["getTrials"] for c in rows if c["system"] == "stock"), {}
    )
    lines = ["| system | study size | first full read s, the server's share (raw bytes) "
             "| first full read s (end to end, Optuna's client) | full read again s "
             "| delta p50 ms | delta p99 ms | delta p50 × stock |", "|" + "---|" * 8]
    for cell in rows:
        for size, f in cell["getTrials"].items():
            reference = stock.get(size, {}).get("delta_p50_ms")
            lines.append(
                f"| {_label(cell)} | {int(size):,} | {_num(f.get('first_raw_s'), 2)} "
                f"| {_num(f['first_full_s'], 2)} "
                f"| {_num(f['full_again_s'], 2)} | {_num(f['delta_p50_ms'], 2)} "
                f"| {_num(f['delta_p99_ms'], 2)} | {_times(ratio(f['delta_p50_ms'], reference))} |"
            )
    return lines


def markdown(data: dict[str, Any]) -> str:
    meta, cells = data["meta"], data["cells"]
    out = [
        f"# Benchmark run {meta['date']} on {meta['db']}",
        "",
        f"`{meta['command']}` — commit {meta['git'] or '?'}, {meta['cpus']} CPUs, "
        f"shardproxy/echo workers: {meta['workers']}, taskset: {meta['taskset']}, "
        f"run time {meta['elapsed_s']:.0f} s.",
        "",
        "Scenarios: " + "; ".join(f"**{name}**: {s['description']}"
                                  for name, s in meta["scenarios"].items()),
        "",
        "## Throughput and CPU per trial",
        "",
        *throughput_table(cells),
        "",
        "## Database work per trial",
        "",
        *_database_section(cells, meta["db"]),
        "",
        "## RPC latency (load generator)",
        "",
        *latency_table(cells),
    ]
    if any(c.get("trials_per_worker") for c in cells):
        out += ["", "## Trials per virtual worker (load generator)", "",
                "Each virtual worker's finished trials, over the window and its wind-down.",
                "", *fairness_table(cells)]
    if any(c.get("health_checks") for c in cells):
        out += ["", "## Health checks through the load", "",
                "A gRPC health check every half second on a new connection, as a probe "
                "sends it.", "", *health_checks_table(cells)]
    if any(c.get("getTrials") for c in cells):
        out += ["", "## GetTrials against study size", "", *get_trials_table(cells)]
    missing = [c for c in cells if c["status"] != "ok"]
    if missing:
        out += ["", "## Not measured", ""]
        out += [f"- {c['scenario']} · {_label(c)} · {c['load'] or 'latency'}: "
                f"{c['status']} ({c.get('reason', '')})" for c in missing]
    errors = [c for c in cells if c.get("errors")]
    if errors:
        out += ["", "## Errors during the runs", ""]
        out += [f"- {c['scenario']} · {_label(c)} · {c['load']}: {c['errors'][:3]}"
                for c in errors]
    logged = [c for c in cells if c.get("proxy_log")]
    if logged:
        out += ["", "## What the proxies logged", ""]
        for c in logged:
            shown = len(c["proxy_log"])
            count = c["proxy_log_lines"]
            out.append(f"- {c['scenario']} · {_label(c)} · {c['load'] or 'latency'}: "
                       f"{count} lines" + (f", the first {shown}:" if count > shown else ":"))
            out += [f"      {line}" for line in c["proxy_log"]]
    return "\n".join(out) + "\n"


def chart(data: dict[str, Any], path: Path) -> None:
    """Trials/s and proxy CPU per trial for every system, scenario by scenario."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _load_rows(data["cells"])
    scenarios = list(dict.fromkeys(c["scenario"] for c in rows))
    series = list(dict.fromkeys((_label(c), c["load"]) for c in rows))
    figure, axes = plt.subplots(2, 1, figsize=(max(8, 2.2 * len(scenarios) + 4), 8))
    width = 0.8 / max(1, len(series))
    for axis, key, title in (
        (axes[0], "trials_per_s", "trials/s (higher is better)"),
        (axes[1], "proxy_cpu_ms_per_trial", "proxy CPU ms per trial (lower is better)"),
    ):
        for n, (system, load) in enumerate(series):
            values = [next((c.get(key) or 0 for c in rows if c["scenario"] == s
                            and _label(c) == system and c["load"] == load), 0)
                      for s in scenarios]
            bars = axis.bar([i + n * width for i in range(len(scenarios))], values, width,
                            label=f"{system} ({load})")
            axis.bar_label(bars, labels=[f"{v:.3g}" if v else "" for v in values],
                           fontsize="x-small")
        axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(scenarios))],
                        scenarios)
        axis.set_yscale("log")
        axis.set_title(title)
        axis.grid(axis="y", alpha=0.3)
    axes[0].legend(fontsize="small", ncol=2)
    figure.suptitle(f"{data['meta']['db']}, {data['meta']['date']}")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write(data: dict[str, Any], folder: Path, stem: str) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.json", folder / f"{stem}.md", folder / f"{stem}.png"]
    paths[0].write_text(json.dumps(data, indent=1, default=str) + "\n")
    paths[1].write_text(markdown(data))
    try:
        chart(data, paths[2])
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        paths.pop()
    return paths
