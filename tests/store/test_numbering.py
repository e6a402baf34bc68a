"""Numbering beside other writers: what the store remembers of a study's trial count
never stands in for what the database holds.

The store counts a study's trials in full once, then only the trials added after
the last one it numbered; these tests add trials through Optuna's own RDBStorage
in between, and hand a batch remembered counts that no longer hold.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy
from optuna.distributions import FloatDistribution
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from optuna.trial import TrialState, create_trial

from shardproxy.rows import COMPLETE, TrialRow
from shardproxy.store import Store
from shardproxy.store.batch import Batch, GuardMissed, first_distribution
from shardproxy.store.database import make_write_engine
from shardproxy.store.numbering import Counted
from shardproxy.store.operations import CreateTrial
from shardproxy.store.schema import trials

_FINISHED = TrialRow(0, 0, COMPLETE, [1.0], "2024-05-06 07:08:09.123456",
                     "2024-05-06 07:09:10.654321", [], [], [], [])


@pytest.fixture
def rdb(db_url: str) -> Iterator[RDBStorage]:
    storage = RDBStorage(db_url)
    yield storage
    storage.engine.dispose()


def _create_together(store: Store, study_id: int, count: int) -> list[int]:
    """`count` trials created at once, so that they share batches."""
    barrier = threading.Barrier(count)

    def create(_: int) -> int:
        barrier.wait()
        return store.create_new_trial(study_id, None)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(create, range(count)))


def _numbers_by_id(rdb: RDBStorage, study_id: int) -> dict[int, int]:
    return {t._trial_id: t.number for t in rdb.get_all_trials(study_id, deepcopy=False)}


def test_rdbstorage_trials_between_batches_are_counted(db_url: str, rdb: RDBStorage) -> None:
    study_id = rdb.create_new_study([StudyDirection.MINIMIZE], "shared")
    other_study = rdb.create_new_study([StudyDirection.MINIMIZE], "neighbour")
    store = Store(db_url)
    ours: list[int] = []
    theirs: list[int] = []
    try:
        for step in range(4):
            ours.append(store.create_new_trial(study_id, None))
            ours += _create_together(store, study_id, 3)
            # Another writer, between two of the store's batches, on the same study
            # and on another one (whose ids interleave with the study's).
            theirs += [rdb.create_new_trial(study_id) for _ in range(step + 1)]
            rdb.create_new_trial(other_study)
            theirs.append(rdb.create_new_trial(study_id, template_trial=create_trial(
                state=TrialState.COMPLETE, value=float(step),
                params={"x": 0.5}, distributions={"x": FloatDistribution(0.0, 1.0)},
            )))
            ours.append(store.create_new_trial(study_id, _FINISHED))  # the plain INSERT
        ours += _create_together(store, study_id, 4)
        numbers = _numbers_by_id(rdb, study_id)
        assert {store.get_trial(t).number for t in ours} == {numbers[t] for t in ours}
    finally:
        store.close()
    assert sorted(numbers) == sorted(ours + theirs)
    # Unique and dense, and each as RDBStorage numbers: the count of earlier trials.
    assert [numbers[t] for t in sorted(numbers)] == list(range(len(numbers)))
    assert [t.number for t in rdb.get_all_trials(other_study)] == [0, 1, 2, 3]


def test_trials_of_a_study_deleted_by_another_writer_are_refused(
    db_url: str, rdb: RDBStorage
) -> None:
    store = Store(db_url)
    try:
        study_id = store.create_new_study([0], "short-lived")
        _create_together(store, study_id, 2)
        rdb.delete_study(study_id)
        with pytest.raises(KeyError):
            store.create_new_trial(study_id, None)
        again = store.create_new_study([0], "short-lived")
        created = _create_together(store, again, 3)
        assert sorted(store.get_trial(t).number for t in created) == [0, 1, 2]
    finally:
        store.close()


def _batch_numbers(db_url: str, study_id: int, counted: dict[int, Counted],
                   template: TrialRow | None) -> list[int] | GuardMissed:
    """Two new trials of the study from one optimistic batch given `counted`:
    their numbers, or GuardMissed (the batch is rolled back)."""
    engine = make_write_engine(db_url, 1)
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            operations = [CreateTrial(study_id, template), CreateTrial(study_id, template)]
            batch = Batch(conn, list(operations), first_distribution, optimistic=True,
                          counted=counted)
            try:
                ids = batch.run()
            except GuardMissed as missed:
                transaction.rollback()
                return missed
            transaction.commit()
    finally:
        engine.dispose()
    rdb = RDBStorage(db_url)
    try:
        numbers = _numbers_by_id(rdb, study_id)
    finally:
        rdb.engine.dispose()
    # What the store would remember: the batch's last trial, and the count it makes.
    assert batch.counted == {study_id: Counted(numbers[ids[-1]] + 1, ids[-1])}
    return [numbers[trial_id] for trial_id in ids]


@pytest.mark.parametrize("template", [None, _FINISHED], ids=["numbered-insert", "plain-insert"])
def test_a_remembered_count_is_used_only_while_it_holds(
    db_url: str, rdb: RDBStorage, template: TrialRow | None
) -> None:
    study_id = rdb.create_new_study([StudyDirection.MINIMIZE], "remembered")
    other_study = rdb.create_new_study([StudyDirection.MINIMIZE], "other")
    ids = [rdb.create_new_trial(study_id) for _ in range(3)]
    foreign = rdb.create_new_trial(other_study)
    rdb.create_new_trial(study_id)  # added after the remembered trial: the delta

    # True of the study: its trial numbered 2 has ids[2]; one trial came after it.
    assert _batch_numbers(db_url, study_id, {study_id: Counted(3, ids[2])}, template) == [4, 5]
    stale = [
        Counted(5, ids[2]),  # the count disagrees with the trial's number
        Counted(1, foreign),  # a trial of another study (a deleted study's id reused)
        Counted(6, 10**8),  # a trial that is gone
    ]
    for counted in stale:
        outcome = _batch_numbers(db_url, study_id, {study_id: counted}, template)
        assert isinstance(outcome, GuardMissed), (counted, outcome)
    # Counted in full, without anything remembered.
    assert _batch_numbers(db_url, study_id, {}, template) == [6, 7]
    numbers = _numbers_by_id(rdb, study_id)
    assert [numbers[t] for t in sorted(numbers)] == list(range(8))


def test_a_study_read_whole_gives_its_count_only_when_numbers_are_dense(
    db_url: str, rdb: RDBStorage
) -> None:
    dense = rdb.create_new_study([StudyDirection.MINIMIZE], "dense")
    gapped = rdb.create_new_study([StudyDirection.MINIMIZE], "gapped")
    for study_id in (dense, gapped):
        for _ in range(3):
            rdb.create_new_trial(study_id)
    # A trial numbered out of line, as no writer of Optuna's would: the count, not
    # the last number, is what numbers the next trial.
    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(sqlalchemy.insert(trials).values(
                study_id=gapped, number=7, state="RUNNING"))
    finally:
        engine.dispose()
    store = Store(db_url)
    try:
        for study_id in (dense, gapped):
            store.load_trials(study_id, id_greater_than=-1)
            rdb.create_new_trial(study_id)  # after the read: in the delta
        numbers = [store.get_trial(store.create_new_trial(s, None)).number
                   for s in (dense, gapped)]
    finally:
        store.close()
    assert numbers == [4, 5]


@pytest.mark.parametrize("template", [None, _FINISHED], ids=["numbered-insert", "plain-insert"])
def test_a_batch_smaller_than_its_statement_inserts_only_its_own_trials(
    db_url: str, rdb: RDBStorage, template: TrialRow | None
) -> None:
    """Statements are shaped for powers of two (rows and studies); the places past a
    batch's own must insert nothing and count nothing."""
    studies = [rdb.create_new_study([StudyDirection.MINIMIZE], f"shape-{i}") for i in range(3)]
    for i, study_id in enumerate(studies):
        for _ in range(i):
            rdb.create_new_trial(study_id)
    # 5 trials of 3 studies: a statement for 8 rows of 4 studies.
    wanted = [studies[0], studies[1], studies[1], studies[2], studies[2]]
    engine = make_write_engine(db_url, 1)
    try:
        with engine.begin() as conn:
            batch = Batch(conn, [CreateTrial(s, template) for s in wanted],
                          first_distribution, optimistic=True, counted={})
            ids = batch.run()
    finally:
        engine.dispose()
    assert len(set(ids)) == 5
    for i, study_id in enumerate(studies):
        numbers = _numbers_by_id(rdb, study_id)
        # The earlier trials, then this batch's, numbered on from them: nothing more.
        assert sorted(numbers.values()) == list(range(i + wanted.count(study_id)))
        assert {numbers[t] for t, s in zip(ids, wanted, strict=True) if s == study_id} == set(
            range(i, i + wanted.count(study_id)))
