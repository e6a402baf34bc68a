"""Studies are sharded: one owner per study, whichever worker a client's connection reached."""

from __future__ import annotations

import threading

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.study import StudyDirection
from optuna.trial import TrialState

from shardproxy import worker as worker_module
from shardproxy.routing import owner_of
from shardproxy.wire import METHOD_INDEX
from tests.proxies import proxy_client, running_workers


def test_each_study_is_cached_by_its_owner_only(mariadb_url: str) -> None:
    with running_workers(mariadb_url, workers=4) as workers:
        port = workers[0].port
        names = [f"study-{i}" for i in range(6)]
        with proxy_client(port) as setup:
            study_ids = [optuna.create_study(study_name=n, storage=setup)._study_id
                         for n in names]
        errors: list[BaseException] = []

        def client(name: str) -> None:
            # Each client has its own connection; the kernel spreads them over workers.
            with proxy_client(port) as storage:
                try:
                    study = optuna.load_study(study_name=name, storage=storage)
                    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=6)
                except BaseException as exc:  # reported below
                    errors.append(exc)

        threads = [threading.Thread(target=client, args=(names[i % len(names)],))
                   for i in range(16)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=300)
        assert not errors

        # gRPC shares one connection among a process's channels, so these clients may
        # all reach one front; studies owned elsewhere must then have been forwarded.
        forwarded = sum(
            n for w in workers for k, n in w.metrics.snapshot().items()
            if k.startswith("forwarded.")
        )
        assert forwarded > 0, "no request reached a study's owner through forwarding"
        for study_id in study_ids:
            caching = [w.shard.index for w in workers if w.caches.holds(study_id)]
            assert caching == [owner_of(study_id, 4)]
        with proxy_client(port) as check:
            for name in names:
                trials = optuna.load_study(study_name=name, storage=check).get_trials()
                counts = sum(1 for i in range(16) if names[i % len(names)] == name)
                assert sorted(t.number for t in trials) == list(range(6 * counts))
                assert all(t.state == TrialState.COMPLETE for t in trials)


def test_a_forwarded_write_is_answered_with_its_owners_answer_however_long_it_takes(
    mariadb_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The front that forwarded a write never answers it before its owner does: a
    write the owner is still applying may yet stand, and UNAVAILABLE would tell the
    client it failed. The write below is held by a lock for four times the timeout
    a forwarded read has (the retry deadline plus a margin, 0.5 s here)."""
    monkeypatch.setattr(worker_module, "FORWARDED_READ_MARGIN", 0.0)
    with running_workers(mariadb_url, workers=2, retry_deadline=0.5) as workers:
        direct = RDBStorage(mariadb_url)
        study_id = direct.create_new_study([StudyDirection.MINIMIZE], "held-owner")
        front = workers[1 - owner_of(study_id, 2)].front
        request = api_pb2.CreateNewTrialRequest(
            study_id=study_id, template_trial_is_none=True).SerializeToString()
        engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.NullPool)
        result: dict[str, object] = {}

        def create() -> None:
            try:
                result["reply"] = front.handle(METHOD_INDEX["CreateNewTrial"], request)
            except Exception as exc:  # reported by the assertion below
                result["error"] = exc

        with engine.connect() as holder:
            transaction = holder.begin()
            # Hold the study row: the owner's numbering waits for it.
            holder.execute(sqlalchemy.text(
                "SELECT study_id FROM studies WHERE study_id = :s FOR UPDATE"), {"s": study_id})
            caller = threading.Thread(target=create)
            caller.start()
            caller.join(timeout=2.0)
            answered_while_held = dict(result)
            transaction.rollback()
        caller.join(timeout=60)
        engine.dispose()

        assert not answered_while_held, answered_while_held
        assert "error" not in result, result
        trial_id = api_pb2.CreateNewTrialReply.FromString(result["reply"]).trial_id
        assert [t._trial_id for t in direct.get_all_trials(study_id)] == [trial_id]
        direct.engine.dispose()
