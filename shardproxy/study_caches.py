"""The studies one owner process caches: each a `cache.StudyCache`, bounded in all.

The bounds are the whole process's, in trials (`--cache-max-trials`) and in bytes
(`--cache-memory` split over the workers, by `StudyCache.memory_bytes`): past
either, whole least-recently-used studies are dropped, and a dropped study is
loaded again in full on its next read.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

from shardproxy.cache import LoadTrials, OnReplaced, OnSync, StudyCache


class StudyCaches:
    """The caches of the studies this process owns, bounded in total trials and bytes.

    Beyond `max_trials` trials or `max_bytes` bytes (`StudyCache.memory_bytes`),
    whole least-recently-used studies are dropped; a dropped study is simply loaded
    again in full on its next read.
    """

    def __init__(
        self,
        load_trials: LoadTrials,
        max_trials: int,
        max_bytes: int | None = None,
        sync_window: float = 0.0,
        on_sync: OnSync = None,
        ids_reused: bool = False,
        on_replaced: OnReplaced = None,
    ) -> None:
        """`ids_reused`, `on_replaced`: see `cache`'s docstring."""
        self._load_trials = load_trials
        self._max_trials = max_trials
        self._max_bytes = max_bytes
        self._sync_window = sync_window
        self._on_sync = on_sync
        self._ids_reused = ids_reused
        self._on_replaced = on_replaced
        self._lock = threading.Lock()
        self._studies: OrderedDict[int, StudyCache] = OrderedDict()

    def get(self, study_id: int) -> StudyCache:
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is None:
                cache = StudyCache(
                    study_id, self._load_trials, self._sync_window, self._on_sync,
                    self._ids_reused, self._on_replaced,
                )
                self._studies[study_id] = cache
            else:
                self._studies.move_to_end(study_id)
            self._evict_beyond_limit(keep=study_id)
            return cache

    def synced(self, study_id: int) -> StudyCache:
        """The study's cache, brought up to date; KeyError if the study is gone."""
        cache = self.get(study_id)
        try:
            cache.sync()
        except KeyError:
            self.drop(study_id)
            raise
        with self._lock:  # the sync may have grown this study past the limit
            self._evict_beyond_limit(keep=study_id)
        return cache

    def drop(self, study_id: int) -> None:
        with self._lock:
            self._studies.pop(study_id, None)

    def holds(self, study_id: int) -> bool:
        with self._lock:
            return study_id in self._studies

    def cached_trials(self) -> int:
        with self._lock:
            return sum(len(cache) for cache in self._studies.values())

    def totals(self) -> tuple[int, int, int]:
        """(studies, trials, encoded trial bytes) cached, for metrics: O(studies)."""
        with self._lock:
            caches = list(self._studies.values())
        return len(caches), sum(len(c) for c in caches), sum(c.encoded_bytes for c in caches)

    def _evict_beyond_limit(self, keep: int) -> None:
        trials = sum(len(cache) for cache in self._studies.values())
        memory = sum(cache.memory_bytes for cache in self._studies.values())
        max_bytes = memory if self._max_bytes is None else self._max_bytes
        for study_id in list(self._studies):
            if trials <= self._max_trials and memory <= max_bytes:
                break
            if study_id == keep:
                continue
            evicted = self._studies.pop(study_id)
            trials -= len(evicted)
            memory -= evicted.memory_bytes
