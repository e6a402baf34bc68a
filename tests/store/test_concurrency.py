"""Many threads (and processes) writing at once: numbers stay unique and gap-free,
and every write gets its own outcome."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from optuna.distributions import FloatDistribution, IntDistribution, distribution_to_json
from optuna.exceptions import UpdateFinishedTrialError

from shardproxy.rows import COMPLETE, RUNNING, TrialRow
from shardproxy.store import Store
from tests.store.lockstep import in_lockstep

FLOAT = distribution_to_json(FloatDistribution(-10.0, 10.0))
INT = distribution_to_json(IntDistribution(-10, 10))


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    store = Store(db_url)
    yield store
    store.close()


def run_random_sampler_trials(
    store: Store, study_id: int, threads: int, trials_per_thread: int
) -> list[TrialRow]:
    """Each thread runs RandomSampler's write sequence per trial; returns the trials."""

    def worker(index: int) -> None:
        for i in range(trials_per_thread):
            trial_id = store.create_new_trial(study_id, None)
            x = float(index * 100 + i)
            store.set_trial_param(trial_id, "x", x % 10, FLOAT)
            assert store.set_trial_state_values(trial_id, COMPLETE, [x])

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(worker, range(threads)))
    return store.load_trials(study_id, id_greater_than=-1)


def test_32_threads_get_unique_gap_free_numbers(store: Store) -> None:
    study_id = store.create_new_study([0], "crowd")
    trial_ids = in_lockstep(32, lambda _: store.create_new_trial(study_id, None))
    assert len(set(trial_ids)) == 32
    rows = store.load_trials(study_id, id_greater_than=-1)
    assert sorted(r.trial_id for r in rows) == sorted(trial_ids)
    assert [r.number for r in rows] == list(range(32))  # rows come in id order
    assert all(r.state == RUNNING and r.datetime_start for r in rows)


def test_random_sampler_workload_completes_every_trial(store: Store) -> None:
    study_id = store.create_new_study([0], "workload")
    rows = run_random_sampler_trials(store, study_id, threads=32, trials_per_thread=3)
    assert [r.number for r in rows] == list(range(96))
    assert sorted(r.values[0] for r in rows) == sorted(
        float(i * 100 + j) for i in range(32) for j in range(3))
    assert all(r.state == COMPLETE and r.datetime_complete for r in rows)


def test_a_commit_window_batches_concurrent_writes_and_loses_none(db_url: str) -> None:
    store = Store(db_url, commit_window=0.05)
    try:
        study_id = store.create_new_study([0], "windowed")
        rows = run_random_sampler_trials(store, study_id, threads=16, trials_per_thread=3)
    finally:
        store.close()
    assert [r.number for r in rows] == list(range(48))
    assert all(r.state == COMPLETE and r.params[0][0] == "x" for r in rows)


def test_a_lone_writer_never_waits_for_the_commit_window(db_url: str) -> None:
    """With no write arriving while the last one committed, nothing is waited for
    (else this test would sit out an hour per write)."""
    store = Store(db_url, commit_window=3600.0)
    try:
        study_id = store.create_new_study([0], "lone")
        rows = run_random_sampler_trials(store, study_id, threads=1, trials_per_thread=5)
    finally:
        store.close()
    assert [r.number for r in rows] == list(range(5))


