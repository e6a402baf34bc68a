"""Whole Optuna studies through shardproxy: samplers, pruning, enqueue, threads, coherence."""

from __future__ import annotations

import math
import threading
from collections.abc import Iterator

import optuna
import pytest
import sqlalchemy
from optuna.storages import GrpcStorageProxy, RDBStorage
from optuna.trial import TrialState

from tests.proxies import proxy_client, running_workers


@pytest.fixture
def storage(db_url: str) -> Iterator[GrpcStorageProxy]:
    with running_workers(db_url, workers=2) as workers:
        with proxy_client(workers[0].port) as client:
            yield client


def quadratic(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", -10, 10)
    n = trial.suggest_int("n", 1, 5)
    kind = trial.suggest_categorical("kind", ["a", "b"])
    return x**2 + n + (kind == "b")


@pytest.mark.parametrize(
    "sampler",
    [
        optuna.samplers.RandomSampler(seed=1),
        optuna.samplers.TPESampler(seed=1, n_startup_trials=5),
    ],
    ids=["random", "tpe"],
)
def test_single_objective_study_completes(storage: GrpcStorageProxy, sampler) -> None:  # type: ignore[no-untyped-def]
    study = optuna.create_study(storage=storage, sampler=sampler)
    study.optimize(quadratic, n_trials=20)
    trials = study.get_trials()
    assert [t.number for t in trials] == list(range(20))
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert study.best_value == min(t.value for t in trials)
    assert set(study.best_params) == {"x", "n", "kind"}


def test_multi_objective_nsga2(storage: GrpcStorageProxy) -> None:
    study = optuna.create_study(
        storage=storage, directions=["minimize", "maximize"],
        sampler=optuna.samplers.NSGAIISampler(population_size=5, seed=2),
    )
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), t.suggest_float("y", 0, 1)), 15)
    assert len(study.trials) == 15
    assert all(len(t.values) == 2 for t in study.trials)
    assert study.best_trials
    loaded = optuna.load_study(study_name=study.study_name, storage=storage)
    assert loaded.directions == study.directions


def test_pruner_sees_intermediate_values(storage: GrpcStorageProxy) -> None:
    def objective(trial: optuna.Trial) -> float:
        x = trial.suggest_float("x", 0, 1)
        for step in range(10):
            # NaN is a legal intermediate value; the pruner is not asked about that
            # step (a median of NaNs is not what this test is about).
            trial.report(x * step if step != 3 else math.nan, step)
            if step != 3 and trial.should_prune():
                raise optuna.TrialPruned()
        return x

    study = optuna.create_study(
        storage=storage, pruner=optuna.pruners.MedianPruner(n_startup_trials=2),
        sampler=optuna.samplers.RandomSampler(seed=3),
    )
    study.optimize(objective, n_trials=15)
    states = {t.state for t in study.trials}
    assert states <= {TrialState.COMPLETE, TrialState.PRUNED}
    first = study.trials[0]
    assert math.isnan(first.intermediate_values[3])
    assert first.intermediate_values[9] == pytest.approx(first.params["x"] * 9)


def test_enqueue_add_trial_attrs_and_dataframe(storage: GrpcStorageProxy) -> None:
    study = optuna.create_study(storage=storage)
    study.enqueue_trial({"x": 0.25})
    study.add_trial(
        optuna.trial.create_trial(
            params={"x": 0.75},
            distributions={"x": optuna.distributions.FloatDistribution(0, 1)},
            value=0.5, user_attrs={"origin": "manual"}, intermediate_values={0: 1.0},
        )
    )
    study.set_user_attr("team", {"name": "rack-7", "weights": [1, 2.5]})

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("nan", math.nan)
        return trial.suggest_float("x", 0, 1)

    study.optimize(objective, n_trials=1)
    trials = study.trials
    # The enqueued trial took number 0 (WAITING) before add_trial stored number 1.
    assert trials[0].params == {"x": 0.25} and math.isnan(trials[0].user_attrs["nan"])
    assert trials[1].params == {"x": 0.75} and trials[1].user_attrs == {"origin": "manual"}
    assert trials[1].intermediate_values == {0: 1.0}
    assert study.user_attrs == {"team": {"name": "rack-7", "weights": [1, 2.5]}}
    frame = study.trials_dataframe()
    assert list(frame["params_x"]) == [0.25, 0.75]
    assert list(frame["state"]) == ["COMPLETE", "COMPLETE"]


