"""Optuna clients on one study through several storages, and what the database then holds.

Each client is a thread with its own storage: a real, unmodified
`GrpcStorageProxy` to one `shardproxy serve`, or Optuna's own `RDBStorage` on one
node. It runs `study.optimize` with RandomSampler (cheap, so that 16 threads fit
a small machine) and reports every trial it finished as acknowledged by its
storage, every exception, and at the end its storage's view of the study.
`study_rows` reads the same study straight from a node, and `check` compares.
"""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import threading
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import optuna
import sqlalchemy
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage

from tests.proxies import free_port
from tests.servers import stop_process

optuna.logging.set_verbosity(optuna.logging.WARNING)

# (number, trial_id, state name, value): what a view of a trial must agree on.
TrialView = tuple[int, int, str, "float | None"]


@contextlib.contextmanager
def shardproxy_serve(url: str, log: Path, *flags: str) -> Iterator[int]:
    """`shardproxy serve` on `url` in a process of its own; yields its port; stops it."""
    port = free_port()
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "shardproxy", "serve", "--storage", url, "--host",
             "127.0.0.1", "--port", str(port), "--workers", "2", "--standbys", "0",
             "--drain-delay", "0", *flags],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
        try:
            storage.wait_server_ready(timeout=60)
        except Exception:
            raise RuntimeError(f"shardproxy did not start: {log.read_text()[-2000:]}") from None
        finally:
            storage.close()
        yield port
    finally:
        stop_process(process, 30)


@dataclass
class ClientReport:
    name: str
    # (trial_id, number, state, value) of each trial the client finished
    acknowledged: list[tuple[int, int, str, float | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    view: list[TrialView] = field(default_factory=list)


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    trial.report(x * x, step=0)
    return x * x


def run_clients(
    storages: list[Callable[[], BaseStorage]], study_name: str, trials_per_client: int
) -> list[ClientReport]:
    """One thread per storage factory, all optimizing `study_name`; their reports."""
    reports = [ClientReport(f"client-{i}") for i in range(len(storages))]
    done = threading.Barrier(len(storages))

    def client(open_storage: Callable[[], BaseStorage], report: ClientReport) -> None:
        storage = None
        try:
            storage = open_storage()
            study = optuna.load_study(study_name=study_name, storage=storage,
                                      sampler=optuna.samplers.RandomSampler())

            def acknowledged(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
                report.acknowledged.append(
                    (trial._trial_id, trial.number, trial.state.name, trial.value))

            study.optimize(objective, n_trials=trials_per_client, callbacks=[acknowledged],
                           catch=())
        except Exception:
            report.errors.append(traceback.format_exc(limit=3))
        finally:
            done.wait()  # every write is in before anyone reads its final view
        try:
            if storage is not None:
                study_id = storage.get_study_id_from_name(study_name)
                report.view = view_of(storage.get_all_trials(study_id, deepcopy=False))
        except Exception:
            report.errors.append(traceback.format_exc(limit=3))
        finally:
            if isinstance(storage, GrpcStorageProxy):
                storage.close()

    threads = [threading.Thread(target=client, args=(s, r), name=r.name)
               for s, r in zip(storages, reports, strict=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return reports


def view_of(trials: list[optuna.trial.FrozenTrial]) -> list[TrialView]:
    return sorted((t.number, t._trial_id, t.state.name, t.value) for t in trials)


def study_rows(url: str, study_name: str) -> list[TrialView]:
    """The study's trials as the database holds them, by number."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT t.number, t.trial_id, t.state, v.value FROM trials t "
                "JOIN studies s ON s.study_id = t.study_id "
                "LEFT JOIN trial_values v ON v.trial_id = t.trial_id AND v.objective = 0 "
                "WHERE s.study_name = %(name)s", {"name": study_name},
            ).all()
    finally:
        engine.dispose()
    return sorted((int(n), int(i), str(s), None if v is None else float(v))
                  for n, i, s, v in rows)


@dataclass
class Findings:
    trials: int
    duplicate_numbers: list[int]
    missing_numbers: list[int]
    ids_out_of_number_order: int
    lost: list[tuple[int, int, str, float | None]]  # acknowledged, not stored as told
    views_differing: list[str]  # clients whose final view is not the database's
    errors: list[str]

    @property
    def correct(self) -> bool:
        return not (self.duplicate_numbers or self.missing_numbers or self.lost
                    or self.views_differing or self.errors or self.ids_out_of_number_order)


def check(rows: list[TrialView], reports: list[ClientReport]) -> Findings:
    numbers = collections.Counter(number for number, *_ in rows)
    by_id = {trial_id: (number, state, value) for number, trial_id, state, value in rows}
    ids_by_number = [trial_id for _, trial_id, *_ in sorted(rows)]
    lost = [
        told for report in reports for told in report.acknowledged
        if by_id.get(told[0]) != told[1:]
    ]
    return Findings(
        trials=len(rows),
        duplicate_numbers=sorted(n for n, count in numbers.items() if count > 1),
        missing_numbers=sorted(set(range(len(rows))) - set(numbers)),
        ids_out_of_number_order=sum(
            1 for a, b in zip(ids_by_number, ids_by_number[1:], strict=False) if a > b),
        lost=lost,
        views_differing=[r.name for r in reports if r.view != rows],
        errors=[error for report in reports for error in report.errors],
    )


def create_study(url: str) -> str:
    """A new study of a fresh name, created through RDBStorage; its name."""
    name = f"study-{uuid.uuid4().hex[:8]}"
    storage = RDBStorage(url)
    optuna.create_study(study_name=name, storage=storage)
    storage.engine.dispose()
    return name


def proxy(port: int) -> Callable[[], BaseStorage]:
    """What opens a client of the proxy on `port`, once it answers."""

    def open_storage() -> BaseStorage:
        storage = GrpcStorageProxy(host="127.0.0.1", port=port)
        storage.wait_server_ready(timeout=60)
        return storage

    return open_storage
