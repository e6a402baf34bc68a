"""Studies are sharded: one owner per study, whichever worker a client's connection reached."""

from __future__ import annotations

import threading

import optuna
from optuna.trial import TrialState

from shardproxy.routing import owner_of
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
