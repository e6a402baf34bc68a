"""The fault cases, run against shardproxy and Optuna's stock proxy: what clients saw.

    python -m bench.faults                      # every case, MariaDB and PostgreSQL
    python -m bench.faults --db mariadb --cases restart,cuts
    python -m bench.faults --long               # 30 s outage past a 10 s deadline, 30 s of cuts

Each case runs a proxy (`shardproxy serve --workers 4`, or the stock proxy in its
one process), 8 unmodified Optuna client processes on 4 studies, and one fault
(`tests/faults/cases.py`), then reads the database with RDBStorage and compares
it with what each client was told. Writes `bench/results/faults.md` and `.json`.

The cases stop this machine's database servers (and start them again): do not
run it where others depend on them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RDBStorage

from tests.databases import fresh_database
from tests.faults.cases import CaseRun, Proxy, run_cuts, run_outage, run_worker_kill, shardproxy
from tests.faults.cases import stock as stock_proxy
from tests.faults.crowd import RssWatch, latency_percentiles, merged, run_crowd
from tests.proxies import proxy_client

RESULTS = Path(__file__).parent / "results"
CASES = ("restart", "past-deadline", "cuts", "kill", "reuse", "crowd")


def kind_of(row: dict[str, Any]) -> str:
    """Which of CASES a row is of."""
    case = row["case"]
    if case.startswith("restart"):
        return "past-deadline" if "deadline" in case else "restart"
    if case.startswith("connections cut"):
        return "cuts"
    if case.startswith("worker"):
        return "kill"
    if case.startswith("study id"):
        return "reuse"
    return "crowd"


def load() -> str:
    return os.getloadavg().__repr__()


def case_row(case: str, db: str, system: str, run: CaseRun, **extra: Any) -> dict[str, Any]:
    summary = run.audit.summary()
    # An acknowledged trial stored COMPLETE with its value but another `x`: the
    # client's first SetTrialParameter was answered with an error yet applied, and
    # its retry (a new suggestion) was not taken, a trial's parameter being set once.
    other_param = sum(found is not None and found[:2] == ("COMPLETE", ack.value)
                      for ack, found in run.audit.lost)
    return {
        "case": case, "db": db, "system": system,
        "fault_seconds": round(run.over_at - run.fault_at, 1),
        "acknowledged": summary["acknowledged"],
        "client_exceptions": summary["client_exceptions"],
        "lost": summary["lost"] - other_param,
        "duplicate_numbers": summary["duplicate_numbers"] + summary["gaps"],
        "written_unacknowledged": summary["unacknowledged_trials"],
        "param_applied_though_failed": other_param,
        "left_running": summary["left_running"],
        "recovered_s": None if run.recovered_after is None else round(run.recovered_after, 2),
        "restarted_processes": sorted(n for n, pid in run.processes_before.items()
                                      if run.processes_after.get(n) != pid),
        **run.notes, **extra,
    }


def failed_row(case: str, db: str, system: str, exc: BaseException) -> dict[str, Any]:
    return {"case": case, "db": db, "system": system, "error": f"{type(exc).__name__}: {exc}"}


def fault_cases(
    dbs: list[str], cases: list[str], systems: list[str], long: bool
) -> list[dict[str, Any]]:
    past = (30.0, 10.0) if long else (8.0, 2.0)
    cut_seconds = 30.0 if long else 10.0
    plan: list[tuple[str, str, str, Proxy, Callable[[Proxy, str, str], CaseRun], dict]] = []
    for db in dbs:
        for system, proxy in (("shardproxy", shardproxy()), ("stock", stock_proxy())):
            if system not in systems:
                continue
            if "restart" in cases:
                plan.append(("restart 5 s", db, system, proxy,
                             lambda p, url, db: run_outage(p, url, db, 5.0), {}))
            if "past-deadline" in cases:
                deadline = shardproxy(("--retry-deadline", str(past[1])))
                plan.append((f"restart {past[0]:.0f} s, deadline {past[1]:.0f} s", db, system,
                             deadline if system == "shardproxy" else proxy,
                             lambda p, url, db: run_outage(p, url, db, past[0]), {}))
            if "cuts" in cases:
                plan.append((f"connections cut for {cut_seconds:.0f} s", db, system, proxy,
                             lambda p, url, db: run_cuts(p, url, cut_seconds), {}))
            if "kill" in cases and system == "shardproxy":
                plan.append(("worker SIGKILL", db, system, proxy,
                             lambda p, url, db: run_worker_kill(p, url), {}))
    rows = []
    for case, db, system, proxy, run, extra in plan:
        print(f"{case} on {db}, {system} ...", flush=True)
        with tempfile.TemporaryDirectory() as tmp, fresh_database(db, Path(tmp)) as url:
            try:
                row = case_row(case, db, system, run(proxy, url, db), load=load(), **extra)
            except Exception as exc:  # a case that cannot run is reported as such
                row = failed_row(case, db, system, exc)
        print("   ", row, flush=True)
        rows.append(row)
    return rows


FRESH_CLIENT = """
import json, sys, optuna
from optuna.storages import GrpcStorageProxy
storage = GrpcStorageProxy(host="127.0.0.1", port=int(sys.argv[1]))
study = optuna.load_study(study_name=sys.argv[2], storage=storage)
print(json.dumps([sorted(t.params) for t in study.get_trials(deepcopy=False)]))
"""


def reuse_case(system: str, proxy: Proxy) -> dict[str, Any]:
    """S (5 trials, `x`) through the proxy; RDBStorage deletes it, creates T (same id, 2
    trials, `y`); what a fresh client process is served for T."""
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/reuse.db"
        RDBStorage(url).engine.dispose()  # the schema, for the stock proxy
        with proxy(url) as running:
            with proxy_client(running.port) as storage:
                s = optuna.create_study(study_name="S", storage=storage)
                s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
                s.trials  # noqa: B018 (a read, so that the proxy caches S)
            direct = RDBStorage(url)
            optuna.delete_study(study_name="S", storage=direct)
            t = optuna.create_study(study_name="T", storage=direct)
            t.optimize(lambda trial: trial.suggest_float("y", 0, 1), n_trials=2)
            same_id = t._study_id == s._study_id
            direct.engine.dispose()
            out = subprocess.run([sys.executable, "-W", "ignore", "-c", FRESH_CLIENT,
                                  str(running.port), "T"], capture_output=True, text=True,
                                 timeout=120, check=True).stdout
    served = json.loads(out)
    return {"case": "study id reused (SQLite)", "db": "sqlite", "system": system,
            "same_id": same_id, "trials_served_for_T": len(served),
            "params_served": sorted({name for names in served for name in names}),
            "correct": served == [["y"], ["y"]]}


def crowd_case(system: str, proxy: Proxy, connections: int, active: int,
               duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp, fresh_database("mariadb", Path(tmp)) as url:
        RDBStorage(url).engine.dispose()
        with proxy(url) as running:
            with proxy_client(running.port) as setup:
                study_ids = tuple(
                    optuna.create_study(study_name=f"crowd-{i}", storage=setup)._study_id
                    for i in range(4))
            before = running.processes()
            with RssWatch(before) as rss:
                reports = run_crowd(f"127.0.0.1:{running.port}", connections, active,
                                    study_ids, duration)
            died = sorted(n for n, pid in before.items() if running.processes().get(n) != pid)
    total, recorder = merged(reports)
    return {
        "case": f"{connections} connections, {active} running trials for {duration:.0f} s",
        "db": "mariadb", "system": system, "opened": total.opened,
        "refused": total.failed_to_connect, "connect_s": round(total.connect_seconds, 1),
        "rpc_errors": dict(total.errors), "trials": recorder.trials,
        "processes_died": died,
        "peak_rss_mib": {n: round(v) for n, v in rss.peak.items()},
        "latency": latency_percentiles(recorder), "load": load(),
    }


def load_range(rows: list[dict[str, Any]]) -> str:
    loads = [float(r["load"].strip("()").split(",")[0]) for r in rows if r.get("load")]
    return f"{min(loads):.1f} to {max(loads):.1f}" if loads else "not recorded"


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    lines = [
        "# Faults: what Optuna clients saw", "",
        f"`{command}` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC; the 1-minute load "
        f"average was {load_range(rows)} as the cases ran (2 cores, shared with other "
        "work: compare counts, not times).", "",
        "8 unmodified Optuna client processes, 4 studies; shardproxy with 4 workers, "
        "the stock proxy (`run_grpc_proxy_server`) in its one process. Every failed step "
        "is retried by the client (`tests/faults/trials.py`), so a client exception is a "
        "call that failed, not a client that stopped. *lost*: acknowledged, not stored as "
        "acknowledged; *dup/gap*: trial numbers repeated or missing; *unacked trials*: "
        "trials stored that no client was told of (a create answered with an error that "
        "had been applied, or applied twice); *param of a failed call*: a "
        "SetTrialParameter answered with an error that had been applied (the client "
        "suggested again; a trial's parameter is set once, as in RDBStorage, so the "
        "first value stayed); *running*: left RUNNING; *recovered*: seconds from the "
        "end of the fault to the next acknowledged trial.", "",
        "| case | db | proxy | fault s | acked | client exceptions | lost | dup/gap "
        "| unacked trials | param of a failed call | running | recovered s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if "acknowledged" not in row:
            continue
        notes = {k: v for k, v in row.items() if k in ("cuts", "connections_cut", "error")}
        if row.get("restarted_processes"):
            notes["restarted"] = row["restarted_processes"]
        exceptions = ", ".join(f"{k} {v}" for k, v in row["client_exceptions"].items()) or "0"
        lines.append(
            f"| {row['case']} | {row['db']} | {row['system']} | {row['fault_seconds']} "
            f"| {row['acknowledged']} | {exceptions} | {row['lost']} "
            f"| {row['duplicate_numbers']} | {row['written_unacknowledged']} "
            f"| {row.get('param_applied_though_failed', 0)} | {row['left_running']} "
            f"| {row['recovered_s']} | {notes or ''} |")
    for row in rows:
        if "error" in row:
            lines.append(f"\n{row['case']} on {row['db']} with {row['system']} did not run: "
                         f"{row['error']}")
    reuse = [r for r in rows if r["case"].startswith("study id reused")]
    if reuse:
        lines += ["", "## A study id reused after a delete (SQLite)", "",
                  "S (5 trials, param `x`) read through the proxy; RDBStorage deletes S and "
                  "creates T, which gets S's id, with 2 trials (param `y`); a fresh client "
                  "process loads T through the proxy.", "",
                  "| proxy | same id | trials served for T | params served | correct |",
                  "|---|---|---|---|---|"]
        for row in reuse:
            lines.append(f"| {row['system']} | {row['same_id']} | {row['trials_served_for_T']} "
                         f"| {', '.join(row['params_served'])} | {row['correct']} |")
    crowd = [r for r in rows if "opened" in r]
    if crowd:
        lines += ["", "## Many connections (MariaDB)", "",
                  "4 client processes open every connection at once (one channel each), "
                  "then the load generator's virtual workers (RandomSampler, the RPCs of "
                  "`GrpcStorageProxy`) run trials on some of them while the rest stay idle. "
                  "A trial is 6 RPCs; on two busy cores each running worker finished about "
                  "one in the 10 s, so every latency below is mostly queueing.",
                  "", "| proxy | case | opened | refused | connect s | RPC errors | trials "
                  "| died | peak RSS MiB | p50 / p99 ms by method |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row in crowd:
            latency = "; ".join(f"{m} {v['p50_ms']:.0f} / {v['p99_ms']:.0f}"
                                for m, v in row["latency"].items())
            lines.append(
                f"| {row['system']} | {row['case']} | {row['opened']} | {row['refused']} "
                f"| {row['connect_s']} | {row['rpc_errors'] or 0} | {row['trials']} "
                f"| {row['processes_died'] or 'none'} | {row['peak_rss_mib']} | {latency} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", default="mariadb,postgres")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--systems", default="shardproxy,stock")
    parser.add_argument("--long", action="store_true")
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--active", type=int, default=2000)
    parser.add_argument("--crowd-seconds", type=float, default=10.0)
    parser.add_argument("--out", default=str(RESULTS / "faults"))
    parser.add_argument("--update", action="store_true",
                        help="keep the rows of OUT.json this run does not redo")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    cases = args.cases.split(",")
    systems = args.systems.split(",")
    proxies = {"shardproxy": shardproxy(), "stock": stock_proxy()}
    started = time.monotonic()
    rows = fault_cases(args.db.split(","), cases, systems, args.long)
    for system in systems:
        if "reuse" in cases:
            rows.append(reuse_case(system, proxies[system]))
            print("   ", rows[-1], flush=True)
        if "crowd" in cases:
            try:
                rows.append(crowd_case(system, proxies[system], args.connections,
                                       args.active, args.crowd_seconds))
            except Exception as exc:
                rows.append(failed_row("crowd", "mariadb", system, exc))
            print("   ", rows[-1], flush=True)
    command = "python -m bench.faults " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    if args.update and out.with_suffix(".json").exists():
        earlier = json.loads(out.with_suffix(".json").read_text())
        redone = {(kind_of(r), r["db"], r["system"]) for r in rows}
        rows = [r for r in earlier["rows"]
                if (kind_of(r), r["db"], r["system"]) not in redone] + rows
        rows.sort(key=lambda r: (CASES.index(kind_of(r)) >= CASES.index("reuse"), r["db"],
                                 CASES.index(kind_of(r)), r["system"] != "shardproxy"))
        command = f"{earlier['command']}; {command.strip()}"
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "seconds": round(time.monotonic() - started),
         "rows": rows}, indent=1, default=str))
    out.with_suffix(".md").write_text(markdown(rows, command.strip()))
    print(f"wrote {out}.md and .json")


if __name__ == "__main__":
    main()
