"""Real Optuna workers: unmodified `study.optimize` in threads of a spawned process.

Each thread is one worker with a storage of its own (a `GrpcStorageProxy`, or for
the direct reference `optuna.storages.get_storage(URL)`), as separate worker
processes would have. Logging stays at WARNING: at INFO, Optuna reads the best
trial after every trial, which adds a GetTrials to each trial's RPCs.
"""

from __future__ import annotations

import os
import threading
import warnings
from dataclasses import dataclass
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Any

from bench.loadgen.control import ClientProcessSpec
from bench.loadgen.workload import Workload

GRPC_PREFIX = "grpc://"
# Seconds a loaded worker waits for the runner's go before giving up.
START_LIMIT = 600.0


@dataclass(frozen=True)
class RealClientsConfig:
    # "grpc://host:port" for a proxy, else a database URL (the direct reference).
    storage: str
    study_names: tuple[str, ...]
    workload: Workload
    threads: int = 4
    first_worker: int = 0  # index of this process's first thread among all workers


def make_storage(storage: str) -> Any:
    import optuna

    if storage.startswith(GRPC_PREFIX):
        host, _, port = storage[len(GRPC_PREFIX) :].rpartition(":")
        # BENCH_CLIENT=shardproxy: the workers use shardproxy.client instead of
        # Optuna's client (its decoding and retries), to compare their load CPU.
        kind = optuna.storages.GrpcStorageProxy
        if os.environ.get("BENCH_CLIENT") == "shardproxy":
            from shardproxy.client import GrpcStorageProxy as kind  # type: ignore[assignment]
        proxy = kind(host=host, port=int(port))
        proxy.wait_server_ready(timeout=60)
        return proxy
    return optuna.storages.get_storage(storage)


class _Worker(threading.Thread):
    def __init__(
        self, config: RealClientsConfig, index: int, go: Event, stop: Event, tally: _Tally
    ) -> None:
        super().__init__(daemon=True)
        self._config = config
        self._index = index
        self._go_event = go
        self._stop_event = stop
        self._tally = tally
        self.loaded = threading.Event()

    def run(self) -> None:
        import optuna

        try:
            names = self._config.study_names
            study = optuna.load_study(
                study_name=names[self._index % len(names)],
                storage=make_storage(self._config.storage),
                sampler=self._config.workload.make_sampler(),
            )
        except Exception as exc:
            self._tally.fail(exc)
            return
        finally:
            self.loaded.set()
        if not self._go_event.wait(timeout=START_LIMIT):
            return

        def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
            self._tally.add()
            if self._stop_event.is_set():
                study.stop()

        try:
            study.optimize(self._config.workload.objective(), callbacks=[after_trial])
        except Exception as exc:
            self._tally.fail(exc)


class _Tally:
    def __init__(self, progress: Synchronized) -> None:
        self._lock = threading.Lock()
        self._progress = progress
        self.trials = 0
        self.errors: list[str] = []

    def add(self) -> None:
        with self._lock:
            self.trials += 1
            self._progress.value = self.trials

    def fail(self, exc: Exception) -> None:
        with self._lock:
            self.errors.append(f"{type(exc).__name__}: {exc}")


def real_clients_main(spec: ClientProcessSpec[RealClientsConfig]) -> None:
    import optuna

    spec.pin()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    config = spec.config
    tally = _Tally(spec.progress)
    workers = [
        _Worker(config, config.first_worker + i, spec.go, spec.stop, tally)
        for i in range(config.threads)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.loaded.wait()
    spec.loaded.set()
    for worker in workers:
        worker.join()
    spec.report("ok", {"trials": tally.trials, "errors": tally.errors})
    spec.wait_release()
