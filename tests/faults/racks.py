"""Optuna workers in processes of their own, for tests with several proxies on one database.

Each client process opens its own storage (a `GrpcStorageProxy` to one proxy, or
`RDBStorage` on the database), optimizes the shared studies with TPE, one trial at
a time so the studies interleave, and reports what it was told: every trial it
finished (as acknowledged by its storage), and every exception. Once all clients
have finished writing (a barrier), each reads every study once more through its
own storage, and reports that final view too.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.synchronize
import queue
import time
import traceback
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.storages import BaseStorage, GrpcStorageProxy, RDBStorage
from optuna.trial import FrozenTrial

# (number, state, params, values): what two views of a trial must agree on.
TrialView = tuple[int, str, tuple[tuple[str, Any], ...], tuple[float, ...] | None]


@dataclass(frozen=True)
class ClientSpec:
    name: str
    storage: str  # "grpc://host:port" for a proxy, else a database URL
    studies: tuple[str, ...]
    trials_per_study: int
    seed: int


@dataclass
class ClientReport:
    name: str
    acknowledged: list[tuple[str, int, str, float | None]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    views: dict[str, list[TrialView]] = field(default_factory=dict)


class ObjectiveFailed(Exception):
    """Raised by the objective on purpose, so that some trials end FAIL."""


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    kind = trial.suggest_categorical("kind", ["plain", "shifted", "pruned", "failed"])
    if kind == "pruned":
        raise optuna.TrialPruned()
    if kind == "failed":
        raise ObjectiveFailed()
    trial.report(x * x, step=0)
    return (x - 2) ** 2 if kind == "shifted" else x * x


def open_storage(storage: str) -> BaseStorage:
    if storage.startswith("grpc://"):
        host, port = storage.removeprefix("grpc://").rsplit(":", 1)
        proxy = GrpcStorageProxy(host=host, port=int(port))
        proxy.wait_server_ready(timeout=60)
        return proxy
    return RDBStorage(storage)


def view_of(trials: list[FrozenTrial]) -> list[TrialView]:
    """A study's trials as the fields every client must see alike, by number."""
    return sorted(
        (t.number, t.state.name, tuple(sorted(t.params.items())),
         None if t.values is None else tuple(t.values))
        for t in trials
    )


def run_client(
    spec: ClientSpec,
    finished_writing: multiprocessing.synchronize.Barrier,
    reports: multiprocessing.Queue,
) -> None:
    """A client process: optimize, wait for every other client, read, report."""
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    report = ClientReport(spec.name)
    storage: BaseStorage | None = None
    try:
        storage = open_storage(spec.storage)
        studies = [
            optuna.load_study(
                study_name=name,
                storage=storage,
                sampler=optuna.samplers.TPESampler(seed=spec.seed + i, n_startup_trials=4),
            )
            for i, name in enumerate(spec.studies)
        ]

        def acknowledged(study: optuna.Study, trial: FrozenTrial) -> None:
            report.acknowledged.append(
                (study.study_name, trial.number, trial.state.name, trial.value)
            )

        for _ in range(spec.trials_per_study):
            for study in studies:
                try:
                    study.optimize(objective, n_trials=1, catch=(ObjectiveFailed,),
                                   callbacks=[acknowledged])
                except Exception:
                    report.errors.append(traceback.format_exc(limit=3))
    except Exception:
        report.errors.append(traceback.format_exc(limit=3))
    try:
        finished_writing.wait(timeout=600)
        if storage is not None:
            for name in spec.studies:
                study = optuna.load_study(study_name=name, storage=storage)
                report.views[name] = view_of(study.get_trials(deepcopy=False))
    except Exception:
        report.errors.append(traceback.format_exc(limit=3))
    finally:
        if isinstance(storage, GrpcStorageProxy):
            storage.close()
        elif isinstance(storage, RDBStorage):
            storage.engine.dispose()
    reports.put(report)


class ClientProcesses:
    """Client processes (spawned: nothing inherited from the test) running `specs`."""

    def __init__(self, specs: list[ClientSpec]) -> None:
        context = multiprocessing.get_context("spawn")
        self._reports: multiprocessing.Queue = context.Queue()
        # Kept while the clients run: a spawned child opens it after this returns.
        self._barrier = context.Barrier(len(specs))
        self._processes = [
            context.Process(target=run_client, args=(spec, self._barrier, self._reports),
                            name=spec.name)
            for spec in specs
        ]
        for process in self._processes:
            process.start()

    def collect(self, timeout: float = 900) -> list[ClientReport]:
        """Every client's report, once all have finished; by client name."""
        reports: list[ClientReport] = []
        deadline = time.monotonic() + timeout
        try:
            while len(reports) < len(self._processes) and time.monotonic() < deadline:
                try:
                    reports.append(self._reports.get(timeout=1.0))
                except queue.Empty:
                    if not any(p.is_alive() for p in self._processes):
                        break  # a client died without a report
        finally:
            self.stop()
        assert len(reports) == len(self._processes), "a client process gave no report"
        assert [p.exitcode for p in self._processes] == [0] * len(self._processes)
        return sorted(reports, key=lambda r: r.name)

    def stop(self) -> None:
        for process in self._processes:
            process.join(timeout=60)
            if process.is_alive():
                process.kill()
                process.join()
