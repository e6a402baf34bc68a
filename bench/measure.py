"""One cell of a run: a system under one load in one scenario, on a fresh database.

    fresh database -> studies (and pre-filled trials) -> the system started
    -> GetTrials latencies (pre-filled scenario) -> the load through its window
    -> the system stopped -> database counters read -> figures

The figures are per completed trial: trials counted in the database (the echo
floor has none, so there the load's own count), CPU of the proxy tree, of the load
processes and of the database server, and the database's counters of statements and
of rows read (`db_per_trial`: every counter `counters` reads, each ÷ trials; rows
read also as `db_rows_read_per_trial`, with the counter it comes from). Through
shardproxy's load a probe checks its health every half second (`health_checks`):
how long the answers took.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from bench import counters, databases, latency
from bench.health_checks import HealthChecks
from bench.loadgen.process import GeneratorConfig
from bench.loadgen.real import GRPC_PREFIX, RealClientsConfig
from bench.loads import LoadFailed, LoadOutcome, run_load
from bench.scenarios import Scenario
from bench.stats import percentile
from bench.systems import PROXIES, ProxyOptions, RunningProxy, Unavailable, running_proxy

ECHO_STUDY_ID = 1  # the study id the echo floor hands out


@dataclass(frozen=True)
class Setup:
    backend: str
    server_url: str | None
    proxy: ProxyOptions
    load_cpus: tuple[int, ...] | None


@dataclass(frozen=True)
class Studies:
    names: tuple[str, ...]
    ids: tuple[int, ...]
    synced: tuple[int, int] | None = None  # last trial id and trials of a pre-filled study
    # (size, study id, last id, twin id): the twin, of the same trials, is read first
    # on raw bytes, for the server's share of a first read on its own; None where no
    # server answers (direct workers).
    latency_studies: tuple[tuple[int, int, int, int | None], ...] = ()


def _database(system: str, setup: Setup) -> contextlib.AbstractContextManager:
    if system == "echo":
        return contextlib.nullcontext(None)
    return databases.fresh_database(setup.backend, setup.server_url)


def _prepare_studies(scenario: Scenario, db: databases.Database | None,
                     twins: bool) -> Studies:
    """`twins`: a twin of each latency study, for a server's first read on raw bytes."""
    tag = uuid.uuid4().hex[:6]
    names = tuple(f"{scenario.name}-{tag}-{i}" for i in range(scenario.studies))
    if db is None:
        return Studies(names, (ECHO_STUDY_ID,) * len(names))
    ids = databases.create_studies(db.url, names)
    params = scenario.workload.param_names
    synced = None
    if scenario.prefill:
        last = databases.prefill(db.url, ids[0], scenario.prefill, params)
        synced = (last, scenario.prefill)
    # The pre-filled study itself is measured at its size, so the load meets a proxy
    # that has read it once, as it would after its first client.
    latency_studies = []
    for size in scenario.latency_sizes:
        twin_id = None
        if twins:
            (twin_id,) = databases.create_studies(db.url, [f"{names[0]}-size-{size}-raw"])
            databases.prefill(db.url, twin_id, size, params)
        if synced is not None and size == scenario.prefill:
            latency_studies.append((size, ids[0], synced[0], twin_id))
            continue
        (study_id,) = databases.create_studies(db.url, [f"{names[0]}-size-{size}"])
        latency_studies.append((size, study_id, databases.prefill(db.url, study_id, size,
                                                                  params), twin_id))
    return Studies(names, tuple(ids), synced, tuple(latency_studies))


@contextlib.contextmanager
def _system(system: str, db: databases.Database | None,
            setup: Setup) -> Iterator[RunningProxy | None]:
    if system not in PROXIES:
        yield None
        return
    url = db.url if db is not None else ""
    with running_proxy(system, url, setup.proxy) as proxy:
        yield proxy


def _load_configs(kind: str, scenario: Scenario, studies: Studies, storage: str) -> list[Any]:
    if kind == "gen":
        return [
            GeneratorConfig(storage, studies.ids, scenario.workload,
                            virtual_workers=scenario.gen_workers,
                            channels=scenario.gen_channels, seed=i, synced=studies.synced)
            for i in range(scenario.gen_processes)
        ]
    return [
        RealClientsConfig(storage, studies.names, scenario.workload,
                          threads=scenario.real_threads, first_worker=i * scenario.real_threads)
        for i in range(scenario.real_processes)
    ]


