"""`shardproxy.client.GrpcStorageProxy` in one process: its options, heartbeats, the stock proxy.

Its options and their errors are RDBStorage's; without options it is Optuna's
client (no heartbeat, same answers); with heartbeats `study.optimize` and
`fail_stale_trials` fail a trial whose worker stopped beating and
RetryHeartbeatStaleTrialCallback runs it again; against Optuna's own proxy it
warns once and works without heartbeats. Real worker processes killed mid-trial:
tests/test_heartbeat_kill.py.
"""

from __future__ import annotations

import pickle
import time
import warnings
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._grpc.server import make_server
from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled
from optuna.trial import TrialState

from shardproxy.client import ExtensionUnavailableWarning, GrpcStorageProxy
from tests.proxies import free_port, running_workers

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture
def port(mariadb_url: str) -> Iterator[int]:
    with running_workers(mariadb_url, workers=2) as workers:
        yield workers[0].port


def client(port: int, **options: object) -> GrpcStorageProxy:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = GrpcStorageProxy(host="127.0.0.1", port=port, **options)  # type: ignore[arg-type]
    storage.wait_server_ready(timeout=30)
    return storage


def test_options_are_checked_as_rdbstorage_checks_them() -> None:
    for bad in ({"heartbeat_interval": 0}, {"heartbeat_interval": -1}, {"grace_period": 0}):
        with pytest.raises(ValueError) as ours:
            GrpcStorageProxy(**bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError) as theirs:
            RDBStorage("sqlite://", **bad)  # type: ignore[arg-type]
        assert str(ours.value) == str(theirs.value)
    callback = RetryHeartbeatStaleTrialCallback()
    with pytest.raises(ValueError, match="Specify only one"):
        GrpcStorageProxy(heartbeat_stale_trial_callback=callback, failed_trial_callback=callback)
    with pytest.raises(ValueError, match="retry_deadline"):
        GrpcStorageProxy(retry_deadline=-1)
    with pytest.raises(ValueError, match="timeout"):
        GrpcStorageProxy(timeout=0)
    with pytest.warns(FutureWarning, match="failed_trial_callback"):
        old = GrpcStorageProxy(failed_trial_callback=callback)
    assert old.get_heartbeat_stale_trial_callback() is callback
    with pytest.warns(FutureWarning):
        assert old.get_failed_trial_callback() is callback
    old.close()


def test_without_options_it_is_optunas_client(port: int) -> None:
    storage = client(port)
    try:
        assert isinstance(storage, optuna.storages.GrpcStorageProxy)
        assert isinstance(storage, BaseHeartbeat)
        assert not is_heartbeat_enabled(storage)
        study = optuna.create_study(storage=storage, study_name="plain")
        study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=5)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 5
        assert study.best_value == min(t.value for t in study.trials)  # type: ignore[type-var]
        copy = pickle.loads(pickle.dumps(storage))
        try:
            assert len(copy.get_all_trials(study._study_id)) == 5
        finally:
            copy.close()
    finally:
        storage.close()


def test_optimize_fails_a_stale_trial_and_the_callback_runs_it_again(
    port: int, mariadb_url: str
) -> None:
    storage = client(
        port, heartbeat_interval=1, grace_period=1,
        heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=1),
    )
    try:
        assert is_heartbeat_enabled(storage)
        study = optuna.create_study(storage=storage, study_name="stale")
        # A worker that beat once, then died with its trial RUNNING. (Study.ask warns
        # as it does with RDBStorage's heartbeats.)
        with pytest.warns(UserWarning, match="supposed to be used with Study.optimize"):
            dead = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        storage.record_heartbeat(dead._trial_id)
        time.sleep(2.2)
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        trials = study.trials
        assert trials[0].state == TrialState.FAIL
        retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
        assert len(retried) == 1
        assert retried[0].state == TrialState.COMPLETE
        assert retried[0].params == dead.params
        # The live trials beat: every trial optimize ran has a heartbeat row.
        engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
        with engine.connect() as conn:
            beaten = {r[0] for r in conn.exec_driver_sql("SELECT trial_id FROM trial_heartbeats")}
        engine.dispose()
        assert {t._trial_id for t in trials} <= beaten
    finally:
        storage.close()


def test_against_optunas_proxy_it_warns_once_and_runs_without_heartbeats() -> None:
    port = free_port()
    server = make_server(optuna.storages.InMemoryStorage(), "127.0.0.1", port)
    server.start()
    try:
        storage = client(port, heartbeat_interval=1)
        with pytest.warns(ExtensionUnavailableWarning) as warned:
            study = optuna.create_study(storage=storage)
            study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=3)
            storage.record_heartbeat(study.trials[0]._trial_id)
            assert storage._get_stale_trial_ids(study._study_id) == []
        assert len(warned) == 1
        assert not is_heartbeat_enabled(storage)
        assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 3
        storage.close()
    finally:
        server.stop(0).wait()