def test_sixteen_threads_on_one_study_number_trials_without_gaps(
    storage: GrpcStorageProxy,
) -> None:
    study = optuna.create_study(storage=storage, sampler=optuna.samplers.RandomSampler())
    errors: list[BaseException] = []

    def work() -> None:
        try:
            worker_study = optuna.load_study(study_name=study.study_name, storage=storage)
            worker_study.optimize(lambda t: t.suggest_float("x", -1, 1) ** 2, n_trials=8)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not errors
    trials = study.get_trials()
    assert sorted(t.number for t in trials) == list(range(128))
    assert all(t.state == TrialState.COMPLETE and "x" in t.params for t in trials)


def test_two_proxies_and_a_direct_writer_see_each_other(mariadb_url: str) -> None:
    with running_workers(mariadb_url, workers=1) as first, running_workers(
        mariadb_url, workers=2
    ) as second, proxy_client(first[0].port) as a, proxy_client(second[0].port) as b:
        direct = RDBStorage(mariadb_url)
        study_a = optuna.create_study(storage=a, study_name="shared")
        study_b = optuna.load_study(storage=b, study_name="shared")
        study_direct = optuna.load_study(storage=direct, study_name="shared")
        assert study_a.trials == study_b.trials == []

        running = study_a.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
        study_b.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        study_direct.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)

        seen_by_a = study_a.get_trials()
        assert [t.number for t in seen_by_a] == [0, 1, 2, 3]
        assert seen_by_a[0].state == TrialState.RUNNING
        study_a.tell(running, 0.5)
        for view in (study_b, study_direct):
            trials = view.get_trials()
            assert [t.state for t in trials] == [TrialState.COMPLETE] * 4
            assert trials[0].value == 0.5
        direct.engine.dispose()


def test_trials_told_by_number_are_found_by_id_without_reading_the_study(db_url: str) -> None:
    """`study.tell(number, ...)` asks for the trial id of a number. A study the
    owner caches answers from the trial of that rank by id, confirmed by its primary
    key: the statements sent never read the study for it. Trials another writer
    added since the owner's last sync, and numbers that exist nowhere, are
    answered as RDBStorage answers them."""
    with running_workers(db_url, workers=1) as workers, proxy_client(workers[0].port) as client:
        study = optuna.create_study(storage=client, study_name="told")
        asked = [study.ask() for _ in range(12)]
        for trial in asked[::3]:
            study.tell(trial, 1.0)
        assert len(study.get_trials()) == 12  # the owner caches the study
        direct = RDBStorage(db_url)
        try:
            late = direct.create_new_trial(study._study_id)  # after the owner's sync
            sent: list[str] = []
            sqlalchemy.event.listen(
                workers[0].store._reader, "before_cursor_execute",  # noqa: SLF001
                lambda conn, cursor, statement, *_: sent.append(statement))
            for trial in asked:
                assert client.get_trial_id_from_study_id_trial_number(
                    study._study_id, trial.number) == trial._trial_id
            assert all("trials.number =" not in statement for statement in sent), sent
            assert client.get_trial_id_from_study_id_trial_number(study._study_id, 12) == late
            with pytest.raises(KeyError):
                client.get_trial_id_from_study_id_trial_number(study._study_id, 13)
            with pytest.raises(KeyError):
                direct.get_trial_id_from_study_id_trial_number(study._study_id, 13)
            for trial in asked[1::3]:
                study.tell(trial.number, 2.0)
            values = [t.value for t in direct.get_all_trials(study._study_id)]
            assert values[:3] == [1.0, 2.0, None]
        finally:
            direct.engine.dispose()
