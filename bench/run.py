"""End-to-end benchmark: shardproxy beside its references, on one database, in one run.

For each scenario, each system runs on a fresh database of the same server:

  shardproxy  `python -m shardproxy serve --workers N` (reported "not available"
              when it cannot start)
  stock       Optuna's run_grpc_proxy_server(get_storage(URL)), its own process
  direct      the workers use get_storage(URL) themselves (real clients only)
  echo        the echo floor: shardproxy's gRPC stack answering canned replies

under two loads: real Optuna workers (processes x threads running study.optimize
through GrpcStorageProxy) and the load generator (virtual workers on grpc.aio that
send a real worker's exact RPC sequence). The table gives trials/s, proxy CPU per
trial (the proxy's process tree, /proc), database statements and rows read per
trial (MariaDB SHOW GLOBAL STATUS deltas; PostgreSQL pg_stat_database), RPC latency
p50/p99 per method, and each figure's ratio to the references measured in the same
run.
Results go to bench/results/run-<time>-<db>.{json,md,png}.

examples:
  python -m bench.run --db mariadb --scenario seed
  python -m bench.run --quick                       # 1-2 minute smoke run
  python -m bench.run                               # every scenario, ~15 minutes
  python -m bench.run --scenario seed --systems stock,echo --loads gen --taskset
  python -m bench.run --scenario seed --serve-flags="" --serve-flags="--admin-port 9108"
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import report
from bench.databases import SERVERS, backend_name
from bench.measure import Setup, measure_cell
from bench.scenarios import LOADS, SCENARIOS, Scenario, quick
from bench.systems import SYSTEMS, ProxyOptions

RESULTS = Path(__file__).resolve().parent / "results"
# References first, so their figures are printed before the ratios need them.
ORDER = ("stock", "direct", "echo", "shardproxy")


def _list(text: str, allowed: Sequence[str]) -> list[str]:
    items = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in items if item not in allowed]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {', '.join(allowed)}")
    return items


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="mariadb", type=backend_name,
                        help="mariadb (default), postgres or sqlite")
    parser.add_argument("--db-url", default=None,
                        help="server URL without a database, e.g. mysql+pymysql://root@host:3306 "
                        "(default: " + ", ".join(f"{k}: {v}" for k, v in SERVERS.items() if v)
                        + "); a fresh database is created on it for every system")
    parser.add_argument("--scenario", action="append", default=None,
                        help=f"scenario to run, repeatable or comma-separated: "
                        f"{', '.join(SCENARIOS)} or all (default: all; with --quick: seed)")
    parser.add_argument("--systems", default=",".join(SYSTEMS),
                        type=lambda t: _list(t, SYSTEMS), help="systems to run [%(default)s]")
    parser.add_argument("--loads", default=",".join(LOADS), type=lambda t: _list(t, LOADS),
                        help="real (Optuna workers) and/or gen (load generator) [%(default)s]")
    parser.add_argument("--workers", default=[2], type=_counts,
                        help="shardproxy worker processes; a list such as 1,2 runs shardproxy "
                        "once per count (scaling); the echo floor uses the largest [2]")
    parser.add_argument("--serve-flags", action="append", default=None, metavar="FLAGS",
                        help="more `shardproxy serve` flags, in one string; repeated, shardproxy "
                        "runs once per string, each load right after the other")
    parser.add_argument("--threads", type=int, default=None,
                        help="gRPC handler threads per shardproxy/echo process [their default]")
    parser.add_argument("--duration", type=float, default=None,
                        help="seconds of measured load per system and load [per scenario]")
    parser.add_argument("--real", default=None, metavar="PxT",
                        help="real clients: processes x threads, e.g. 4x2 (default: per scenario)")
    parser.add_argument("--gen", default=None, metavar="PxW",
                        help="load generator: processes x virtual workers per process, e.g. 2x32")
    parser.add_argument("--taskset", action="store_true",
                        help="pin the proxy to CPU 0 and the load processes to CPU 1")
    parser.add_argument("--quick", action="store_true",
                        help="a 1-2 minute smoke run: seed only unless --scenario, 4 s per cell")
    parser.add_argument("--out", type=Path, default=RESULTS,
                        help="folder for the JSON, Markdown and PNG results [bench/results]")
    return parser


def _counts(text: str) -> list[int]:
    try:
        counts = [int(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("worker counts must be positive")
    return counts


def _split(text: str) -> tuple[int, int]:
    first, _, second = text.lower().partition("x")
    return int(first), int(second)


def select_scenarios(args: argparse.Namespace) -> list[Scenario]:
    names: list[str] = []
    for item in args.scenario or (["seed"] if args.quick else ["all"]):
        names.extend(name.strip() for name in item.split(",") if name.strip())
    if "all" in names:
        names = list(SCENARIOS)
    unknown = [name for name in names if name not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {unknown}; choose from {', '.join(SCENARIOS)}, all")
    chosen = []
    for name in names:
        scenario = quick(SCENARIOS[name]) if args.quick else SCENARIOS[name]
        if args.duration is not None:
            scenario = scenario.with_options(duration=args.duration)
        if args.real:
            processes, threads = _split(args.real)
            scenario = scenario.with_options(real_processes=processes, real_threads=threads)
        if args.gen:
            processes, workers = _split(args.gen)
            scenario = scenario.with_options(gen_processes=processes, gen_workers=workers)
        chosen.append(scenario)
    return chosen


Cell = tuple[Scenario, str, str | None, int, str]


def plan(scenarios: list[Scenario], systems: list[str], loads: list[str],
         worker_counts: list[int], serve_flags: list[str] | None = None) -> list[Cell]:
    """(scenario, system, load, workers, serve flags) cells; load None: latencies only."""
    cells: list[Cell] = []
    variants = serve_flags or [""]
    for scenario in scenarios:
        for system in (s for s in ORDER if s in systems and s in scenario.systems):
            kinds = [k for k in loads if k in scenario.loads and not (system == "direct"
                                                                      and k == "gen")]
            counts = worker_counts if system == "shardproxy" else [max(worker_counts)]
            for workers in counts:
                flag_sets = variants if system == "shardproxy" else [""]
                if not kinds and scenario.latency_sizes and system != "echo":
                    cells += [(scenario, system, None, workers, flags) for flags in flag_sets]
                for index, kind in enumerate(kinds):
                    # GetTrials latencies are measured once per system, with its first load.
                    cell = scenario if index == 0 else scenario.with_options(latency_sizes=())
                    cells += [(cell, system, kind, workers, flags) for flags in flag_sets]
    return cells


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def run(args: argparse.Namespace) -> dict[str, Any]:
    scenarios = select_scenarios(args)
    cells = plan(scenarios, args.systems, args.loads, args.workers, args.serve_flags)
    scaling = len(args.workers) > 1
    variants = len(args.serve_flags or []) > 1
    started = time.monotonic()
    results: list[dict[str, Any]] = []
    # A system that could not start is not tried again within the scenario.
    unavailable: dict[tuple[str, str], str] = {}
    for number, (scenario, system, kind, workers, flags) in enumerate(cells, 1):
        name = f"{system}/{workers}w" if scaling and system == "shardproxy" else system
        if variants and system == "shardproxy":
            name += f" [{flags or 'no flags'}]"
        label = f"[{number}/{len(cells)}] {scenario.name} · {name} · {kind or 'latency'}"
        if (scenario.name, system) in unavailable:
            results.append({"scenario": scenario.name, "system": system, "label": name,
                            "load": kind, "status": "not available",
                            "reason": unavailable[scenario.name, system]})
            print(f"{label}: not available", file=sys.stderr, flush=True)
            continue
        print(f"{label} ({time.monotonic() - started:.0f} s into the run)", file=sys.stderr,
              flush=True)
        setup = Setup(
            backend=args.db, server_url=args.db_url,
            proxy=ProxyOptions(workers, args.threads, (0,) if args.taskset else None,
                               tuple(shlex.split(flags))),
            load_cpus=(1,) if args.taskset else None,
        )
        cell = measure_cell(scenario, system, kind, setup,
                            lambda text: print(f"    {text}", file=sys.stderr, flush=True))
        cell["label"] = name
        print(f"    -> {report.one_line(cell)}", file=sys.stderr, flush=True)
        if cell["status"] == "not available":
            unavailable[scenario.name, system] = cell["reason"]
        results.append(cell)
    return {
        "meta": {
            "command": "python -m bench.run " + " ".join(sys.argv[1:]),
            "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "db": args.db, "git": _git_commit(), "cpus": os.cpu_count(),
            "workers": args.workers, "taskset": args.taskset, "quick": args.quick,
            "serve_flags": args.serve_flags,
            "elapsed_s": round(time.monotonic() - started, 1),
            "scenarios": {s.name: report.describe_scenario(s) for s in scenarios},
        },
        "cells": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    data = run(args)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    paths = report.write(data, args.out, f"run-{stamp}-{args.db}")
    print(report.markdown(data))
    for path in paths:
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
