"""What the Store writes, Optuna's RDBStorage reads back identically, and the reverse."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, FloatDistribution, distribution_to_json
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState

from shardproxy.rows import COMPLETE, MAXIMIZE, MINIMIZE, RUNNING, WAITING, TrialRow
from shardproxy.store import Store
from tests.store.reference import wire_row

FLOAT = distribution_to_json(FloatDistribution(-5.0, 5.0))
CHOICE = distribution_to_json(CategoricalDistribution(["a", "b", None]))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


def _comparable(row: TrialRow) -> TrialRow:
    """MariaDB's DATETIME in Optuna's schema keeps whole seconds; both sides read the
    same column, so only the NaN intermediate values need an equality that holds."""
    return row._replace(
        intermediate_values=[
            (step, "nan" if math.isnan(v) else v)  # type: ignore[misc]
            for step, v in sorted(row.intermediate_values)
        ],
        user_attrs=sorted(row.user_attrs),
        system_attrs=sorted(row.system_attrs),
    )


def test_rdbstorage_reads_what_the_store_wrote(store: Store, db_url: str) -> None:
    study_id = store.create_new_study([MINIMIZE, MAXIMIZE], "written-by-store")
    store.set_study_user_attr(study_id, "owner", json.dumps("me"))
    store.set_study_system_attr(study_id, "weights", json.dumps([1, 2.5]))
    finished = store.create_new_trial(study_id, None)
    store.set_trial_param(finished, "x", 1.25, FLOAT)
    store.set_trial_param(finished, "c", 2.0, CHOICE)
    store.set_trial_intermediate_value(finished, 0, math.nan)
    store.set_trial_intermediate_value(finished, 3, -math.inf)
    store.set_trial_user_attr(finished, "note", json.dumps({"k": [1, None]}))
    store.set_trial_system_attr(finished, "seed", json.dumps(7))
    assert store.set_trial_state_values(finished, COMPLETE, [math.inf, -2.0])
    template = TrialRow(0, 0, WAITING, [], "", "", [("x", -1.0, FLOAT)], [], [], [])
    waiting = store.create_new_trial(study_id, template)

    storage = RDBStorage(db_url)
    try:
        assert storage.get_study_id_from_name("written-by-store") == study_id
        assert storage.get_study_directions(study_id) == [
            StudyDirection.MINIMIZE, StudyDirection.MAXIMIZE]
        assert storage.get_study_user_attrs(study_id) == {"owner": "me"}
        assert storage.get_study_system_attrs(study_id) == {"weights": [1, 2.5]}
        frozen = storage.get_all_trials(study_id)
        assert [t._trial_id for t in frozen] == [finished, waiting]
        assert frozen[0].state == TrialState.COMPLETE
        assert frozen[0].values == [math.inf, -2.0]
        assert frozen[0].params == {"x": 1.25, "c": None}
        assert frozen[1].state == TrialState.WAITING and frozen[1].params == {"x": -1.0}
        for trial in frozen:
            assert _comparable(wire_row(trial)) == _comparable(store.get_trial(trial._trial_id))
    finally:
        storage.engine.dispose()


def test_store_reads_what_rdbstorage_wrote(store: Store, db_url: str) -> None:
    storage = RDBStorage(db_url)
    try:
        study_id = storage.create_new_study([StudyDirection.MAXIMIZE], "written-by-optuna")
        storage.set_study_user_attr(study_id, "tags", ["a", "b"])
        trial_id = storage.create_new_trial(study_id)
        storage.set_trial_param(trial_id, "x", 0.5, FloatDistribution(-5.0, 5.0))
        storage.set_trial_intermediate_value(trial_id, 1, 0.75)
        storage.set_trial_user_attr(trial_id, "u", {"nested": True})
        storage.set_trial_state_values(trial_id, TrialState.PRUNED)
        running = storage.create_new_trial(study_id)
        expected = [wire_row(t) for t in storage.get_all_trials(study_id)]
    finally:
        storage.engine.dispose()

    assert store.get_study_id_from_name("written-by-optuna") == study_id
    assert store.get_study_directions(study_id) == [MAXIMIZE]
    assert store.get_study_user_attrs(study_id) == {"tags": json.dumps(["a", "b"])}
    loaded = store.load_trials(study_id, id_greater_than=-1)
    assert [_comparable(r) for r in loaded] == [_comparable(r) for r in expected]
    assert [r.trial_id for r in store.load_trials(study_id, id_greater_than=trial_id)] == [
        running]
    assert store.load_trials(study_id, id_greater_than=running, ids=[trial_id])[0].state == 2


def test_optuna_optimizes_on_a_database_the_store_created(store: Store, db_url: str) -> None:
    study_id = store.create_new_study([MINIMIZE], "shared")
    trial_id = store.create_new_trial(study_id, None)
    store.set_trial_param(trial_id, "x", 3.0, FLOAT)
    store.set_trial_state_values(trial_id, COMPLETE, [9.0])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="shared", storage=db_url)
    study.optimize(lambda t: t.suggest_float("x", -5.0, 5.0) ** 2, n_trials=5)
    new_study = optuna.create_study(study_name="created-by-optuna", storage=db_url)
    new_study.optimize(lambda t: t.suggest_float("y", 0.0, 1.0), n_trials=2)

    rows = store.load_trials(study_id, id_greater_than=-1)
    assert [r.number for r in rows] == list(range(6))
    assert all(r.state == COMPLETE and r.params[0][0] == "x" for r in rows)
    assert study.best_value == min(r.values[0] for r in rows)
    # The Store keeps numbering after Optuna's trials, and sees Optuna's study.
    later = store.create_new_trial(study_id, None)
    assert store.get_trial(later).number == 6 and store.get_trial(later).state == RUNNING
    names = [s.study_name for s in store.get_all_studies()]
    assert names == ["shared", "created-by-optuna"]
