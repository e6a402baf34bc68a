"""`Prepared` statements answer exactly as the same statements run through Core."""

from __future__ import annotations

from datetime import datetime

import pytest
from sqlalchemy import bindparam, func, literal, select, update

from shardproxy.store import Store
from shardproxy.store.database import make_write_engine
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import trials

LISTED = (
    select(trials.c.trial_id, trials.c.number, trials.c.state, literal(7).label("seven"))
    .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
    .where(trials.c.study_id == bindparam("sid"))
    .order_by(trials.c.trial_id)
)
COUNT_IN = select(func.count()).where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))


@pytest.fixture
def trial_ids(db_url: str) -> list[int]:
    store = Store(db_url)
    try:
        study_id = store.create_new_study([0], "prepared")
        return [store.create_new_trial(study_id, None) for _ in range(6)]
    finally:
        store.close()


@pytest.mark.parametrize("count", [1, 2, 5, 1, 5])  # repeats: the rendered SQL is reused
def test_rows_equal_core_for_every_list_length(
    db_url: str, trial_ids: list[int], count: int
) -> None:
    engine = make_write_engine(db_url, 1)
    statement = Prepared(LISTED, expanding=["ids"])
    params = {"ids": trial_ids[:count] + [10**9], "sid": 1}
    try:
        with engine.begin() as conn:
            prepared = [tuple(row) for row in statement.execute(conn, params)]
            core = [tuple(row) for row in conn.execute(LISTED, params)]
    finally:
        engine.dispose()
    assert prepared == core
    assert [row[0] for row in prepared] == trial_ids[:count]
    assert all(row[2] == "RUNNING" and row[3] == 7 for row in prepared)


def test_one_instance_serves_lists_of_different_lengths_in_turn(
    db_url: str, trial_ids: list[int]
) -> None:
    engine = make_write_engine(db_url, 1)
    statement = Prepared(COUNT_IN, expanding=["ids"])
    try:
        with engine.begin() as conn:
            counts = [statement.execute(conn, {"ids": trial_ids[:n]}).scalar() for n in (3, 1, 6)]
    finally:
        engine.dispose()
    assert counts == [3, 1, 6]


def test_writes_take_effect_with_their_parameters(db_url: str, trial_ids: list[int]) -> None:
    engine = make_write_engine(db_url, 1)
    now = datetime(2026, 1, 2, 3, 4, 5)
    statement = Prepared(
        update(trials)
        .where(trials.c.trial_id.in_(bindparam("ids", expanding=True)))
        .values(state=bindparam("new_state"), datetime_complete=bindparam("now")),
        expanding=["ids"],
    )
    try:
        with engine.begin() as conn:
            statement.execute(conn, {"ids": trial_ids[1:3], "new_state": "FAIL", "now": now})
        with engine.begin() as conn:
            rows = conn.execute(
                select(trials.c.trial_id, trials.c.state, trials.c.datetime_complete)
                .order_by(trials.c.trial_id)
            ).all()
    finally:
        engine.dispose()
    changed = {trial_id: (state, complete) for trial_id, state, complete in rows}
    assert [changed[i][0] for i in trial_ids] == ["RUNNING", "FAIL", "FAIL"] + ["RUNNING"] * 3
    assert changed[trial_ids[1]][1] == now
