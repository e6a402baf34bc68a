"""What PostgreSQL's JIT compilation costs the store's statements on a large study.

    python -m bench.jit [--trials 100000,200000] [--analyze] [--repeats 5]
        [--out bench/results/jit-run]

For each size: a fresh database, one study prefilled with that many COMPLETE trials
(one parameter and one value each) and 8 RUNNING ones, never analyzed unless
`--analyze` (autovacuum gathers statistics only after a tenth of a table changed,
and not at all where it is off). The store then reads the study as a proxy does:
its first read (every trial) and a delta sync (the 3 newest trials and the 8
unfinished ones listed). Each statement the store sent is run again on a
connection of its own with `jit` on and off, `--repeats` times, and the median
wall time of each is reported with the JIT's own timing from `EXPLAIN ANALYZE`.
The store's connections run with JIT off (`store.database`); this measures what
that spares.
"""

from __future__ import annotations

import argparse
import json
import platform
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import sqlalchemy

from bench.databases import create_studies, fresh_database, prefill
from shardproxy.store import Store

UNFINISHED = 8


def _timed(conn: sqlalchemy.Connection, statement: str, params: Any, repeats: int) -> float:
    """Median wall time of the statement, its rows fetched, in ms."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        conn.exec_driver_sql(statement, params).fetchall()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def _jit_ms(conn: sqlalchemy.Connection, statement: str, params: Any) -> float:
    """The JIT's total time in EXPLAIN ANALYZE of the statement; 0 where it did not compile."""
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).scalar_one()
    return float(plan[0].get("JIT", {}).get("Timing", {}).get("Total", 0.0))


def measure(trials: int, analyze: bool, repeats: int) -> list[dict[str, Any]]:
    with fresh_database("postgres") as db:
        study_id, = create_studies(db.url, ["large"])
        prefill(db.url, study_id, trials, ["x"])
        store = Store(db.url)
        try:
            unfinished = [store.create_new_trial(study_id, None) for _ in range(UNFINISHED)]
            newest = max(unfinished)
            admin = sqlalchemy.create_engine(db.url, isolation_level="AUTOCOMMIT",
                                             poolclass=sqlalchemy.pool.NullPool)
            if analyze:
                with admin.connect() as conn:
                    conn.exec_driver_sql("ANALYZE")
            sent: list[tuple[str, Any]] = []
            sqlalchemy.event.listen(
                store._reader, "before_cursor_execute",  # noqa: SLF001
                lambda _c, _cur, statement, params, *_: sent.append((statement, params)))
            reads = {
                "first read": lambda: store.load_trials(study_id, id_greater_than=-1),
                "delta sync": lambda: store.load_trials(
                    study_id, id_greater_than=newest - 3, ids=unfinished),
            }
            results = []
            for name, read in reads.items():
                sent.clear()
                start = time.perf_counter()
                read()
                through_store = 1000 * (time.perf_counter() - start)
                (statement, params), = sent
                row: dict[str, Any] = {"trials": trials, "analyzed": analyze, "read": name,
                                       "store_ms": round(through_store, 2)}
                with admin.connect() as conn:
                    for jit in ("on", "off"):
                        conn.exec_driver_sql(f"SET jit = {jit}")
                        row[f"jit_{jit}_ms"] = round(_timed(conn, statement, params, repeats), 2)
                        row[f"jit_{jit}_compile_ms"] = round(_jit_ms(conn, statement, params), 2)
                results.append(row)
                print(row, flush=True)
            admin.dispose()
            return results
        finally:
            store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", default="100000,200000")
    parser.add_argument("--analyze", action="store_true",
                        help="gather the tables' statistics before reading")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", default="bench/results/jit-run")
    args = parser.parse_args(argv)
    rows = [row for trials in args.trials.split(",")
            for row in measure(int(trials), args.analyze, args.repeats)]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"machine": platform.node(), "rows": rows}, indent=2) + "\n")
    command = " ".join(["python -m bench.jit", *map(shlex.quote, sys.argv[1:] if argv is None
                                                   else argv)])
    when = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = ["# PostgreSQL's JIT and the store's reads", "", f"`{command}` — {when}, "
             f"{platform.node()}; medians of {args.repeats} runs of each statement.", "",
             "| trials | analyzed | read | through the store, ms | jit on, ms (compiling) "
             "| jit off, ms |", "|---:|---|---|---:|---:|---:|"]
    lines += [f"| {r['trials']} | {'yes' if r['analyzed'] else 'no'} | {r['read']} "
              f"| {r['store_ms']} | {r['jit_on_ms']} ({r['jit_on_compile_ms']}) "
              f"| {r['jit_off_ms']} |" for r in rows]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
