"""Where a request is served: the shard that owns a study, and the study of a trial.

- `owner_of(study_id, shard_count)`: the shard that owns a study, the same in every
  process and every run.
- `Router`: what a front asks about one request. It owns the shard hash for this
  instance, and the `trial_id → study_id` map that trial-scoped requests (which
  carry no study id) are routed by, with its one primary-key lookup on a miss.
- `TrialStudyMap`: that map, compact enough for millions of trials.

The bytes themselves travel between workers over `forwarding`.
"""

from __future__ import annotations

import bisect
import threading
from array import array
from collections.abc import Callable, Iterable
from typing import NamedTuple

# -- ownership -------------------------------------------------------------------

_MASK64 = (1 << 64) - 1


def _mix64(value: int) -> int:
    """SplitMix64's finaliser: a fixed, well-spread 64-bit permutation."""
    value &= _MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK64
    return value ^ (value >> 31)


def owner_of(study_id: int, shard_count: int) -> int:
    """The shard (0 ≤ shard < shard_count) that owns `study_id`.

    Stable across processes and runs (unlike Python's `hash` of most types). Ids are
    cut into aligned blocks of `shard_count` consecutive ids (1..N, N+1..2N, ...);
    within a block the shards follow each other in a rotation picked by a fixed
    64-bit mix of the block number. So the few studies of a small deployment,
    created one after the other, land on distinct shards, while ids allocated with
    a stride (`auto_increment_increment` on multi-primary MySQL clusters), which
    plain `study_id % shard_count` would pile onto few shards, still spread evenly.
    """
    if shard_count < 1:
        raise ValueError(f"shard_count must be at least 1, got {shard_count}")
    position = study_id - 1  # database ids start at 1
    return (position + _mix64(position // shard_count)) % shard_count


# -- trial → study map -------------------------------------------------------------


class _Run(NamedTuple):
    """A sorted, immutable run of (trial_id, study_id) pairs in two parallel arrays."""

    keys: array[int]
    values: array[int]

    def get(self, trial_id: int) -> int | None:
        keys = self.keys
        if not keys or trial_id < keys[0] or trial_id > keys[-1]:
            return None
        index = bisect.bisect_left(keys, trial_id)
        if keys[index] == trial_id:
            return self.values[index]
        return None


def _run_of(mapping: dict[int, int]) -> _Run:
    keys = sorted(mapping)
    return _Run(array("q", keys), array("q", [mapping[key] for key in keys]))


def _merge(older: _Run, newer: _Run) -> _Run:
    """One run holding both; `newer` wins on a shared key.

    Only the key range where the two runs overlap is merged element by element; the
    rest is copied as array slices. New trials have the highest ids, so runs learned
    in the usual order do not overlap and merging them is a concatenation.
    """
    first, last = newer.keys[0], newer.keys[-1]
    low = bisect.bisect_left(older.keys, first)
    high = bisect.bisect_right(older.keys, last)
    overlap = dict(zip(older.keys[low:high], older.values[low:high], strict=True))
    overlap.update(zip(newer.keys, newer.values, strict=True))
    middle = _run_of(overlap)
    return _Run(
        older.keys[:low] + middle.keys + older.keys[high:],
        older.values[:low] + middle.values + older.values[high:],
    )


class TrialStudyMap:
    """A compact, thread-safe `trial_id → study_id` map.

    A front learns the study of every trial it routes, and there can be millions of
    them, so entries live in sorted runs of two `array('q')` (16 bytes per entry)
    instead of a dict (about 100 bytes per entry with its int objects). New entries
    collect in a small dict; when it holds `buffer_size` entries it becomes a sorted
    run, and runs are merged whenever the newest is at least half the size of the one
    before it, so there are at most log2(entries / buffer_size) + 1 runs and every
    entry is copied O(log n) times in all. Memory: 16 bytes per entry plus the
    buffer, and transiently the two runs being merged.

    Lookups take no lock: runs are immutable and replaced by reference, and the
    buffer is a dict (atomic `get`). Writers serialise on a lock; merges run outside
    it, one at a time. A trial's study never changes, but should an id be learned
    again with another study (SQLite may reuse the highest deleted rowid), the newest
    value wins.
    """

    def __init__(self, buffer_size: int = 4096) -> None:
        if buffer_size < 1:
            raise ValueError("buffer_size must be at least 1")
        self._buffer_size = buffer_size
        self._recent: dict[int, int] = {}
        self._runs: tuple[_Run, ...] = ()  # oldest (largest) first
        self._lock = threading.Lock()  # guards _recent and replacing _runs
        self._merge_lock = threading.Lock()  # one merger at a time

    def get(self, trial_id: int) -> int | None:
        # Read the buffer before the runs: a flush publishes the new run before it
        # replaces the buffer, so an entry is always in one of the two we read.
        study_id = self._recent.get(trial_id)
        if study_id is not None:
            return study_id
        for run in reversed(self._runs):
            study_id = run.get(trial_id)
            if study_id is not None:
                return study_id
        return None

    def learn(self, trial_id: int, study_id: int) -> None:
        self.learn_many(((trial_id, study_id),))

    def learn_many(self, pairs: Iterable[tuple[int, int]]) -> None:
        new = {trial: study for trial, study in pairs if self.get(trial) != study}
        if not new:
            return
        with self._lock:
            self._recent.update(new)
            if len(self._recent) < self._buffer_size:
                return
            self._runs = (*self._runs, _run_of(self._recent))
            self._recent = {}
        self._compact()

    def forget_study(self, study_id: int) -> None:
        """Drops every trial of a deleted study (its ids may be reused on SQLite)."""
        with self._merge_lock, self._lock:
            self._recent = {t: s for t, s in self._recent.items() if s != study_id}
            runs = []
            for run in self._runs:
                if study_id in run.values:
                    kept = [i for i, value in enumerate(run.values) if value != study_id]
                    run = _Run(
                        array("q", [run.keys[i] for i in kept]),
                        array("q", [run.values[i] for i in kept]),
                    )
                if run.keys:
                    runs.append(run)
            self._runs = tuple(runs)

    def __len__(self) -> int:
        """Entries held; an id re-learned with another study counts twice until merged."""
        runs, recent = self._runs, self._recent
        return len(recent) + sum(len(run.keys) for run in runs)

    def _compact(self) -> None:
        # If another thread is merging, it re-reads the runs after each merge; a run
        # published just as it finishes waits for the next flush, which is harmless.
        if not self._merge_lock.acquire(blocking=False):
            return
        try:
            while True:
                runs = self._runs
                if len(runs) < 2 or len(runs[-2].keys) > 2 * len(runs[-1].keys):
                    return
                merged = _merge(runs[-2], runs[-1])
                position = len(runs) - 2
                with self._lock:
                    # Only this merger replaces runs; flushes only append after them.
                    current = self._runs
                    self._runs = (*current[:position], merged, *current[position + 2 :])
        finally:
            self._merge_lock.release()


# -- the router ----------------------------------------------------------------------


class Router:
    """Answers, for one worker, which shard serves a study and which study a trial is in.

    A trial's study never changes while the trial exists, so it is learned once: from
    the CreateNewTrial replies the front relays, else by one primary-key read
    (`lookup_study_of_trial`, which raises KeyError for an unknown trial).
    """

    def __init__(
        self,
        shard_index: int,
        shard_count: int,
        lookup_study_of_trial: Callable[[int], int],
    ) -> None:
        if not 0 <= shard_index < shard_count:
            raise ValueError(f"shard {shard_index} is not one of {shard_count}")
        self.shard_index = shard_index
        self.shard_count = shard_count
        self._lookup = lookup_study_of_trial
        self._trial_studies = TrialStudyMap()

    def owner_of(self, study_id: int) -> int:
        return 0 if self.shard_count == 1 else owner_of(study_id, self.shard_count)

    def study_of_trial(self, trial_id: int) -> int:
        """The trial's study: remembered, or looked up once (KeyError if no such trial)."""
        study_id = self._trial_studies.get(trial_id)
        if study_id is None:
            study_id = self._lookup(trial_id)
            self._trial_studies.learn(trial_id, study_id)
        return study_id

    def remembered_study_of(self, trial_id: int) -> int | None:
        """The trial's study if this worker has learned it; never reads the database."""
        return self._trial_studies.get(trial_id)

    def look_up_again(self, trial_id: int) -> int:
        """The trial's study read afresh, for when the remembered one proved stale.

        Only a database that hands out a deleted trial's id again (SQLite) makes a
        remembered study wrong.
        """
        study_id = self._lookup(trial_id)
        self._trial_studies.learn(trial_id, study_id)
        return study_id

    def learn(self, trial_id: int, study_id: int) -> None:
        self._trial_studies.learn(trial_id, study_id)

    def forget_study(self, study_id: int) -> None:
        """Drops a deleted study's trials (their ids may be handed out again)."""
        self._trial_studies.forget_study(study_id)

    def remembered_trials(self) -> int:
        return len(self._trial_studies)
