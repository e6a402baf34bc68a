"""An optimistic batch (numbering INSERT, guarded UPDATE) answers as a locking one.

The same random batches run on two fresh databases of one backend: on one
optimistically, with the trial counts remembered from its earlier batches and
falling back to the locks when the guard misses (as the store and its group
committer do), on the other with locks and full counts only. Every operation's outcome and the
final rows must be the same; each optimistic path (the guarded UPDATE of a
batch that finishes trials, the guarded INSERT of one that only sets params) must
really have been taken, and guards must have missed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy
from optuna.distributions import distribution_to_json
from sqlalchemy.engine import Engine

from shardproxy.rows import COMPLETE, FAIL, PRUNED, RUNNING, WAITING, TrialRow
from shardproxy.store import Store
from shardproxy.store.batch import Batch, GuardMissed, first_distribution
from shardproxy.store.database import make_write_engine
from shardproxy.store.numbering import TrialCounts
from shardproxy.store.operations import (
    CreateTrial,
    Operation,
    SetIntermediate,
    SetParam,
    SetStateValues,
    SetTrialAttr,
)
from tests.databases import BACKENDS, fresh_database
from tests.store.test_differential import _COMPATIBLE, _INCOMPATIBLE, comparable_trial

SEEDS = (5, 6, 7)
BATCHES_PER_SEED = 40
MISSING = 10**8
_FINISHED = (COMPLETE, PRUNED, FAIL)


class Side:
    """One database, and the ids it handed out in order (ids may differ between
    sides: a rolled-back INSERT uses up ids on some backends)."""

    def __init__(self, url: str, returning: bool = True) -> None:
        store = Store(url)
        try:
            self.studies = [store.create_new_study([0], f"paths-{i}") for i in range(2)]
            self.trials: list[int] = []
            self.study_of: dict[int, int] = {}
            for study_id in self.studies:
                for state in (RUNNING, RUNNING, RUNNING, COMPLETE, WAITING):
                    template = None if state == RUNNING else _template(state)
                    self._created(store.create_new_trial(study_id, template), study_id)
        finally:
            store.close()
        self.engine: Engine = make_write_engine(url, 1)
        if not returning:  # as on MySQL proper: the new trials are found by number
            self.engine.connect().close()  # the dialect learns the server's features
            self.engine.dialect.insert_returning = False
        self.url = url
        self.guarded_batches: Counter[str] = Counter()  # by the guard that stood in for the lock
        self.missed_guards = 0  # the guard found a finished or missing trial
        self.counts = TrialCounts()  # as the store keeps them (not on SQLite)
        self.remembered_counts = 0  # batches that numbered from a remembered count

    def _created(self, trial_id: int, study_id: int) -> None:
        self.trials.append(trial_id)
        self.study_of[trial_id] = study_id

    def apply(self, make_ops: list[Callable[[Side], Operation]], optimistic: bool) -> list[Any]:
        operations = [make(self) for make in make_ops]
        with self.engine.connect() as conn:
            transaction = conn.begin()
            remember = optimistic and self.engine.dialect.name != "sqlite"
            creating = {op.study_id for op in operations if isinstance(op, CreateTrial)}
            counted = self.counts.take(creating) if remember else {}
            try:
                batch = Batch(conn, operations, first_distribution, optimistic=optimistic,
                              counted=counted)
                results = batch.run()
                if batch.guarded:
                    self.guarded_batches[batch.guarded] += 1
                self.remembered_counts += bool(counted)
            except GuardMissed:
                self.missed_guards += 1
                transaction.rollback()
                transaction = conn.begin()
                batch = Batch(conn, operations, first_distribution)
                results = batch.run()
            transaction.commit()
            if remember:
                self.counts.remember(batch.counted)
        outcomes = []
        for op, result in zip(operations, results, strict=True):
            if isinstance(result, BaseException):
                outcomes.append(type(result).__name__)
            elif isinstance(op, CreateTrial):
                self._created(result, op.study_id)
                outcomes.append(("created", len(self.trials) - 1))
            else:
                outcomes.append(result)
        return outcomes

    def final_rows(self) -> list[list[tuple[Any, ...]]]:
        store = Store(self.url)
        try:
            return [[comparable_trial(t) for t in store.load_trials(s, id_greater_than=-1)]
                    for s in self.studies]
        finally:
            store.close()


def _template(state: int) -> TrialRow:
    complete = "2024-05-06 07:09:10.654321" if state in _FINISHED else ""
    values = [0.5] if state == COMPLETE else []
    return TrialRow(0, 0, state, values, "2024-05-06 07:08:09.123456", complete,
                    [], [], [], [])


# Param values whose decimal forms differ in kind: each must be stored exactly.
_PARAM_VALUES = (0.0, 0.1, -2.5e-7, 1e300, 5e-324, 123456789.12345679, 1 / 3, -17.0)


def _random_batch(rng: random.Random) -> list[Callable[[Side], Operation]]:
    """A batch of mixed operations, or now and then a small one of the kinds a guard
    serves: new trials and params (the guarded INSERT), params and states (the
    guarded UPDATE, where every state is a finished one)."""
    if rng.random() < 0.5:
        kinds = rng.choice([["create", "param", "param"], ["param", "state", "state"]])
        return [_random_op(rng, rng.choice(kinds)) for _ in range(rng.randint(1, 3))]
    return [_random_op(rng) for _ in range(rng.randint(1, 8))]


def _random_op(rng: random.Random, kind: str = "") -> Callable[[Side], Operation]:
    """An operation, made on each side from that side's ids."""
    pick = rng.random()
    missing = rng.random() < 0.05

    def trial(side: Side) -> int:
        return MISSING if missing else side.trials[int(len(side.trials) * (1 - pick**3)) - 1]

    kind = kind or rng.choices(["create", "param", "state", "intermediate", "attr"],
                               [3, 4, 5, 1, 1])[0]
    if kind == "create":
        study = rng.randrange(3)  # 2: a study that does not exist
        template = _template(rng.choice(_FINISHED)) if rng.random() < 0.1 else None
        return lambda side: CreateTrial(side.studies[study] if study < 2 else MISSING, template)
    if kind == "param":
        name = rng.choice(list(_COMPATIBLE))
        distribution = (_INCOMPATIBLE[name] if rng.random() < 0.2
                        else rng.choice(_COMPATIBLE[name]))
        text = distribution_to_json(distribution)
        hinted = rng.random() < 0.9
        value = rng.choice(_PARAM_VALUES)
        return lambda side: SetParam(trial(side), name, value, text,
                                     side.study_of.get(trial(side)) if hinted else None)
    if kind == "state":
        state = rng.choice([*_FINISHED, *_FINISHED, RUNNING, WAITING])
        values = [rng.choice([1.5, -math.inf])] if state == COMPLETE else None
        return lambda side: SetStateValues(trial(side), state, values)
    if kind == "intermediate":
        step = rng.randrange(3)
        return lambda side: SetIntermediate(trial(side), step, 0.25)
    key, system = rng.choice(["a", "b"]), rng.random() < 0.5
    return lambda side: SetTrialAttr(trial(side), system, key, '"v"')


