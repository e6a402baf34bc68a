"""The per-study cache on its own: what a read returns, and when it reads the database.

The database is stood in for by an in-memory table of trial rows behind the same
`load_trials` signature the store provides, so that a test can hold a sync in
flight and change the rows meanwhile. The cache in front of a real database is
tested through the server (tests/test_conformance.py, tests/test_studies.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection, Iterator

import pytest
from optuna.storages._grpc.auto_generated import api_pb2

from shardproxy import codec
from shardproxy.cache import StudyCache
from shardproxy.rows import COMPLETE, RUNNING, TrialRow
from shardproxy.study_caches import StudyCaches

STUDY = 7


def trial(trial_id: int, state: int = COMPLETE, value: float = 0.0) -> TrialRow:
    finished = state == COMPLETE
    return TrialRow(
        trial_id, trial_id - 1, state, [value] if finished else [], "2026-11-28 10:00:00.000000",
        "2026-11-28 10:00:01.000000" if finished else "", [], [], [], [],
    )


class Table:
    """Trial rows by id, and the loads the cache asked for."""

    def __init__(self) -> None:
        self.rows: dict[int, TrialRow] = {}
        self.loads: list[tuple[int, list[int]]] = []
        self.hold: threading.Event | None = None  # while set, a load waits for it
        self.error: Exception | None = None  # the next load raises it, after its hold
        self.load_started = threading.Event()
        self._lock = threading.Lock()

    def put(self, row: TrialRow) -> None:
        with self._lock:
            self.rows[row.trial_id] = row

    def load_trials(
        self, study_id: int, greater_than: int, ids: Collection[int]
    ) -> list[TrialRow]:
        if study_id != STUDY:
            raise KeyError(study_id)
        with self._lock:
            self.loads.append((greater_than, sorted(ids)))
            snapshot = dict(self.rows)  # the database's state when the load began
        self.load_started.set()
        hold = self.hold
        if hold is not None:
            hold.wait()
        error, self.error = self.error, None
        if error is not None:
            raise error
        return [row for i, row in sorted(snapshot.items()) if i > greater_than or i in ids]


def decoded_ids(encoded: list[bytes]) -> list[int]:
    reply = codec.encode_trials_reply(encoded)
    message = api_pb2.GetTrialsReply()
    message.ParseFromString(reply)
    return [t.trial_id for t in message.trials]


def test_trials_after_an_id_and_listed_older_ones_in_id_order() -> None:
    table = Table()
    for trial_id in range(1, 11):
        table.put(trial(trial_id))
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()

    assert decoded_ids(cache.trials_bytes([2, 5, 99], id_greater_than=7)) == [2, 5, 8, 9, 10]
    assert decoded_ids(cache.trials_bytes([], id_greater_than=-1)) == list(range(1, 11))
    assert cache.trials_bytes([], id_greater_than=10) == []


def test_a_delta_sync_asks_only_for_newer_and_unfinished_trials() -> None:
    table = Table()
    table.put(trial(1))
    table.put(trial(2, RUNNING))
    table.put(trial(3))
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()
    table.put(trial(2, COMPLETE, value=4.0))
    table.put(trial(4, RUNNING))
    cache.sync()

    assert table.loads == [(-1, []), (3, [2])]
    assert cache.finished_trial_bytes(2) == codec.encode_trial(trial(2, COMPLETE, value=4.0))
    assert cache.finished_trial_bytes(4) is None  # running: its bytes may still change
    assert cache.trial_bytes(4) == codec.encode_trial(trial(4, RUNNING))


def test_an_unchanged_trial_is_not_encoded_again_even_with_a_nan_value() -> None:
    table = Table()
    running = trial(1, RUNNING)._replace(intermediate_values=[(0, float("nan")), (1, 0.5)])
    table.put(running)
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()
    first = cache.trial_bytes(1)
    table.put(running._replace(intermediate_values=[(0, float("nan")), (1, 0.5)]))
    cache.sync()
    assert cache.trial_bytes(1) is first  # the very same bytes object: not re-encoded
    table.put(running._replace(intermediate_values=[(0, float("nan")), (1, 0.25)]))
    cache.sync()
    assert cache.trial_bytes(1) != first


def test_a_read_arriving_during_a_sync_waits_for_the_next_one() -> None:
    """The running sync began before the read arrived, so it may miss a write the
    reader already saw acknowledged: the read needs a sync that starts later."""
    table = Table()
    table.put(trial(1))
    cache = StudyCache(STUDY, table.load_trials)
    table.hold = threading.Event()
    first = threading.Thread(target=cache.sync)
    first.start()
    assert table.load_started.wait(10)

    table.put(trial(2))  # committed after the running sync took its snapshot
    late_reader = threading.Thread(target=cache.sync)
    late_reader.start()
    table.hold.set()
    first.join(10)
    late_reader.join(10)

    assert len(table.loads) == 2
    assert decoded_ids(cache.trials_bytes([], id_greater_than=-1)) == [1, 2]


def test_reads_of_a_busy_study_join_the_sync_that_waits_for_them() -> None:
    table = Table()
    table.put(trial(1))
    cache = StudyCache(STUDY, table.load_trials, window=1.0)
    table.hold = threading.Event()
    first = threading.Thread(target=cache.sync)
    first.start()
    assert table.load_started.wait(10)
    # A read arrives while that sync runs: the study is busy.
    second = threading.Thread(target=cache.sync)
    second.start()
    assert wait_until(lambda: cache._read_during_sync)  # noqa: SLF001
    held, table.hold = table.hold, None
    held.set()
    # The second read's sync now holds back for its window before it loads...
    assert wait_until(lambda: cache._sync_running and cache._syncs_finished == 1)  # noqa: SLF001
    table.put(trial(2))
    third = threading.Thread(target=cache.sync)
    third.start()  # ...so a read arriving meanwhile joins it.
    for thread in (first, second, third):
        thread.join(10)

    assert len(table.loads) == 2
    assert decoded_ids(cache.trials_bytes([], id_greater_than=-1)) == [1, 2]


def test_a_study_is_syncing_while_a_sync_runs_or_reads_wait_for_one() -> None:
    """GetTrial joins the next sync of such a study rather than reading on its own."""
    table = Table()
    table.put(trial(1))
    cache = StudyCache(STUDY, table.load_trials)
    assert not cache.syncing
    table.hold = threading.Event()
    first = threading.Thread(target=cache.sync)
    first.start()
    assert table.load_started.wait(10)
    assert cache.syncing
    waiting = threading.Thread(target=cache.sync)
    waiting.start()
    assert wait_until(lambda: cache._reads_for_next_sync == 1)  # noqa: SLF001
    held, table.hold = table.hold, None
    held.set()
    for thread in (first, waiting):
        thread.join(10)
    assert not cache.syncing
    assert len(table.loads) == 2


class CountedCondition(threading.Condition):
    """A condition that counts the waits that have ended, its `wakes`."""

    def __init__(self, lock: threading.Lock | None = None) -> None:
        super().__init__(lock)
        self.wakes = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wakes += 1  # under the condition's lock again
        return woken


def cache_with_counted_conditions(
    monkeypatch: pytest.MonkeyPatch, table: Table
) -> tuple[StudyCache, list[CountedCondition]]:
    """A cache whose conditions count their wakes: those the cache made for itself."""
    made: list[CountedCondition] = []

    class Recorded(CountedCondition):
        def __init__(self, lock: threading.Lock | None = None) -> None:
            super().__init__(lock)
            made.append(self)

    with monkeypatch.context() as patch:
        patch.setattr(threading, "Condition", Recorded)
        cache = StudyCache(STUDY, table.load_trials)
    return cache, made


def test_a_sync_that_ends_wakes_one_reader_of_the_next_to_run_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readers that arrived during a sync need the next one: when the sync ends, one
    of them is woken to run it and the others sleep on until it has run."""
    table = Table()
    table.put(trial(1))
    cache, conditions = cache_with_counted_conditions(monkeypatch, table)
    cache.sync()  # the first read
    first_hold = table.hold = threading.Event()
    table.load_started.clear()
    first = threading.Thread(target=cache.sync)
    first.start()
    assert table.load_started.wait(10)
    readers = [threading.Thread(target=cache.sync) for _ in range(3)]
    for reader in readers:
        reader.start()
    assert wait_until(lambda: cache._reads_for_next_sync == 3)  # noqa: SLF001
    second_hold = table.hold = threading.Event()
    table.load_started.clear()
    first_hold.set()
    assert table.load_started.wait(10)  # one of the three runs the next sync...
    first.join(10)
    time.sleep(0.2)  # (time for any other woken reader to take the lock)
    assert sum(c.wakes for c in conditions) == 1  # ...and the two others still sleep
    second_hold.set()
    for reader in readers:
        reader.join(10)

    assert not any(reader.is_alive() for reader in readers)
    assert sum(c.wakes for c in conditions) == 3  # each reader woken once
    assert len(table.loads) == 3


