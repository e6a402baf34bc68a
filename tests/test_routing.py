"""Routing: the shard hash, the trial → study map, and the router a front asks."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from collections import Counter

import pytest

from shardproxy.routing import Router, TrialStudyMap, owner_of

# -- owner_of ------------------------------------------------------------------------


def test_owner_of_has_fixed_values() -> None:
    # Pinned: every worker of every run must agree, so these may never change.
    first_sixteen = [0, 1, 2, 3, 1, 2, 3, 0, 2, 3, 0, 1, 0, 1, 2, 3]
    assert [owner_of(i, 4) for i in range(1, 17)] == first_sixteen
    scattered = [2, 0, 1, 2, 1, 2, 0, 2]
    assert [owner_of(i, 3) for i in (0, 1, 2, 3, 1000, 2**31 - 1, 2**40, -5)] == scattered
    assert [owner_of(i, 7) for i in range(100, 114)] == [6, 0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 0, 0]


def test_owner_of_agrees_across_processes_with_other_hash_seeds() -> None:
    code = "from shardproxy.routing import owner_of; print([owner_of(i, 5) for i in range(50)])"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {str([owner_of(i, 5) for i in range(50)]) + "\n"}


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4, 7, 16])
def test_first_studies_land_on_distinct_shards(shard_count: int) -> None:
    assert {owner_of(i, shard_count) for i in range(1, shard_count + 1)} == set(range(shard_count))


@pytest.mark.parametrize("shard_count", [2, 3, 4, 8])
@pytest.mark.parametrize("first", [1, 2, 1000])
def test_any_consecutive_ids_spread_within_one_of_even(shard_count: int, first: int) -> None:
    for count in (shard_count * 3, shard_count * 5 + 1):
        per_shard = Counter(owner_of(i, shard_count) for i in range(first, first + count))
        sizes = [per_shard[shard] for shard in range(shard_count)]
        assert max(sizes) - min(sizes) <= 2, sizes


@pytest.mark.parametrize("shard_count", [2, 3, 4, 8])
@pytest.mark.parametrize("stride", [2, 3, 4, 8])
def test_strided_ids_spread_evenly(shard_count: int, stride: int) -> None:
    ids = range(1, 1 + stride * 8000, stride)
    per_shard = Counter(owner_of(i, shard_count) for i in ids)
    mean = len(ids) / shard_count
    assert set(per_shard) == set(range(shard_count))
    assert all(abs(n - mean) < 0.1 * mean for n in per_shard.values()), per_shard


def test_owner_of_refuses_zero_shards() -> None:
    with pytest.raises(ValueError, match="shard_count"):
        owner_of(1, 0)


# -- TrialStudyMap -----------------------------------------------------------------


def study_of(trial_id: int) -> int:
    return trial_id // 7 + 1


def test_map_answers_none_for_unknown_trials() -> None:
    trial_studies = TrialStudyMap()
    assert trial_studies.get(1) is None
    trial_studies.learn(1, 10)
    assert trial_studies.get(1) == 10
    assert trial_studies.get(2) is None
    assert len(trial_studies) == 1


@pytest.mark.parametrize("order", ["ascending", "shuffled", "descending"])
def test_map_keeps_every_entry_across_flushes_and_merges(order: str) -> None:
    trial_ids = list(range(1, 5001))
    if order == "shuffled":
        random.Random(7).shuffle(trial_ids)
    elif order == "descending":
        trial_ids.reverse()
    trial_studies = TrialStudyMap(buffer_size=16)
    for start in range(0, len(trial_ids), 100):
        trial_studies.learn_many((t, study_of(t)) for t in trial_ids[start : start + 100])
    assert all(trial_studies.get(t) == study_of(t) for t in trial_ids)
    assert trial_studies.get(0) is None and trial_studies.get(5001) is None
    assert len(trial_studies) == 5000
    # Runs shrink geometrically, so there are only a handful of them.
    assert len(trial_studies._runs) <= 10


def test_map_ignores_entries_it_already_holds() -> None:
    trial_studies = TrialStudyMap(buffer_size=4)
    for _ in range(3):
        trial_studies.learn_many((t, study_of(t)) for t in range(100))
    assert len(trial_studies) == 100


def test_map_newest_study_wins_for_a_relearned_id() -> None:
    trial_studies = TrialStudyMap(buffer_size=4)
    trial_studies.learn_many((t, 1) for t in range(1, 41))
    trial_studies.learn(40, 2)  # the highest rowid reused after a delete (SQLite)
    assert trial_studies.get(40) == 2
    trial_studies.learn_many((t, 3) for t in range(41, 81))  # merges the runs
    assert trial_studies.get(40) == 2
    assert trial_studies.get(39) == 1
    assert trial_studies.get(80) == 3


def test_map_forgets_a_deleted_study_only() -> None:
    trial_studies = TrialStudyMap(buffer_size=8)
    trial_studies.learn_many((t, study_of(t)) for t in range(1, 200))
    trial_studies.forget_study(study_of(50))
    for t in range(1, 200):
        expected = None if study_of(t) == study_of(50) else study_of(t)
        assert trial_studies.get(t) == expected
    assert len(trial_studies) == 199 - 7


def test_map_readers_never_see_a_wrong_study_while_writers_learn() -> None:
    trial_studies = TrialStudyMap(buffer_size=32)
    errors: list[str] = []
    done = threading.Event()

    def write(offset: int) -> None:
        for start in range(offset, 20000, 400):
            trial_studies.learn_many((t, study_of(t)) for t in range(start, start + 100))

    def read() -> None:
        rng = random.Random(threading.get_ident())
        while not done.is_set():
            t = rng.randrange(20000)
            found = trial_studies.get(t)
            if found is not None and found != study_of(t):
                errors.append(f"trial {t}: {found}")

    writers = [threading.Thread(target=write, args=(i * 100,)) for i in range(4)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    for thread in readers:
        thread.join(60)
    assert errors == []
    assert all(trial_studies.get(t) == study_of(t) for t in range(20000))


# -- Router ------------------------------------------------------------------------


class Lookups:
    """A primary-key lookup of a trial's study that counts its calls."""

    def __init__(self, studies: dict[int, int]) -> None:
        self.studies = studies
        self.calls = 0

    def __call__(self, trial_id: int) -> int:
        self.calls += 1
        if trial_id not in self.studies:
            raise KeyError("Record does not exist.")
        return self.studies[trial_id]


