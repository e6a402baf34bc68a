"""`shardproxy.client` across a proxy worker's death: retried, and never applied twice.

Real `shardproxy serve` processes on MariaDB. The owner of a study is killed
between the COMMIT of a trial creation (or of a trial's result) and its reply, by
a fault hook (SHARDPROXY_TEST_FAULT_HOOKS, a request key starting with
"die-after-commit-"): the client does not learn the outcome, retries with the same
key once the worker is back, and gets the first commit's answer: one trial, no
spurious error. Then a worker is SIGKILLed under load from client processes
running `study.optimize` through the client: no client sees an exception, and
every trial is stored once, finished.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
import uuid
import warnings
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.synchronize import Event

import optuna
import pytest
import sqlalchemy
from optuna.trial import TrialState

import shardproxy.client.retrying
from shardproxy.client import GrpcStorageProxy
from shardproxy.worker import DIE_AFTER_COMMIT
from tests.servers import children_by_name, serve, wait_until
from tests.test_client import client

optuna.logging.set_verbosity(optuna.logging.WARNING)
WORKERS = 2


@pytest.fixture
def server(mariadb_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, int]]:
    """(supervisor pid, port) of `shardproxy serve` with the test fault hooks."""
    monkeypatch.setenv("SHARDPROXY_TEST_FAULT_HOOKS", "1")
    with serve(mariadb_url, workers=WORKERS) as (process, port):
        yield process.pid, port


def rows(url: str, query: str) -> list[tuple[object, ...]]:
    """The query's rows; retried for a minute while the (shared) server restarts."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                with engine.connect() as conn:
                    return [tuple(r) for r in conn.exec_driver_sql(query)]
            except sqlalchemy.exc.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
    finally:
        engine.dispose()


def test_a_write_whose_reply_died_with_its_owner_is_answered_once(
    server: tuple[int, int], mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    supervisor, port = server
    storage = client(port)
    try:
        study_id = storage.create_new_study([optuna.study.StudyDirection.MINIMIZE], "once")
        for call in ("create", "finish"):
            workers = children_by_name(supervisor)
            monkeypatch.setattr(shardproxy.client.retrying, "new_request_key",
                                lambda: f"{DIE_AFTER_COMMIT}{uuid.uuid4()}")
            if call == "create":
                trial_id = storage.create_new_trial(study_id)
            else:
                assert storage.set_trial_state_values(trial_id, TrialState.COMPLETE, [3.0])
            monkeypatch.undo()
            # The owner died after its commit (and was replaced); the retry got the answer.
            assert wait_until(lambda w=workers: children_by_name(supervisor) != w, 10), (
                "no worker died: the fault did not fire"
            )
        trials = rows(mariadb_url, "SELECT trial_id, number, state FROM trials")
        assert trials == [(trial_id, 0, "COMPLETE")]
        assert rows(mariadb_url, "SELECT value FROM trial_values") == [(3.0,)]
        # Each call wrote its key once, in its commit.
        assert len(rows(mariadb_url, "SELECT request_key FROM shardproxy_request_keys")) == 2
    finally:
        storage.close()


# -- a worker SIGKILLed under load ------------------------------------------------------


def run_client(
    port: int, study_name: str, stop: Event, report: Connection, optunas: bool
) -> None:
    """Runs one-trial optimizes until told to stop; reports (trials told, errors)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.simplefilter("ignore")
    kind = optuna.storages.GrpcStorageProxy if optunas else GrpcStorageProxy
    storage = kind(host="127.0.0.1", port=port)
    study = optuna.load_study(study_name=study_name, storage=storage)
    told, errors = 0, []
    while not stop.is_set():
        try:
            study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=1)
            told += 1
        except Exception as exc:  # what the test counts: it must not happen
            errors.append(f"{type(exc).__name__}: {exc}")
    storage.close()
    report.send((told, errors))


@pytest.mark.parametrize("optunas", [
    False,
    # What the retries buy: the same load with Optuna's client, which asserts only
    # what that client guarantees and prints its errors (`pytest -s` shows them).
    True,
], ids=["shardproxy-client", "optunas-client"])
def test_a_worker_killed_under_load_costs_the_clients_nothing(
    server: tuple[int, int], mariadb_url: str, optunas: bool
) -> None:
    supervisor, port = server
    setup = client(port)
    names = [f"load-{i}" for i in range(4)]
    for name in names:
        optuna.create_study(storage=setup, study_name=name)
    setup.close()
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    clients = []
    for name in names:
        receiver, sender = context.Pipe(duplex=False)
        process = context.Process(target=run_client, args=(port, name, stop, sender, optunas))
        process.start()
        clients.append((process, receiver))
    try:
        assert wait_until(lambda: len(rows(mariadb_url, "SELECT trial_id FROM trials "
                                                        "WHERE state = 'COMPLETE'")) >= 40, 60)
        for victim in sorted(children_by_name(supervisor)):
            before = children_by_name(supervisor)[victim]
            os.kill(before, signal.SIGKILL)
            replaced = wait_until(
                lambda v=victim, b=before: children_by_name(supervisor).get(v, b) != b, 30
            )
            assert replaced, f"{victim} was not replaced"
            time.sleep(1.5)  # load on the replacement
    finally:
        stop.set()
        reports = []
        for process, receiver in clients:
            if receiver.poll(60):
                reports.append(receiver.recv())
            process.join(30)
            if process.is_alive():
                process.kill()
    assert len(reports) == len(names)
    errors = [e for _, errs in reports for e in errs]
    told = sum(t for t, _ in reports)
    by_state = dict(rows(mariadb_url, "SELECT state, COUNT(*) FROM trials GROUP BY state"))
    print(f"{'Optuna' if optunas else 'shardproxy'}'s client: {told} trials told, "
          f"{len(errors)} exceptions {errors[:3]}, trials by state {by_state}")
    if optunas:
        assert by_state.get("COMPLETE", 0) >= told  # nothing acknowledged is lost
        return
    assert errors == []
    # Every trial a client ran is stored once, finished: no duplicate, no orphan.
    assert by_state == {"COMPLETE": told}
    numbers = rows(mariadb_url, "SELECT study_id, COUNT(*), MAX(number) FROM trials "
                                "GROUP BY study_id")
    assert all(count == top + 1 for _, count, top in numbers)  # type: ignore[operator]
