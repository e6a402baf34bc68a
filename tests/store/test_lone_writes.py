"""A lone param write is one autocommitted statement, without a COMMIT of its own,
and answers as the locking way does when its trial is finished or its distribution
does not fit."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution, distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError

from shardproxy.rows import COMPLETE
from shardproxy.store import Store
from tests.databases import fresh_database

FLOAT = distribution_to_json(FloatDistribution(-10.0, 10.0))
LOG_FLOAT = distribution_to_json(FloatDistribution(0.1, 10.0, log=True))


class Seen:
    """The statements each of the store's pools ran, and the writer's COMMITs."""

    def __init__(self, store: Store) -> None:
        self.reads: list[str] = []
        self.writes: list[str] = []
        self.commits = 0
        engines = ((store._reader, self.reads), (store._writer, self.writes))  # noqa: SLF001
        for engine, statements in engines:
            sqlalchemy.event.listen(engine, "before_cursor_execute",
                                    self._recorder(statements))
        sqlalchemy.event.listen(store._writer, "commit", self._committed)  # noqa: SLF001

    @staticmethod
    def _recorder(statements: list[str]) -> Any:
        def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
            statements.append(statement)
        return record

    def _committed(self, conn: Any) -> None:
        self.commits += 1

    def clear(self) -> None:
        self.reads.clear()
        self.writes.clear()
        self.commits = 0


@pytest.fixture(params=["mariadb", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Store]:
    with fresh_database(request.param, tmp_path) as url:
        store = Store(url)
        yield store
        store.close()


def test_a_lone_param_write_is_one_statement_without_a_commit(store: Store) -> None:
    study_id = store.create_new_study([0], "lone")
    trial_id = store.create_new_trial(study_id, None)
    store.set_trial_param(trial_id, "x", 1.5, FLOAT, study_id=study_id)  # learns the distribution
    second = store.create_new_trial(study_id, None)
    seen = Seen(store)
    store.set_trial_param(second, "x", -2.25, FLOAT, study_id=study_id)
    assert [s.split()[:3] for s in seen.reads] == [["INSERT", "INTO", "trial_params"]]
    assert seen.writes == [] and seen.commits == 0
    assert store.get_trial(second).params == [("x", -2.25, FLOAT)]


def test_a_lone_param_write_to_a_finished_trial_is_refused_and_writes_nothing(
    store: Store,
) -> None:
    study_id = store.create_new_study([0], "lone-finished")
    trial_id = store.create_new_trial(study_id, None)
    assert store.set_trial_state_values(trial_id, COMPLETE, [1.0])
    seen = Seen(store)
    with pytest.raises(UpdateFinishedTrialError):
        store.set_trial_param(trial_id, "x", 1.5, FLOAT, study_id=study_id)
    assert seen.writes and seen.commits == 1  # refused the locking way, in a transaction
    assert store.get_trial(trial_id).params == []


def test_a_lone_param_write_of_a_distribution_that_does_not_fit_is_refused(
    store: Store,
) -> None:
    study_id = store.create_new_study([0], "lone-incompatible")
    first = store.create_new_trial(study_id, None)
    store.set_trial_param(first, "x", 1.5, FLOAT, study_id=study_id)
    second = store.create_new_trial(study_id, None)
    with pytest.raises(ValueError):
        store.set_trial_param(second, "x", 1.5, LOG_FLOAT, study_id=study_id)
    assert store.get_trial(second).params == []