def test_a_failed_sync_raises_in_its_reader_and_the_next_one_still_runs() -> None:
    table = Table()
    table.put(trial(1))
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()
    held = table.hold = threading.Event()
    table.load_started.clear()
    table.error = ConnectionError("the database went away")
    errors: list[BaseException] = []

    def read() -> None:
        try:
            cache.sync()
        except ConnectionError as exc:
            errors.append(exc)

    first = threading.Thread(target=read)
    first.start()
    assert table.load_started.wait(10)
    waiting = threading.Thread(target=read)
    waiting.start()
    assert wait_until(lambda: cache._reads_for_next_sync == 1)  # noqa: SLF001
    table.put(trial(2))
    table.hold = None
    held.set()
    first.join(10)
    waiting.join(10)

    assert not waiting.is_alive()
    assert [str(error) for error in errors] == ["the database went away"]  # the first's
    assert decoded_ids(cache.trials_bytes([], id_greater_than=-1)) == [1, 2]


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.001)
    return True


def test_sequential_reads_never_wait_for_company() -> None:
    """A lone client's reads are not held back, however long the window."""
    table = Table()
    table.put(trial(1))
    cache = StudyCache(STUDY, table.load_trials, window=3600.0)
    for trial_id in range(2, 7):
        table.put(trial(trial_id))
        cache.sync()
    assert len(table.loads) == 5
    assert decoded_ids(cache.trials_bytes([], id_greater_than=-1)) == [1, 2, 3, 4, 5, 6]