def _snapshotter(proxy: RunningProxy | None,
                 db_counters: counters.DbCounters | None) -> Callable[[list[int]], dict[str, Any]]:
    def snapshot(load_pids: list[int]) -> dict[str, Any]:
        return {
            "time": time.monotonic(),
            "proxy_cpu_s": counters.tree_cpu_seconds([proxy.pid]) if proxy else None,
            "load_cpu_s": counters.tree_cpu_seconds(load_pids),
            "db_cpu_s": counters.db_server_cpu_seconds() if db_counters else None,
            "db": db_counters.read() if db_counters else {},
        }

    return snapshot


def _latencies(system: str, proxy: RunningProxy | None, db: databases.Database | None,
               studies: Studies, scenario: Scenario,
               say: Callable[[str], None]) -> dict[str, dict]:
    results = {}
    for size, study_id, last_id, twin_id in studies.latency_studies:
        say(f"GetTrials on a {size}-trial study ...")
        if proxy is not None:
            assert twin_id is not None  # made for every proxy
            results[str(size)] = latency.proxy_latency(proxy.target, study_id, last_id,
                                                       scenario.latency_samples, twin_id)
        elif db is not None:
            results[str(size)] = latency.direct_latency(db.url, study_id,
                                                        scenario.latency_samples)
        figures = results[str(size)]
        raw = figures.get("first_raw_s")
        say(f"GetTrials on a {size}-trial study: first full "
            + (f"{raw:.2f} s raw (the server's share), " if raw is not None else "")
            + f"{figures['first_full_s']:.2f} s end to end, "
            f"delta p50 {figures['delta_p50_ms']:.2f} ms")
    return results


def measure_cell(scenario: Scenario, system: str, kind: str | None, setup: Setup,
                 say: Callable[[str], None]) -> dict[str, Any]:
    """The figures of `system` under load `kind` (None: latencies only)."""
    cell: dict[str, Any] = {"scenario": scenario.name, "system": system, "load": kind,
                            "workers": setup.proxy.workers if system in PROXIES else None}
    try:
        with _database(system, setup) as db:
            studies = _prepare_studies(scenario, db, twins=system in PROXIES)
            with _system(system, db, setup) as proxy:
                if proxy is not None:
                    cell["proxy_cpus"] = sorted(os.sched_getaffinity(proxy.pid))
                if studies.latency_studies:
                    cell["getTrials"] = _latencies(system, proxy, db, studies, scenario, say)
                if kind is not None:
                    with _health_checks(system, proxy) as checks:
                        outcome = _run(scenario, system, kind, setup, proxy, db, studies, say)
                    if checks is not None:
                        cell["health_checks"] = checks.figures()
            if proxy is not None:
                # 0: exited cleanly on SIGTERM; -15: SIGTERM's default action (the stock
                # proxy has no handler); -9: it had to be killed.
                cell["proxy_exit_code"] = proxy.process.returncode
                cell["proxy_log_lines"] = proxy.log_line_count
                cell["proxy_log"] = proxy.log_lines
            if kind is not None:
                cell.update(_figures(outcome, db, studies, setup))
    except Unavailable as exc:
        cell["status"] = "not available"
        cell["reason"] = str(exc)
        return cell
    except LoadFailed as exc:
        cell["status"] = "failed"
        cell["reason"] = str(exc)
        return cell
    cell["status"] = "ok"
    return cell


@contextlib.contextmanager
def _health_checks(system: str, proxy: RunningProxy | None) -> Iterator[HealthChecks | None]:
    """Health checks sent to shardproxy through the load (the references serve none)."""
    if system != "shardproxy" or proxy is None:
        yield None
        return
    with HealthChecks(proxy.target) as checks:
        yield checks


def _run(scenario: Scenario, system: str, kind: str, setup: Setup, proxy: RunningProxy | None,
         db: databases.Database | None, studies: Studies,
         say: Callable[[str], None]) -> LoadOutcome:
    storage = f"{GRPC_PREFIX}{proxy.target}" if proxy else (db.url if db else "")
    if kind == "gen":
        storage = proxy.target if proxy else ""
    db_counters = (counters.DbCounters(setup.backend, db.admin_url, db.name)
                   if db is not None and db.admin_url else None)
    foreign: list[int] = []

    def tick(elapsed: float, trials: int) -> None:
        if db_counters is not None and setup.backend == "mariadb":
            foreign.append(db_counters.foreign_busy_sessions())
        say(f"{elapsed:5.1f} s  {trials:6d} trials  {trials / max(elapsed, 1e-9):8.1f} trials/s")

    try:
        outcome = run_load(kind, _load_configs(kind, scenario, studies, storage),
                           setup.load_cpus, scenario.duration,
                           _snapshotter(proxy, db_counters), tick)
    finally:
        if db_counters is not None:
            db_counters.close()
    outcome.before["foreign_busy_samples"] = foreign
    return outcome


