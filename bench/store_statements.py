"""Database statements and commits per trial: the Store's group commit against RDBStorage.

    python -m bench.store_statements [--db mariadb,postgres,sqlite] [--threads 32]
        [--trials-per-thread 10] [--out bench/results/store_statements]

The workload is RandomSampler's write sequence per trial (create_new_trial, one
set_trial_param, set_trial_state_values(COMPLETE, [v])) with `--threads` trials in
flight, run once through `shardproxy.store.Store` and once through Optuna's
`RDBStorage`, each on a fresh database of the same server, in this invocation.

Figures per trial:
- server: MariaDB `SHOW GLOBAL STATUS` deltas (Questions, Com_select, Com_insert,
  Com_update, Com_commit), less the cost of reading them (calibrated by two reads
  back to back); PostgreSQL `pg_stat_database.xact_commit` of the run's database,
  read from another database after every connection of the run has closed (a
  backend flushes its statistics when it exits). MariaDB's counters are
  server-wide: sessions of other databases busy during the window are reported.
- client: statements and commits the process sent, counted by SQLAlchemy events
  (one executemany counts once), for every backend.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from bench.databases import fresh_database
from shardproxy.rows import COMPLETE
from shardproxy.store import Store

MARIADB_COUNTERS = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_commit")
DISTRIBUTION = FloatDistribution(-10.0, 10.0)
DISTRIBUTION_JSON = distribution_to_json(DISTRIBUTION)
WARMUP_TRIALS_PER_THREAD = 1
# PostgreSQL backends flush their statistics when they exit or, idle, within 10 s.
POSTGRES_STATS_SETTLE = 1.0


@dataclass
class Result:
    backend: str
    system: str
    trials: int
    seconds: float
    server: dict[str, float] = field(default_factory=dict)  # per trial
    client: dict[str, float] = field(default_factory=dict)  # per trial
    other_busy_sessions: int = 0


class ClientCounter:
    """Statements and commits every SQLAlchemy engine of this process sends."""

    def __init__(self) -> None:
        self.statements = 0
        self.commits = 0
        self._lock = threading.Lock()
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "before_cursor_execute", self._stmt)
        sqlalchemy.event.listen(sqlalchemy.engine.Engine, "commit", self._commit)

    def _stmt(self, *_: Any) -> None:
        with self._lock:
            self.statements += 1

    def _commit(self, *_: Any) -> None:
        with self._lock:
            self.commits += 1

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return {"statements": self.statements, "commits": self.commits}


# -- the two systems -----------------------------------------------------------------


class StoreSystem:
    name = "shardproxy Store"

    def __init__(self, url: str) -> None:
        self.store = Store(url)
        self.study_id = self.store.create_new_study([0], f"bench-{uuid.uuid4().hex}")

    def trial(self, value: float) -> None:
        trial_id = self.store.create_new_trial(self.study_id, None)
        # With the trial's study, as the service passes it.
        self.store.set_trial_param(trial_id, "x", value, DISTRIBUTION_JSON,
                                   study_id=self.study_id)
        self.store.set_trial_state_values(trial_id, COMPLETE, [value * value])

    def close(self) -> None:
        self.store.close()


class RDBStorageSystem:
    name = "Optuna RDBStorage"

    def __init__(self, url: str) -> None:
        self.storage = RDBStorage(url)
        self.study_id = self.storage.create_new_study(
            [StudyDirection.MINIMIZE], f"bench-{uuid.uuid4().hex}"
        )

    def trial(self, value: float) -> None:
        trial_id = self.storage.create_new_trial(self.study_id)
        self.storage.set_trial_param(trial_id, "x", value, DISTRIBUTION)
        self.storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [value * value])

    def close(self) -> None:
        self.storage.remove_session()
        self.storage.engine.dispose()


SYSTEMS: dict[str, Callable[[str], Any]] = {"store": StoreSystem, "rdbstorage": RDBStorageSystem}


def run_trials(system: Any, threads: int, per_thread: int) -> None:
    def worker(index: int) -> None:
        for i in range(per_thread):
            system.trial(float((index * per_thread + i) % 20 - 10))
        if isinstance(system, RDBStorageSystem):
            system.storage.remove_session()  # return this thread's connection

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))


# -- server counters -------------------------------------------------------------------


def mariadb_status(admin: sqlalchemy.Engine, database: str) -> tuple[dict[str, int], int]:
    """The server's counters, and how many sessions of other databases are busy."""
    with admin.connect() as conn:
        busy = int(conn.execute(sqlalchemy.text(
            "SELECT COUNT(*) FROM information_schema.processlist "
            "WHERE command <> 'Sleep' AND id <> CONNECTION_ID() "
            "AND (db IS NULL OR db <> :db)"), {"db": database}).scalar_one())
        rows = conn.execute(sqlalchemy.text("SHOW GLOBAL STATUS")).all()
    wanted = {name: int(value) for name, value in rows if name in MARIADB_COUNTERS}
    return {name: wanted[name] for name in MARIADB_COUNTERS}, busy