def test_a_study_that_is_gone_is_dropped_and_reported() -> None:
    table = Table()
    caches = StudyCaches(table.load_trials, max_trials=100)
    with pytest.raises(KeyError):
        caches.synced(STUDY + 1)
    assert not caches.holds(STUDY + 1)


def test_a_cache_is_looked_up_without_being_made() -> None:
    table = Table()
    table.put(trial(1))
    caches = StudyCaches(table.load_trials, max_trials=100)
    assert caches.held(STUDY) is None
    assert not caches.holds(STUDY)  # asking made no cache
    synced = caches.synced(STUDY)
    assert caches.held(STUDY) is synced and len(synced) == 1


def test_least_recently_used_studies_are_evicted_past_the_limit() -> None:
    tables = {}

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
        return [row for i, row in tables[study_id].items() if i > greater_than or i in ids]

    for study_id in (1, 2, 3):
        tables[study_id] = {study_id * 10 + i: trial(study_id * 10 + i) for i in range(4)}
    caches = StudyCaches(load, max_trials=8)
    caches.synced(1)
    caches.synced(2)
    caches.synced(1)  # study 2 is now the least recently used
    caches.synced(3)

    assert caches.holds(1) and caches.holds(3) and not caches.holds(2)
    assert caches.cached_trials() == 8


