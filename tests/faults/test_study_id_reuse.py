"""A study id handed out again after a delete (SQLite), and the trial ids with it.

SQLite gives a new row the highest rowid + 1, so once the newest study is
deleted, the next study gets its id, and new trials the ids of its deleted
trials. Tried as a user would meet it: study S runs 5 trials (param `x`) through
`shardproxy serve`; a direct `RDBStorage` user deletes S, creates T (which gets
S's id) and runs 2 trials (param `y`); a fresh `GrpcStorageProxy` client loading
T through the proxy must be served T's 2 trials, as RDBStorage serves them, not
S's 5 (Optuna's stock proxy serves S's: its cache is keyed by id too).

The proxy's caches of S (the owner's study cache, every worker's trial → study
map) must not outlive S: its trials are read again, in every worker, whichever
one a client reaches.
"""

from __future__ import annotations

import json
import subprocess
import sys

import optuna
import pytest
from optuna.storages import RDBStorage

from tests.faults.harness import serve
from tests.proxies import proxy_client, running_workers

WORKERS = 4
CLIENTS = 6


FRESH_CLIENT = """
import json, sys, optuna
from optuna.storages import GrpcStorageProxy
storage = GrpcStorageProxy(host="127.0.0.1", port=int(sys.argv[1]))
study = optuna.load_study(study_name=sys.argv[2], storage=storage)
trials = study.get_trials(deepcopy=False)
print(json.dumps([[t.params for t in trials],
                  [storage.get_trial(t._trial_id).params for t in trials]]))
"""


def seen_by_fresh_clients(port: int, study_name: str) -> list[list[list[dict[str, float]]]]:
    """What client processes of their own (the kernel spreads their connections over
    the workers) are served: each study's trials, and each trial read by its id."""
    clients = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", FRESH_CLIENT, str(port),
                                 study_name], stdout=subprocess.PIPE, text=True)
               for _ in range(CLIENTS)]
    seen = []
    for client in clients:
        out, _ = client.communicate(timeout=120)
        assert client.returncode == 0
        seen.append(json.loads(out))
    return seen


def test_a_study_reusing_a_deleted_studys_id_is_served_as_itself(sqlite_url: str) -> None:
    with serve(sqlite_url, workers=WORKERS) as (_, port):
        with proxy_client(port) as storage:
            s = optuna.create_study(study_name="S", storage=storage)
            s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
            s_trial_ids = {trial._trial_id for trial in s.trials}
        # Clients that read S, and each of its trials by id, through every worker.
        seen = seen_by_fresh_clients(port, "S")
        assert all(len(trials) == 5 for trials, _ in seen)

        direct = RDBStorage(sqlite_url)
        try:
            optuna.delete_study(study_name="S", storage=direct)
            t = optuna.create_study(study_name="T", storage=direct)
            assert t._study_id == s._study_id, "SQLite did not reuse the id"
            t.optimize(lambda trial: trial.suggest_float("y", 0, 1), n_trials=2)
            expected = [trial.params for trial in t.get_trials()]
            assert {trial._trial_id for trial in t.get_trials()} <= s_trial_ids
        finally:
            direct.engine.dispose()

        # Fresh clients, as the user: T's trials, each also by its id.
        assert seen_by_fresh_clients(port, "T") == [[expected, expected]] * CLIENTS
        with proxy_client(port) as storage, pytest.raises(KeyError):
            optuna.load_study(study_name="S", storage=storage)


def test_every_worker_forgets_the_trials_of_a_replaced_study(sqlite_url: str) -> None:
    """Once the owner's sync finds the study replaced, no worker remembers S's trials."""
    with running_workers(sqlite_url, workers=3) as workers, \
            proxy_client(workers[0].config.port) as storage:
        s = optuna.create_study(study_name="S", storage=storage)
        s.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=5)
        s_trial_ids = [trial._trial_id for trial in s.trials]
        for worker in workers:  # every worker learns where each of S's trials is
            for trial_id in s_trial_ids:
                assert worker.router.study_of_trial(trial_id) == s._study_id

        direct = RDBStorage(sqlite_url)
        try:
            optuna.delete_study(study_name="S", storage=direct)
            t = optuna.create_study(study_name="T", storage=direct)
            t.optimize(lambda trial: trial.suggest_float("y", 0, 1), n_trials=2)
            t_trial_ids = {trial._trial_id for trial in t.get_trials()}
        finally:
            direct.engine.dispose()
        assert t._study_id == s._study_id

        # A read of T syncs its owner's cache, which finds S replaced. (Not through
        # this client: Optuna's client keeps a cache of its own, keyed by study id.)
        owner = workers[workers[0].router.owner_of(t._study_id)]
        assert len(owner.caches.synced(t._study_id)) == 2
        gone = [i for i in s_trial_ids if i not in t_trial_ids]
        assert gone, "every id of S was reused"
        remembered = {worker.router.shard_index: [worker.router.remembered_study_of(i)
                                                  for i in gone] for worker in workers}
        assert remembered == {w.router.shard_index: [None] * len(gone) for w in workers}