@pytest.mark.parametrize("backend", [*BACKENDS, "mariadb-without-returning"])
def test_optimistic_batches_answer_as_locking_ones(backend: str, tmp_path: Path) -> None:
    backend, _, without = backend.partition("-without-")
    returning = not without
    guarded: Counter[str] = Counter()
    missed = remembered = 0
    for seed in SEEDS:
        rng = random.Random(seed)
        batches = [_random_batch(rng) for _ in range(BATCHES_PER_SEED)]
        (tmp_path / f"o{seed}").mkdir()
        (tmp_path / f"l{seed}").mkdir()
        with (
            fresh_database(backend, tmp_path / f"o{seed}") as optimistic_url,
            fresh_database(backend, tmp_path / f"l{seed}") as locking_url,
        ):
            optimistic = Side(optimistic_url, returning)
            locking = Side(locking_url, returning)
            try:
                for index, batch in enumerate(batches):
                    expected = locking.apply(batch, optimistic=False)
                    actual = optimistic.apply(batch, optimistic=True)
                    assert actual == expected, f"seed {seed}, batch {index}"
                assert optimistic.final_rows() == locking.final_rows()
            finally:
                optimistic.engine.dispose()
                locking.engine.dispose()
            assert not locking.guarded_batches and locking.missed_guards == 0
            guarded += optimistic.guarded_batches
            missed += optimistic.missed_guards
            remembered += optimistic.remembered_counts
    if backend == "sqlite":  # statements cost no round trip there: always the locks
        assert not guarded and missed == remembered == 0
    else:  # both ways were taken
        assert guarded["states"] >= 5 and guarded["params"] >= 3, guarded
        assert missed >= 3 and remembered >= 10, (missed, remembered)


@pytest.mark.parametrize("backend", ["mariadb", "postgres"])
def test_a_guarded_param_insert_locks_the_trial_until_it_commits(
    backend: str, tmp_path: Path
) -> None:
    """The guarded INSERT stands in for the trial's lock: until its transaction ends,
    no one else can finish the trial (which would leave a param on a finished one)."""
    with fresh_database(backend, tmp_path) as url:
        side = Side(url)
        trial_id = side.trials[0]  # RUNNING
        text = distribution_to_json(_COMPATIBLE["x"][0])
        other = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with side.engine.connect() as conn, conn.begin():
                batch = Batch(conn, [SetParam(trial_id, "x", 0.5, text, side.study_of[trial_id])],
                              first_distribution, optimistic=True)
                assert batch.run() == [None]
                assert batch.guarded == "params"
                with other.connect() as finisher:
                    finisher.exec_driver_sql(
                        "SET SESSION innodb_lock_wait_timeout = 1" if backend == "mariadb"
                        else "SET lock_timeout = '1s'")
                    with pytest.raises(sqlalchemy.exc.OperationalError):
                        finisher.execute(
                            sqlalchemy.text("UPDATE trials SET state = 'COMPLETE' "
                                            "WHERE trial_id = :id"), {"id": trial_id})
            with other.begin() as finisher:  # committed: the lock is gone
                finisher.execute(sqlalchemy.text(
                    "UPDATE trials SET state = 'COMPLETE' WHERE trial_id = :id"), {"id": trial_id})
        finally:
            other.dispose()
            side.engine.dispose()