def test_least_recently_used_studies_are_evicted_past_the_memory_bound() -> None:
    tables = {
        study_id: {study_id * 10 + i: trial(study_id * 10 + i) for i in range(4)}
        for study_id in (1, 2, 3)
    }

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
        return [row for i, row in tables[study_id].items() if i > greater_than or i in ids]

    one_study = StudyCaches(load, max_trials=100)
    per_study = one_study.synced(1).memory_bytes
    assert per_study > 4 * len(codec.encode_trial(trial(10)))  # encodings and their holders
    # Room for two studies and a half: the third read evicts the least recently used.
    caches = StudyCaches(load, max_trials=100, max_bytes=per_study * 5 // 2)
    caches.synced(1)
    caches.synced(2)
    caches.synced(1)
    caches.synced(3)

    assert caches.holds(1) and caches.holds(3) and not caches.holds(2)
    # A study bigger than the bound alone is still served, and then the only one cached.
    alone = StudyCaches(load, max_trials=100, max_bytes=per_study // 2)
    assert len(alone.synced(1)) == 4
    alone.synced(2)
    assert alone.holds(2) and not alone.holds(1)


def test_a_study_read_in_full_makes_room_as_it_grows() -> None:
    """Other studies are evicted while a large study's rows are being added, not only
    once its read has ended: concurrent first reads do not each hold a whole study
    beyond the bound."""
    from shardproxy.cache import APPLY_CHUNK

    small = {10 + i: trial(10 + i) for i in range(4)}
    large = {1000 + i: trial(1000 + i) for i in range(4 * APPLY_CHUNK)}
    held_during_read: list[bool] = []
    caches: StudyCaches | None = None

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> Iterator[TrialRow]:
        rows = small if study_id == 1 else large
        for n, (trial_id, row) in enumerate(rows.items()):
            if caches is not None and study_id == 2 and n == 3 * APPLY_CHUNK:
                held_during_read.append(caches.holds(1))  # three chunks in, one to go
            if trial_id > greater_than or trial_id in ids:
                yield row

    per_trial = StudyCaches(load, max_trials=10**6).synced(2).memory_bytes / len(large)
    # Room for the small study and two of the large one's four chunks.
    caches = StudyCaches(load, max_trials=10**6,
                         max_bytes=int(per_trial * (len(small) + 2 * APPLY_CHUNK)))
    caches.synced(1)
    assert caches.holds(1)
    assert len(caches.synced(2)) == len(large)
    assert held_during_read == [False]
    assert caches.holds(2) and not caches.holds(1)


def test_the_collector_waits_while_a_study_is_first_read() -> None:
    import gc

    table = Table()
    table.put(trial(1))
    seen: list[bool] = []

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
        seen.append(gc.isenabled())
        return table.load_trials(study_id, greater_than, ids)

    assert gc.isenabled()
    cache = StudyCache(STUDY, load)
    cache.sync()  # the first read: every trial built at once
    table.put(trial(2))
    cache.sync()  # a delta
    assert seen == [False, True]
    assert gc.isenabled()


def test_first_reads_run_on_one_loading_thread_and_deltas_on_the_readers_own() -> None:
    """What first reads churn through stays in one thread's C heap (`heap`): each
    study's first read runs on the same thread, whichever thread asked; a delta
    runs on the reader's own; a first read's error reaches the reader."""
    table = Table()
    table.put(trial(1))
    loaded_on: list[tuple[int, threading.Thread]] = []

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
        loaded_on.append((greater_than, threading.current_thread()))
        return table.load_trials(study_id, greater_than, ids)

    caches = [StudyCache(STUDY, load), StudyCache(STUDY, load)]
    readers = [threading.Thread(target=cache.sync) for cache in caches]
    for reader in readers:
        reader.start()
        reader.join()
    table.put(trial(2))
    caches[0].sync()
    assert [greater_than for greater_than, _ in loaded_on] == [-1, -1, 1]
    first, second, delta = (thread for _, thread in loaded_on)
    assert first is second
    assert first not in readers and first is not threading.current_thread()
    assert delta is threading.current_thread()
    assert decoded_ids(caches[0].trials_bytes([], -1)) == [1, 2]
    with pytest.raises(KeyError):
        StudyCache(STUDY + 1, load).sync()
    assert loaded_on[-1][1] is first


def test_the_collector_pause_ends_with_the_last_thread_and_keeps_it_off_if_it_was() -> None:
    import gc

    from shardproxy.heap import collector_paused

    inside, leave = threading.Barrier(3), threading.Event()

    def hold() -> None:
        with collector_paused():
            inside.wait()
            leave.wait()

    threads = [threading.Thread(target=hold) for _ in range(2)]
    for thread in threads:
        thread.start()
    inside.wait()
    with collector_paused():
        pass  # a third thread in and out: the other two are still inside
    assert not gc.isenabled()
    leave.set()
    for thread in threads:
        thread.join()
    assert gc.isenabled()

    gc.disable()
    try:
        with collector_paused():
            pass
        assert not gc.isenabled()  # not turned on by a pause that found it off
    finally:
        gc.enable()


# -- packed finished trials ------------------------------------------------------------


def reply_ids(reply: bytes) -> list[int]:
    message = api_pb2.GetTrialsReply()
    message.ParseFromString(reply)
    return [t.trial_id for t in message.trials]


def test_a_large_study_is_packed_and_its_reply_equals_one_built_trial_by_trial() -> None:
    from shardproxy.cache import APPLY_CHUNK, PACK_AFTER
    from shardproxy.packed_trials import LEAF_TRIALS

    table = Table()
    size = LEAF_TRIALS + APPLY_CHUNK + 100  # chunks, the last one partial; two leaves
    for trial_id in range(1, size + 1):
        table.put(trial(trial_id, value=float(trial_id)))
    table.put(trial(size + 1, RUNNING))
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()

    assert len(cache) == size + 1
    # Packed but for the last chunk's few (fewer than are packed at once).
    assert len(cache._packed) == size - 100 > size - PACK_AFTER  # noqa: SLF001
    expected = [codec.encode_trial(table.rows[i]) for i in sorted(table.rows)]
    assert cache.trials_reply([], -1) == codec.encode_trials_reply(expected)
    assert cache.trials_bytes([], -1) == expected
    assert cache.encoded_bytes >= sum(map(len, expected))
    middle = size // 2
    assert cache.trial_bytes(middle) == codec.encode_trial(table.rows[middle])
    assert cache.finished_trial_bytes(size + 1) is None
    # A delta read: a few listed older trials, and those above an id.
    second_leaf = LEAF_TRIALS + 1
    reply = cache.trials_reply([size + 1, 3, second_leaf, 10**9], id_greater_than=size - 2)
    assert reply_ids(reply) == [3, second_leaf, size - 1, size, size + 1]


def test_trials_that_finish_out_of_order_are_served_in_id_order() -> None:
    """A trial with a lower id may finish after many with higher ids: each is
    inserted where its id belongs, whether still held on its own or packed."""
    from shardproxy.cache import PACK_AFTER

    table = Table()
    cache = StudyCache(STUDY, table.load_trials)
    running: set[int] = set()
    next_id = 1
    for round_ in range(40):
        for _ in range(PACK_AFTER // 3):  # new trials, every fifth left running a while
            table.put(trial(next_id, RUNNING if next_id % 5 == 0 else COMPLETE))
            if next_id % 5 == 0:
                running.add(next_id)
            next_id += 1
        for trial_id in sorted(running):  # the oldest running ones finish now
            if trial_id < next_id - (round_ % 7) * 20:
                table.put(trial(trial_id, COMPLETE, value=1.5))
                running.discard(trial_id)
        cache.sync()
        expected = [codec.encode_trial(table.rows[i]) for i in sorted(table.rows)]
        assert cache.trials_reply([], -1) == codec.encode_trials_reply(expected)
        middle = next_id // 2
        delta = sorted({i for i in running if i <= middle} | {i for i in table.rows if i > middle})
        # Runs of trials held on their own, between packed ones, framed as one each.
        expected = [codec.encode_trial(table.rows[i]) for i in delta]
        assert cache.trials_reply(sorted(running), middle) == codec.encode_trials_reply(expected)
        assert cache.trials_bytes(sorted(running), middle) == expected
        # Ranks by id, over the packed trials and those held on their own alike.
        held = sorted(table.rows)
        assert [cache.id_of_rank(rank) for rank in range(len(held))] == held
        assert cache.id_of_rank(len(held)) is None and cache.id_of_rank(-1) is None
    assert len(cache._packed) > PACK_AFTER  # noqa: SLF001
    assert all(cache.finished_trial_bytes(i) == codec.encode_trial(table.rows[i])
               for i in table.rows if i not in running)


def test_a_sync_drops_the_rows_it_has_added() -> None:
    """The rows the store returned are let go a chunk at a time, as they are added."""
    from shardproxy.cache import APPLY_CHUNK

    table = Table()
    for trial_id in range(1, 2 * APPLY_CHUNK + 2):
        table.put(trial(trial_id))
    returned: list[list[TrialRow]] = []
    lengths: list[int] = []

    def load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
        rows = table.load_trials(study_id, greater_than, ids)
        returned.append(rows)
        return rows

    cache = StudyCache(STUDY, load)
    apply_chunk = cache._apply_chunk  # noqa: SLF001

    def watched(rows: list[TrialRow]) -> None:
        lengths.append(len(returned[0]))  # what is still held of the store's list
        apply_chunk(rows)

    cache._apply_chunk = watched  # type: ignore[method-assign]  # noqa: SLF001
    cache.sync()
    assert lengths == [APPLY_CHUNK + 1, 1, 0]
    assert len(cache) == 2 * APPLY_CHUNK + 1


def test_memory_counts_packed_trials_at_less_than_ones_held_alone() -> None:
    from shardproxy.cache import LOOSE_TRIAL_OVERHEAD, PACK_AFTER, TRIAL_OVERHEAD

    table = Table()
    for trial_id in range(1, PACK_AFTER + 1):
        table.put(trial(trial_id))
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()
    assert TRIAL_OVERHEAD < LOOSE_TRIAL_OVERHEAD
    assert cache.memory_bytes == cache.encoded_bytes + PACK_AFTER * TRIAL_OVERHEAD
    table.put(trial(PACK_AFTER + 1, RUNNING))
    cache.sync()
    assert cache.memory_bytes == (cache.encoded_bytes + PACK_AFTER * TRIAL_OVERHEAD
                                  + LOOSE_TRIAL_OVERHEAD)


def test_only_a_large_sync_settles_its_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first read of a large study ends with its transients' memory let go (a full
    collection among others); a smaller sync, even of several chunks, pays nothing of it."""
    from shardproxy.cache import APPLY_CHUNK, SETTLE_AFTER

    assert SETTLE_AFTER > 2 * APPLY_CHUNK
    table = Table()
    for trial_id in range(1, SETTLE_AFTER + 1):
        table.put(trial(trial_id))
    collections: list[int] = []
    monkeypatch.setattr("shardproxy.cache.gc.collect", lambda: collections.append(1) or 0)
    cache = StudyCache(STUDY, table.load_trials)
    cache.sync()
    assert collections == [1]
    before = cache.trials_reply([], -1)
    added = range(SETTLE_AFTER + 1, SETTLE_AFTER + 2 * APPLY_CHUNK + 2)
    for trial_id in added:
        table.put(trial(trial_id))
    cache.sync()
    assert collections == [1]
    assert cache.trials_reply([], SETTLE_AFTER) == codec.encode_trials_reply(
        [codec.encode_trial(table.rows[i]) for i in added])
    assert cache.trials_reply([], -1).startswith(before)  # the settled cache serves as before