def postgres_commits(admin: sqlalchemy.Engine, database: str) -> int:
    with admin.connect() as conn:
        conn.execute(sqlalchemy.text("SELECT pg_stat_clear_snapshot()"))
        return int(conn.execute(sqlalchemy.text(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = :db"),
            {"db": database}).scalar_one())


def measure(backend: str, system_key: str, threads: int, per_thread: int,
            counter: ClientCounter) -> Result:
    with fresh_database(backend) as db:
        admin = sqlalchemy.create_engine(db.admin_url, poolclass=sqlalchemy.pool.NullPool) \
            if db.admin_url else None
        system = SYSTEMS[system_key](db.url)
        try:
            run_trials(system, threads, WARMUP_TRIALS_PER_THREAD)  # pools filled, caches warm
            busy = 0
            if backend == "mariadb":
                assert admin is not None
                # Reading the counters is itself counted: two reads back to back say
                # how much one read adds.
                first, _ = mariadb_status(admin, db.name)
                second, _ = mariadb_status(admin, db.name)
                reading = {k: second[k] - first[k] for k in MARIADB_COUNTERS}
                before, busy_before = mariadb_status(admin, db.name)
            client_before = counter.snapshot()
            started = time.perf_counter()
            run_trials(system, threads, per_thread)
            seconds = time.perf_counter() - started
            client_after = counter.snapshot()
            if backend == "mariadb":
                after, busy_after = mariadb_status(admin, db.name)  # type: ignore[arg-type]
                busy = max(busy_before, busy_after)
        finally:
            system.close()
        trials = threads * per_thread
        result = Result(backend, system.name, trials, seconds, other_busy_sessions=busy)
        result.client = {k: (client_after[k] - client_before[k]) / trials for k in client_after}
        if backend == "mariadb":
            result.server = {
                k: (after[k] - before[k] - reading[k]) / trials for k in MARIADB_COUNTERS
            }
        elif backend == "postgres":
            assert admin is not None
            result.server = {"xact_commit": _postgres_window(admin, db.name, system_key,
                                                             threads, per_thread)}
        if admin is not None:
            admin.dispose()
        return result


def _postgres_window(admin: sqlalchemy.Engine, database: str, system_key: str,
                     threads: int, per_thread: int) -> float:
    """Commits per trial of a second, separately measured run on the same database.

    Statistics reach pg_stat_database when a backend exits, so the window is framed
    by closed systems: commits counted after a warm-up-only run are subtracted from
    those after a warm-up plus the measured trials.
    """
    def commits_of(trials_per_thread: int) -> int:
        before = postgres_commits(admin, database)
        system = SYSTEMS[system_key](admin.url.set(database=database).render_as_string(
            hide_password=False))
        try:
            run_trials(system, threads, WARMUP_TRIALS_PER_THREAD)
            run_trials(system, threads, trials_per_thread)
        finally:
            system.close()
        time.sleep(POSTGRES_STATS_SETTLE)
        return postgres_commits(admin, database) - before

    warmup_only = commits_of(0)
    with_trials = commits_of(per_thread)
    return (with_trials - warmup_only) / (threads * per_thread)


# -- report ------------------------------------------------------------------------------


def _ratio(label: str, theirs: dict[str, float], ours: dict[str, float], key: str) -> str:
    return f"{label} {theirs[key] / ours[key]:.1f}x" if ours[key] else f"{label} n/a"


def markdown(results: list[Result], command: str) -> str:
    lines = [
        "# Store: database statements and commits per trial",
        "",
        "RandomSampler's write sequence per trial (create_new_trial, set_trial_param, "
        "set_trial_state_values(COMPLETE, [v])), trials in flight = threads, through "
        "`shardproxy.store.Store` and through Optuna's `RDBStorage`, each on a fresh "
        "database of the same server, in one invocation. How the figures are taken: "
        "`bench/store_statements.py`. These are writes only: the ~42 statements and 6 "
        "commits per trial quoted for RDBStorage in bench/README.md are a whole optimize "
        "loop, reads included.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.machine()}, Python {platform.python_version()}, "
        f"Optuna {optuna.__version__}, SQLAlchemy {sqlalchemy.__version__}.",
        "",
        "| backend | system | trials | trials/s | server counters per trial | "
        "client statements / trial | client commits / trial |",
        "|---|---|---:|---:|---|---:|---:|",
    ]
    for r in results:
        server = ", ".join(f"{k} {v:.2f}" for k, v in r.server.items()) or "—"
        lines.append(
            f"| {r.backend} | {r.system} | {r.trials} | {r.trials / r.seconds:.1f} | {server} | "
            f"{r.client['statements']:.2f} | {r.client['commits']:.2f} |"
        )
    lines += ["", "Ratios, RDBStorage / Store (same backend, same run):", ""]
    for backend in dict.fromkeys(r.backend for r in results):
        pair = {r.system: r for r in results if r.backend == backend}
        ours, theirs = pair.get(StoreSystem.name), pair.get(RDBStorageSystem.name)
        if ours is None or theirs is None:
            continue
        parts = [_ratio("client statements", theirs.client, ours.client, "statements")]
        for key in ("Questions", "Com_commit", "xact_commit"):
            if key in ours.server:
                parts.append(_ratio(key, theirs.server, ours.server, key))
        lines.append(f"- {backend}: " + ", ".join(parts))
    busy = [r for r in results if r.other_busy_sessions]
    if busy:
        lines += ["", "MariaDB's counters are server-wide; sessions of other databases were "
                  "busy around: " + ", ".join(f"{r.system} ({r.other_busy_sessions})"
                                              for r in busy) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="mariadb,postgres,sqlite")
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--trials-per-thread", type=int, default=10)
    parser.add_argument("--out", default="bench/results/store_statements")
    args = parser.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    counter = ClientCounter()
    results = []
    for backend in args.db.split(","):
        for system_key in SYSTEMS:
            result = measure(backend, system_key, args.threads, args.trials_per_thread, counter)
            print(json.dumps(asdict(result)), flush=True)
            results.append(result)
    command = "python -m bench.store_statements " + " ".join(argv or sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "results": [asdict(r) for r in results]}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown(results, command.strip()))
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