def _db_counters_after(outcome: LoadOutcome, db: databases.Database, setup: Setup) -> dict:
    """The window's closing counters; PostgreSQL's only once its clients have gone.

    PostgreSQL backends publish their statistics lazily (up to seconds late), and
    completely when they exit; MariaDB counts each statement as it runs.
    """
    if setup.backend != "postgres":
        return outcome.after["db"]
    reader = counters.DbCounters(setup.backend, db.admin_url, db.name)
    try:
        return reader.read()
    finally:
        reader.close()


def _figures(outcome: LoadOutcome, db: databases.Database | None, studies: Studies,
             setup: Setup) -> dict[str, Any]:
    """Per-trial figures, once the system and the load processes have stopped."""
    db_before = outcome.before["db"]
    # Read before the trials are counted: on PostgreSQL that count's own scan of the
    # trials table would otherwise land in the rows read (a whole pre-filled study).
    db_after = _db_counters_after(outcome, db, setup) if db is not None and db_before else {}
    if db is not None:
        trials = databases.count_complete_trials(db.url, studies.ids) - (
            studies.synced[1] if studies.synced else 0)
    else:
        trials = outcome.trials
    per_trial = 1000.0 / trials if trials else float("nan")
    before, after = outcome.before, outcome.after
    figures: dict[str, Any] = {
        "trials": trials,
        "load_trials": outcome.trials,
        "wall_s": outcome.wall,
        "trials_per_s": trials / outcome.wall if outcome.wall else None,
        "load_cpu_ms_per_trial": (after["load_cpu_s"] - before["load_cpu_s"]) * per_trial,
        "progress": outcome.progress,
        "errors": list(outcome.errors),
    }
    if db is not None and trials != outcome.trials:
        # Every trial a client saw acknowledged must be in the database, and no other.
        figures["errors"].append(f"the clients completed {outcome.trials} trials, "
                                 f"the database holds {trials}")
    if after["proxy_cpu_s"] is not None:
        proxy_cpu = after["proxy_cpu_s"] - before["proxy_cpu_s"]
        figures["proxy_cpu_ms_per_trial"] = proxy_cpu * per_trial
    if after["db_cpu_s"] is not None:
        figures["db_cpu_ms_per_trial"] = (after["db_cpu_s"] - before["db_cpu_s"]) * per_trial
    if db_after:
        delta = counters.deltas(db_before, db_after)
        figures["db_per_trial"] = {k: v / trials if trials else None for k, v in delta.items()}
        rows = counters.rows_read_counter(setup.backend, delta)
        if rows is not None:
            figures["db_rows_read_counter"] = rows
            figures["db_rows_read_per_trial"] = figures["db_per_trial"][rows]
        samples = before.get("foreign_busy_samples", [])
        figures["foreign_busy_sessions_max"] = max(samples, default=0)
    if outcome.recorder is not None:
        figures.update(_rpc_figures(outcome, trials, figures.get("proxy_cpu_ms_per_trial")))
    return figures


def _rpc_figures(outcome: LoadOutcome, trials: int,
                 proxy_ms_per_trial: float | None) -> dict[str, Any]:
    recorder = outcome.recorder
    assert recorder is not None
    sent = recorder.trials or 1
    rpcs = sum(recorder.calls.values())
    figures: dict[str, Any] = {
        "rpcs_per_trial": rpcs / sent,
        "calls_per_trial": {m: c / sent for m, c in sorted(recorder.calls.items())},
        "request_bytes_per_call": {m: recorder.request_bytes[m] / c
                                   for m, c in sorted(recorder.calls.items())},
        "latency_ms": _percentiles(recorder.latencies),
        "steady_latency_ms": _percentiles(recorder.steady_latencies),
    }
    per_worker = recorder.trials_per_worker
    if per_worker:
        figures["trials_per_worker"] = {
            "workers": len(per_worker), "least": min(per_worker),
            "p1": percentile(per_worker, 1), "median": percentile(per_worker, 50),
            "most": max(per_worker),
        }
    if proxy_ms_per_trial is not None and rpcs:
        figures["proxy_cpu_us_per_rpc"] = proxy_ms_per_trial * 1000 * trials / rpcs
    return figures


def _percentiles(latencies: dict[str, Any]) -> dict[str, dict[str, float]]:
    """p50 and p99 in ms, and the sample count, per method."""
    return {m: {"p50": percentile(s, 50) * 1000, "p99": percentile(s, 99) * 1000,
                "count": len(s)}
            for m, s in sorted(latencies.items()) if len(s)}
