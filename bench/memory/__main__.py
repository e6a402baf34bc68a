"""Command line of the memory bench: `python -m bench.memory` (see `--help`).

Runs the parts asked for on a fresh database, writes `<out>.json` (every raw
figure) and `<out>.md`, or with `--render` writes the Markdown again from the JSON.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc

import bench.memory
from bench import databases
from bench.memory.cached_trials import cache_limit, measure_cached_trials
from bench.memory.idle import measure_idle_connections
from bench.memory.report import markdown
from bench.memory.soak import measure_soak
from shardproxy.cli import byte_size


def _git(*argv: str) -> str:
    try:
        return subprocess.run(["git", *argv], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def _git_commit() -> str:
    """HEAD, and whether this package or the proxy differs from it (the figures are
    their code's)."""
    commit = _git("rev-parse", "--short", "HEAD")
    changed = [tree for tree in ("bench/memory/", "shardproxy/")
               if _git("status", "--porcelain", "--", f":/{tree}")]
    return f"{commit} (plus uncommitted {', '.join(changed)})" if changed else commit


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.memory", description=bench.memory.__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default="mariadb", type=databases.backend_name,
                        help="mariadb or sqlite (a fresh database, dropped after) "
                        "[default: %(default)s]")
    parser.add_argument("--db-url", help="server URL without database part "
                        "[default: the local server of --db]")
    parser.add_argument("--parts", default="idle,trials,limit",
                        help="idle (connections), trials (cache), limit (idle connections at "
                        "--limit-nofile), soak (RSS under --soak-cache-memory; only when "
                        "asked for) [default: %(default)s]")
    parser.add_argument("--workers", type=int, default=2,
                        help="shardproxy worker processes [default: %(default)s]")
    parser.add_argument("--connections", type=int, default=5000,
                        help="idle client connections to hold [default: %(default)s]")
    parser.add_argument("--client-processes", type=int, default=10,
                        help="processes the connections are spread over [default: %(default)s]")
    parser.add_argument("--rounds", type=int, default=3,
                        help="times the connections are opened and closed on one proxy "
                        "[default: %(default)s]")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="window of the idle CPU samples [default: %(default)s]")
    parser.add_argument("--latency-samples", type=int, default=200,
                        help="GetAllStudies calls per latency figure [default: %(default)s]")
    parser.add_argument("--optuna-trials", type=int, default=30,
                        help="trials per Optuna latency figure [default: %(default)s]")
    parser.add_argument("--trials", default="20000,100000",
                        help="study sizes for the cached-trial figure [default: %(default)s]")
    parser.add_argument("--server-nofile", type=int,
                        help="soft RLIMIT_NOFILE the proxy is started with for the idle and "
                        "trials parts [default: inherited]")
    parser.add_argument("--limit-nofile", type=int, default=1024,
                        help="soft RLIMIT_NOFILE of the proxy in the limit part "
                        "[default: %(default)s]")
    parser.add_argument("--soak-cache-memory", default="32MiB", type=byte_size,
                        help="the proxy's --cache-memory in the soak part [default: "
                        "%(default)s]")
    parser.add_argument("--soak-studies", type=int, default=24,
                        help="studies the soak part reads round-robin [default: %(default)s]")
    parser.add_argument("--soak-trials", type=int, default=25000,
                        help="trials per soak study; the defaults make the studies about 4 "
                        "times the bound by the cache's count [default: %(default)s]")
    parser.add_argument("--soak-readers", type=int, default=3,
                        help="threads reading the soak studies [default: %(default)s]")
    parser.add_argument("--soak-seconds", type=float, default=180.0,
                        help="how long the soak part reads [default: %(default)s]")
    parser.add_argument("--render", action="store_true",
                        help="measure nothing: write the Markdown again from --out's JSON")
    parser.add_argument("--out", default="bench/results/memory",
                        help="results path without extension [default: %(default)s]")
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    parts = set(args.parts.split(","))

    def say(text: str) -> None:
        print(f"  {text}", file=sys.stderr, flush=True)

    started = time.monotonic()
    data: dict[str, Any] = {"meta": {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(), "db": args.db,
        "machine": f"{os.cpu_count()} cores {platform.machine()}, Python "
                   f"{platform.python_version()}, grpcio {grpc.__version__}, "
                   f"Optuna {optuna.__version__}",
        "bench_nofile": resource.getrlimit(resource.RLIMIT_NOFILE),
        "server_nofile": args.server_nofile, "limit_nofile": args.limit_nofile,
        "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }, "cache_limit": cache_limit()}
    with databases.fresh_database(args.db, args.db_url) as db:
        if "idle" in parts:
            print("idle connections", file=sys.stderr, flush=True)
            data["idle"] = measure_idle_connections(db.url, args, args.server_nofile,
                                                    args.rounds, say)
        if "trials" in parts:
            data["cached_trials"] = []
            for size in (int(s) for s in args.trials.split(",")):
                print(f"cached trials: {size}", file=sys.stderr, flush=True)
                data["cached_trials"].append(measure_cached_trials(db.url, size, args, say))
        if "limit" in parts:
            print(f"idle connections at a soft open-file limit of {args.limit_nofile}",
                  file=sys.stderr, flush=True)
            data["limit"] = measure_idle_connections(db.url, args, args.limit_nofile, 1, say)
        if "soak" in parts:
            print(f"soak at --cache-memory {args.soak_cache_memory} bytes",
                  file=sys.stderr, flush=True)
            data["soak"] = measure_soak(db.url, args, say)
    data["meta"]["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    data["meta"]["elapsed_s"] = time.monotonic() - started
    return data


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Path(args.out)
    if args.render:  # the tables again from the results already measured
        data = json.loads(out.with_suffix(".json").read_text())
    else:
        data = run(args)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
    text = markdown(data)
    out.with_suffix(".md").write_text(text + "\n")
    print(text)
    # The limit part is expected to fall short; the main one must hold them all, and
    # the soak must stay within its bound.
    idle, soak = data.get("idle"), data.get("soak")
    short = idle and idle["rounds"][0]["held"] < idle["connections_asked"]
    return 1 if short or (soak and soak["max_growth_over_bound"] > 1) else 0


if __name__ == "__main__":
    raise SystemExit(main())
