"""A worker killed mid-trial: its trial goes stale, is failed, and runs again elsewhere.

Real processes on MariaDB: `shardproxy serve`, and an Optuna worker process running
`study.optimize` through `shardproxy.client.GrpcStorageProxy` with heartbeats on,
SIGKILLed while its trial runs. Once the grace period has passed, another worker's
next `optimize` fails the stale trial and RetryHeartbeatStaleTrialCallback enqueues
it again; that worker runs the retry to completion with the same parameters. The
other worker is one through the same proxy, one through a second proxy on the same
database, and a direct RDBStorage: the beats the proxy wrote are Optuna's own.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import time
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._base import BaseStorage
from optuna.trial import TrialState

from shardproxy.client import GrpcStorageProxy
from tests.servers import serve, wait_until

optuna.logging.set_verbosity(optuna.logging.WARNING)
INTERVAL, GRACE = 1, 2


def heartbeat_options() -> dict[str, object]:
    return {"heartbeat_interval": INTERVAL, "grace_period": GRACE,
            "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=2)}


def optimize_until_killed(port: int, study_name: str, started: Connection) -> None:
    """An Optuna worker whose trial runs until the process is killed."""
    warnings.simplefilter("ignore")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = GrpcStorageProxy(host="127.0.0.1", port=port, **heartbeat_options())  # type: ignore[arg-type]
    study = optuna.load_study(study_name=study_name, storage=storage)

    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        started.send(trial._trial_id)
        time.sleep(600)
        return x

    study.optimize(objective, n_trials=1)


def heartbeat_of(url: str, trial_id: int) -> object:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            return conn.exec_driver_sql(
                f"SELECT heartbeat FROM trial_heartbeats WHERE trial_id = {int(trial_id)}"
            ).scalar()
    finally:
        engine.dispose()


@contextlib.contextmanager
def other_worker_storage(kind: str, url: str, port: int) -> Iterator[BaseStorage]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        if kind == "rdbstorage":
            storage: BaseStorage = RDBStorage(url, **heartbeat_options())  # type: ignore[arg-type]
            yield storage
            return
        if kind == "same-proxy":
            client = GrpcStorageProxy(host="127.0.0.1", port=port, **heartbeat_options())  # type: ignore[arg-type]
            yield client
            client.close()
            return
    with serve(url, workers=1) as (_, other_port):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            client = GrpcStorageProxy(host="127.0.0.1", port=other_port, **heartbeat_options())  # type: ignore[arg-type]
        yield client
        client.close()


@pytest.mark.parametrize("other", ["same-proxy", "other-proxy", "rdbstorage"])
def test_a_killed_workers_trial_is_failed_and_run_again(mariadb_url: str, other: str) -> None:
    with serve(mariadb_url, workers=2) as (_, port):
        setup = GrpcStorageProxy(host="127.0.0.1", port=port)
        optuna.create_study(storage=setup, study_name="killed")
        setup.close()
        context = multiprocessing.get_context("spawn")
        receiver, sender = context.Pipe(duplex=False)
        worker = context.Process(target=optimize_until_killed, args=(port, "killed", sender))
        worker.start()
        try:
            assert receiver.poll(60), "the worker's trial did not start"
            trial_id = receiver.recv()
            assert wait_until(lambda: heartbeat_of(mariadb_url, trial_id), 10), "no heartbeat"
        finally:
            os.kill(worker.pid, signal.SIGKILL)  # type: ignore[arg-type]
            worker.join(10)
        killed_at = time.monotonic()

        with other_worker_storage(other, mariadb_url, port) as storage:
            study = optuna.load_study(study_name="killed", storage=storage)
            assert study._storage.get_trial(trial_id).state == TrialState.RUNNING
            time.sleep(max(0.0, killed_at + GRACE + 1.5 - time.monotonic()))
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
            trials = study.get_trials(deepcopy=False)

    killed = next(t for t in trials if t._trial_id == trial_id)
    assert killed.state == TrialState.FAIL
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed.number]
    assert len(retries) == 1
    assert retries[0].state == TrialState.COMPLETE
    assert retries[0].params == killed.params
    assert retries[0].value == killed.params["x"]
