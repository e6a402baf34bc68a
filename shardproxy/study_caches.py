"""The studies one owner process caches: each a `cache.StudyCache`, bounded in all.

The bounds are the whole process's, in trials (`--cache-max-trials`) and in bytes
(`--cache-memory` split over the workers, by `StudyCache.memory_bytes`): past
either, whole least-recently-used studies are dropped, and a dropped study is
loaded again in full on its next read. A study read in full makes room as it
grows, a chunk of rows at a time, so that several first reads at once do not each
hold a whole study beyond the bound until they end.

The byte bound is shared with the large replies in flight (`reply_room`): room
taken for them is room the cached studies give up, and a reply that does not fit
beside the others in flight waits for one of them to be sent.
"""

from __future__ import annotations

import threading
import time
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
        self._room_freed = threading.Condition(self._lock)
        self._studies: OrderedDict[int, StudyCache] = OrderedDict()
        # Each study's (trials, memory bytes) as measured after its last sync, and
        # their sums: the bounds are checked against these, so that a request costs
        # O(1) however many studies are cached. A study's size changes by its syncs.
        self._sizes: dict[int, tuple[int, int]] = {}
        self._trials = 0
        self._bytes = 0
        self._reserved = 0  # bytes taken by replies in flight (`reserve`)

    def get(self, study_id: int) -> StudyCache:
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is None:
                cache = StudyCache(
                    study_id, self._load_trials, self._sync_window, self._on_sync,
                    self._ids_reused, self._on_replaced, self._grown,
                )
                self._studies[study_id] = cache
            else:
                self._studies.move_to_end(study_id)
            return cache

    def synced(self, study_id: int) -> StudyCache:
        """The study's cache, brought up to date; KeyError if the study is gone."""
        cache = self.get(study_id)
        try:
            cache.sync()
        except KeyError:
            self.drop(study_id)
            raise
        self._grown(cache)  # the sync may have grown this study past the limit
        return cache

    def drop(self, study_id: int) -> None:
        with self._lock:
            self._studies.pop(study_id, None)
            self._measured(study_id, None)

    def held(self, study_id: int) -> StudyCache | None:
        """The study's cache if this worker holds one (as recently used as `get`
        makes it), None otherwise: nothing is created for a study not cached."""
        with self._lock:
            cache = self._studies.get(study_id)
            if cache is not None:
                self._studies.move_to_end(study_id)
            return cache

    def holds(self, study_id: int) -> bool:
        with self._lock:
            return study_id in self._studies

    def cached_trials(self) -> int:
        with self._lock:
            return sum(len(cache) for cache in self._studies.values())

    @property
    def memory_bytes(self) -> int:
        """What the cached studies count against the byte bound, as last measured."""
        with self._lock:
            return self._bytes

    def totals(self) -> tuple[int, int, int]:
        """(studies, trials, encoded trial bytes) cached, for metrics: O(studies)."""
        with self._lock:
            caches = list(self._studies.values())
        return len(caches), sum(len(c) for c in caches), sum(c.encoded_bytes for c in caches)

    def reserve(self, nbytes: int, keep: int | None = None, wait: float = 0.0) -> float:
        """Takes `nbytes` of the byte bound for a reply in flight, until `unreserve`.

        Cached studies are evicted to leave the room (all but `keep`, the study the
        reply is read from). Where replies in flight already hold so much that this
        one does not fit beside them, waits for room up to `wait` seconds, then takes
        it anyway: a client that stops reading must not stall every other read. One
        reply alone always goes, whatever its size. Returns the seconds it waited."""
        with self._lock:
            if self._max_bytes is None:
                return 0.0
            max_bytes = self._max_bytes

            def fits() -> bool:
                return not self._reserved or self._reserved + nbytes <= max_bytes

            waited = 0.0
            if not fits():
                started = time.monotonic()
                self._room_freed.wait_for(fits, wait)
                waited = time.monotonic() - started
            self._reserved += nbytes
            self._evict_beyond_limit(keep=keep)
            return waited

    def unreserve(self, nbytes: int) -> None:
        """Gives back room `reserve` took, once the reply it was for has been sent."""
        with self._lock:
            if self._max_bytes is None:
                return
            self._reserved -= nbytes
            self._room_freed.notify_all()

    @property
    def reserved_bytes(self) -> int:
        """What the replies in flight hold of the byte bound now."""
        with self._lock:
            return self._reserved

    def _grown(self, cache: StudyCache) -> None:
        """Counts `cache` at its size now, and drops other studies beyond the limit.

        Called by the thread syncing it (which alone changes it), after its sync
        and as a large sync adds each chunk."""
        size = (len(cache), cache.memory_bytes)
        with self._lock:
            if self._studies.get(cache.study_id) is cache:  # not dropped meanwhile
                self._measured(cache.study_id, size)
                self._evict_beyond_limit(keep=cache.study_id)

    def _measured(self, study_id: int, size: tuple[int, int] | None) -> None:
        """Records a study's size (None: no longer cached) in the running sums."""
        trials, memory = self._sizes.pop(study_id, (0, 0))
        self._trials -= trials
        self._bytes -= memory
        if size is not None:
            self._sizes[study_id] = size
            self._trials += size[0]
            self._bytes += size[1]

    def _evict_beyond_limit(self, keep: int | None) -> None:
        max_bytes = self._bytes if self._max_bytes is None else self._max_bytes - self._reserved
        if self._trials <= self._max_trials and self._bytes <= max_bytes:
            return
        for study_id in list(self._studies):
            if self._trials <= self._max_trials and self._bytes <= max_bytes:
                break
            if study_id == keep:
                continue
            del self._studies[study_id]
            self._measured(study_id, None)