def test_each_concurrent_write_gets_its_own_outcome(store: Store) -> None:
    study_id = store.create_new_study([0], "mixed")
    running = [store.create_new_trial(study_id, None) for _ in range(8)]
    finished = store.create_new_trial(study_id, None)
    store.set_trial_param(running[0], "n", 1.0, INT)
    store.set_trial_state_values(finished, COMPLETE, [1.0])
    calls: list[tuple[Callable[[], Any], type[Exception] | None]] = []
    for trial_id in running:
        calls += _valid_writes(store, trial_id)
    calls += [
        (lambda: store.set_trial_param(finished, "x", 1.0, FLOAT), UpdateFinishedTrialError),
        (lambda: store.set_trial_state_values(finished, COMPLETE, [2.0]),
         UpdateFinishedTrialError),
        (lambda: store.set_trial_param(running[1], "n", 1.0, FLOAT), ValueError),
        (lambda: store.set_trial_param(10**8, "x", 1.0, FLOAT), KeyError),
        (lambda: store.set_trial_user_attr(10**8, "k", "1"), KeyError),
        (lambda: store.create_new_trial(10**8, None), KeyError),
        (lambda: store.set_trial_user_attr(running[2], "k", "not json"), ValueError),
    ]
    calls += [(lambda: store.create_new_trial(study_id, None), None)] * 4

    outcomes = in_lockstep(len(calls), lambda i: calls[i][0]())

    for (_, expected), outcome in zip(calls, outcomes, strict=True):
        if expected is None:
            assert not isinstance(outcome, Exception), outcome
        else:
            assert isinstance(outcome, expected), outcome
    rows = {r.trial_id: r for r in store.load_trials(study_id, id_greater_than=-1)}
    for trial_id in running:
        assert ("x", 1.0, FLOAT) in rows[trial_id].params
        assert rows[trial_id].user_attrs == [("k", "1")]
        assert rows[trial_id].intermediate_values == [(0, 2.0)]
    assert rows[running[1]].params == [("x", 1.0, FLOAT)]  # the incompatible one left nothing
    assert rows[finished].params == [] and rows[finished].values == [1.0]
    assert sorted(r.number for r in rows.values()) == list(range(13))


def test_finishing_trials_together_with_one_already_finished(store: Store) -> None:
    """Concurrent finishing writes, as a batch guards them: the finished trial's write
    fails alone, and every other write of the batch lands."""
    study_id = store.create_new_study([0], "finishing")
    running = [store.create_new_trial(study_id, None) for _ in range(8)]
    finished = store.create_new_trial(study_id, None)
    store.set_trial_state_values(finished, COMPLETE, [0.0])
    calls: list[Callable[[], Any]] = [
        lambda: store.set_trial_state_values(finished, COMPLETE, [9.0]),
        lambda: store.set_trial_param(finished, "x", 1.0, FLOAT, study_id=study_id),
    ]
    for i, trial_id in enumerate(running):
        if i % 2:
            calls.append(lambda t=trial_id, i=i: store.set_trial_state_values(t, COMPLETE, [i]))
        else:
            calls.append(lambda t=trial_id: store.set_trial_param(t, "x", 1.0, FLOAT,
                                                                  study_id=study_id))

    outcomes = in_lockstep(len(calls), lambda i: calls[i]())

    assert all(isinstance(o, UpdateFinishedTrialError) for o in outcomes[:2]), outcomes[:2]
    assert outcomes[2:] == [None if i % 2 == 0 else True for i in range(len(running))]
    rows = {r.trial_id: r for r in store.load_trials(study_id, id_greater_than=-1)}
    assert rows[finished].values == [0.0] and rows[finished].params == []
    for i, trial_id in enumerate(running):
        row = rows[trial_id]
        if i % 2:
            assert (row.state, row.values, bool(row.datetime_complete)) == (COMPLETE, [i], True)
        else:
            assert (row.state, row.params) == (RUNNING, [("x", 1.0, FLOAT)])


def _valid_writes(
    store: Store, trial_id: int
) -> list[tuple[Callable[[], Any], type[Exception] | None]]:
    return [
        (lambda: store.set_trial_param(trial_id, "x", 1.0, FLOAT), None),
        (lambda: store.set_trial_user_attr(trial_id, "k", "1"), None),
        (lambda: store.set_trial_intermediate_value(trial_id, 0, 2.0), None),
    ]


def _create_trials_in_process(url: str, study_id: int, count: int) -> list[int]:
    store = Store(url)
    try:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda _: store.create_new_trial(study_id, None), range(count)))
    finally:
        store.close()


def test_processes_writing_one_study_get_unique_numbers(store: Store, db_url: str) -> None:
    study_id = store.create_new_study([0], "processes")
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        results = pool.starmap(_create_trials_in_process, [(db_url, study_id, 20)] * 3)
    trial_ids = [t for ids in results for t in ids]
    assert len(set(trial_ids)) == 60
    rows = store.load_trials(study_id, id_greater_than=-1)
    assert [r.number for r in rows] == list(range(60))