def test_router_looks_a_trial_up_once_then_remembers_it() -> None:
    lookup = Lookups({7: 3})
    router = Router(0, 2, lookup)
    assert router.study_of_trial(7) == 3
    assert router.study_of_trial(7) == 3
    assert lookup.calls == 1


def test_router_needs_no_lookup_for_a_trial_it_learned() -> None:
    lookup = Lookups({})
    router = Router(1, 4, lookup)
    router.learn(11, 5)
    assert router.study_of_trial(11) == 5
    assert lookup.calls == 0


def test_router_raises_key_error_for_an_unknown_trial_and_remembers_nothing() -> None:
    lookup = Lookups({})
    router = Router(0, 1, lookup)
    with pytest.raises(KeyError):
        router.study_of_trial(99)
    assert router.remembered_trials() == 0


def test_router_reads_a_stale_study_afresh_and_keeps_the_new_one() -> None:
    lookup = Lookups({7: 8})
    router = Router(0, 2, lookup)
    router.learn(7, 3)  # an id the database has since handed to a trial of study 8
    assert router.look_up_again(7) == 8
    assert router.study_of_trial(7) == 8
    assert lookup.calls == 1


def test_router_forgets_a_deleted_studys_trials() -> None:
    lookup = Lookups({1: 2, 2: 3})
    router = Router(0, 2, lookup)
    router.learn(1, 2)
    router.learn(2, 3)
    router.forget_study(2)
    assert router.study_of_trial(2) == 3
    assert router.study_of_trial(1) == 2  # looked up again: forgotten
    assert lookup.calls == 1


@pytest.mark.parametrize("shard_count", [1, 2, 5])
def test_router_owner_is_the_shard_hash(shard_count: int) -> None:
    router = Router(0, shard_count, Lookups({}))
    assert [router.owner_of(i) for i in range(1, 40)] == [
        owner_of(i, shard_count) for i in range(1, 40)
    ]


def test_router_refuses_a_shard_outside_the_count() -> None:
    with pytest.raises(ValueError, match="shard 2 is not one of 2"):
        Router(2, 2, Lookups({}))
