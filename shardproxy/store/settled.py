"""Id ranges where no trial of a study can appear any more, learned from PostgreSQL loads.

On PostgreSQL a load of a study's newer trials reads the trials of every study
with id > X from the primary key (see `newer`). A study that nobody writes to
while others grow would pay for all their trials on every sync. What makes the
gap skippable: every writer of trials (RDBStorage, this store, other proxies)
locks the study's row FOR UPDATE, which gives its transaction an id, before it
takes a trial id from the sequence, and holds the lock until it commits. So if a
load saw `newest_id` as the newest trial id with its snapshot's `xmax` as the
first transaction id not yet handed out, then once a later load's snapshot has an
`xmin` at or past that `xmax` (every transaction running at the first load has
ended), every trial of the study with id <= `newest_id` is visible to the later
load: committed, or never to be. What the later load found of the study in
(searched from, newest_id] is then all there will ever be (ids are not handed out
twice on PostgreSQL), and the id range after the last of them is known empty.

The next load of the study that starts inside a known-empty range reads from the
range's end. A long transaction somewhere in the database only delays learning
(xmin stays behind); nothing is skipped that was not settled.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from shardproxy.store.loads import SyncMark


@dataclass
class _Study:
    # No trial of the study has an id in (empty_after, empty_to].
    empty_after: int = 0
    empty_to: int = 0
    # The mark of a load whose newest id is not yet known settled.
    pending: SyncMark | None = None


class SettledRanges:
    """Per study, the known-empty id range; thread-safe."""

    def __init__(self) -> None:
        self._studies: dict[int, _Study] = {}
        self._lock = threading.Lock()

    def search_from(self, study_id: int, id_greater_than: int) -> int:
        """Where a load of the study's trials with id > `id_greater_than` may start."""
        with self._lock:
            study = self._studies.get(study_id)
            if study is not None and study.empty_after <= id_greater_than < study.empty_to:
                return study.empty_to
            return id_greater_than

    def learn(
        self, study_id: int, searched_from: int, trial_ids: Iterable[int], mark: SyncMark
    ) -> None:
        """After a load of every trial of the study with id > `searched_from` (and
        maybe some listed older ones), whose ids are `trial_ids`, under `mark`."""
        with self._lock:
            study = self._studies.setdefault(study_id, _Study())
            pending = study.pending
            if pending is not None and mark.xmin >= pending.xmax:
                settled_to = pending.newest_id
                if settled_to > max(searched_from, study.empty_to):
                    found = [i for i in trial_ids if searched_from < i <= settled_to]
                    if found:
                        study.empty_after = max(found)
                    elif not study.empty_after <= searched_from <= study.empty_to:
                        study.empty_after = searched_from
                    study.empty_to = settled_to
                study.pending = None
            if study.pending is None:
                study.pending = mark

    def forget(self, study_id: int) -> None:
        with self._lock:
            self._studies.pop(study_id, None)
