"""Per-study trial caches of one owner process, kept coherent with the database.

A study's cache holds its trials by id. A finished trial never changes, so its
encoded `Trial` bytes are built once and reused by every GetTrials/GetTrial reply;
an unfinished trial is re-encoded only when a sync finds its row changed. Finished
trials are packed into a few large blobs (`packed_trials`) once PACK_AFTER of them
have gathered: until then, and while unfinished, a trial is held on its own.

A sync adds what it read a chunk of rows at a time, dropping each chunk's rows
once they are encoded: a first read of a large study, which the store streams,
then holds one chunk's rows and transient objects at a time, rather than every
trial's encoding beside every trial's row.

Coherence: other writers exist (other proxies, direct RDBStorage users, heartbeat
failers), so before answering a read the study is brought up to date with one
delta query — the trials with an id above the highest one seen, plus every trial
still unfinished here. Within a study trial ids grow in commit order (numbers are
assigned under the study-row lock), which makes that delta gap-free.

A database that hands out a deleted row's id again (SQLite) can give a new study
the id of a deleted one, and its trials the ids of the deleted trials: a cache
keyed by id would then serve the deleted study's trials as the new one's. Where
ids may be reused, each sync therefore also reads back the newest trial it holds
(by id, in the same query) and checks that it is still that trial: in the study,
with its number and start time. If not, the study was replaced: its cache is
emptied and read again in full, and `on_replaced` tells the worker, whose other
memories of the study (the trial → study map) go too. A finished trial is then
also served only after a sync. Elsewhere ids are never handed out twice and the
check is not made.

Syncs are single-flight: a read needs a sync that *started after it arrived*; all
reads that arrive while one sync runs share the next one. That bounds the
database reads per study by the sync latency rather than by the number of clients,
and gives read-your-writes for free: a write acknowledged before a read arrived is
committed before that read's sync starts.

A busy study (reads arrived while its last sync ran) holds its next sync back for
a short window, so that more reads join it: with a few clients per study, reads
rarely overlap a sync of their own accord. A study read by one client at a time
never waits.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from bisect import bisect_right, insort
from collections.abc import Callable, Collection, Iterable, Iterator
from itertools import islice
from typing import NamedTuple

from shardproxy import codec
from shardproxy.heap import collector_paused, on_loading_thread, trim_c_heap
from shardproxy.packed_trials import Buffer, PackedTrials
from shardproxy.rows import TrialRow

# load_trials(study_id, id_greater_than, ids) -> rows sorted by trial_id, as a list
# or an iterator that reads as it is consumed; KeyError when the study does not
# exist (from the iterator: once it has run out).
LoadTrials = Callable[[int, int, Collection[int]], Iterable[TrialRow]]
# Told, as each sync starts, how many reads it serves (metrics); None: nobody listens.
OnSync = Callable[[int], None] | None
# Told the id of a study found replaced by another with the same id (see above).
OnReplaced = Callable[[int], None] | None
# Told the cache, as a sync of more than one chunk adds each further chunk: the
# owner's bound on all caches can make room while a large study is being read,
# rather than once it is all in.
OnGrown = Callable[["StudyCache"], None] | None
# Rows a sync encodes and adds at a time: the transients of one chunk (its rows'
# encodings, the bookkeeping) are freed before the next chunk's are made. Smaller
# chunks leave fewer of the interpreter's arenas held by a few survivors among
# freed transients: a worker with a 16 MiB cache, three clients reading 25 000-trial
# studies at once, kept 23 MiB over its baseline at 512 against 40-44 at 4096; a
# 100 000-trial first read took no more CPU (2.44-2.48 s against 2.53-2.90; at 256,
# 2.88-3.00: each chunk packs, and packing rebuilds the last leaf).
APPLY_CHUNK = 512
# Rows from which a sync counts as large (a first read): its transients are let go
# after it (`_settle`), which costs a full collection.
SETTLE_AFTER = 4096
# Finished trials held on their own until this many are packed at once: packing
# rebuilds the last leaf of the packed trials, which a sync that finds a few
# finished trials should not pay each time.
PACK_AFTER = 128
# Bytes a packed finished trial takes besides its encoding and frame (`packed_trials`):
# its id and offset in two arrays (12), and its share of the leaves' objects; with
# tracemalloc, 217.8 bytes live per trial of 200.7 bytes of frames on 100 000 trials.
TRIAL_OVERHEAD = 16
# Bytes a trial held on its own takes besides its encoding: the bytes object's
# header, its id (as a dict key and in the sorted list of such ids) and its dict
# slot, measured with sys.getsizeof; an unfinished trial's row comes on top.
LOOSE_TRIAL_OVERHEAD = 170


class _Witness(NamedTuple):
    """The newest cached trial as first read: what must still hold if the study is
    the same one. A trial's start time is set once (a waiting trial has none yet)."""

    trial_id: int
    number: int
    datetime_start: str

    def still_holds(self, row: TrialRow | None) -> bool:
        return row is not None and row.number == self.number and (
            not self.datetime_start or row.datetime_start == self.datetime_start)


class _UnfinishedTrial:
    """An unfinished trial's encoded bytes, and its row for the next sync to compare with."""

    __slots__ = ("row", "encoded")

    def __init__(self, row: TrialRow) -> None:
        self.row = row
        self.encoded = codec.encode_trial(row)


class StudyCache:
    """The trials of one study, and the single-flight sync that refreshes them."""

    def __init__(
        self,
        study_id: int,
        load_trials: LoadTrials,
        window: float = 0.0,
        on_sync: OnSync = None,
        ids_reused: bool = False,
        on_replaced: OnReplaced = None,
        on_grown: OnGrown = None,
    ) -> None:
        """`ids_reused`: the database may hand out a deleted row's id again (SQLite)."""
        self.study_id = study_id
        self._load_trials = load_trials
        self._window = window
        self._on_sync = on_sync
        self._ids_reused = ids_reused
        self._on_replaced = on_replaced
        self._on_grown = on_grown
        self._lock = threading.Lock()
        self._empty()
        # Single-flight bookkeeping, guarded by _sync_lock. A read waits for the sync
        # it needs on the condition of that sync's number's parity: at any time the
        # waiting reads need the running sync or the one after it, so a sync that
        # ends wakes its own readers, and one reader of the next to run it, rather
        # than every waiting reader (most of whom would only wait again).
        self._sync_lock = threading.Lock()
        self._sync_done = (threading.Condition(self._sync_lock),
                           threading.Condition(self._sync_lock))
        self._syncs_started = 0
        self._syncs_finished = 0
        self._sync_running = False
        self._failed_sync: tuple[int, BaseException] | None = None
        # Whether a read arrived while the last sync ran: the study is busy.
        self._read_during_sync = False
        self._reads_for_next_sync = 0  # the reads the next sync to start will serve

    def __len__(self) -> int:
        return len(self._packed) + len(self._recent) + len(self._unfinished)

    @property
    def encoded_bytes(self) -> int:
        """Bytes of every cached trial's encoding (packed ones with their frames)."""
        return self._packed.nbytes + self._loose_bytes

    @property
    def memory_bytes(self) -> int:
        """About the memory the cached trials take: their encodings, and what holds them."""
        loose = len(self._recent) + len(self._unfinished)
        return (self.encoded_bytes + len(self._packed) * TRIAL_OVERHEAD
                + loose * LOOSE_TRIAL_OVERHEAD)

    # -- reads -----------------------------------------------------------------

    def trials_reply(
        self,
        included_ids: Iterable[int],
        id_greater_than: int,
        before_building: Callable[[int], None] | None = None,
    ) -> bytes:
        """GetTrialsReply with the trials with id > `id_greater_than` or in
        `included_ids`, by id. `before_building` is told the reply's size in bytes
        before the reply is built (room for it is taken there: `reply_room`).

        O(trials returned): bisects into the sorted ids, never a walk of the study;
        packed trials go into the reply one slice per leaf, not one copy per trial.
        """
        pieces: list[Buffer] = []
        with self._lock:
            packed = self._packed
            self._visit(
                included_ids, id_greater_than,
                lambda low, high: packed.frames_between(low, high, pieces),
                lambda run: pieces.append(codec.encode_trials_reply(run)),
            )
        if before_building is not None:  # outside the lock: it may wait
            before_building(sum(map(len, pieces)))
        return b"".join(pieces)  # outside the lock: the packed blobs never change

    def trials_bytes(self, included_ids: Iterable[int], id_greater_than: int) -> list[bytes]:
        """The encoded trials `trials_reply` holds, one bytes object each, by id."""
        result: list[bytes] = []
        with self._lock:
            packed = self._packed
            self._visit(
                included_ids, id_greater_than,
                lambda low, high: packed.payloads_between(low, high, result),
                result.extend,
            )
        return result

    def id_of_rank(self, rank: int) -> int | None:
        """The id of the trial of rank `rank` (0-based) in id order among those the
        cache holds; None past them.

        A trial's number is the count of its study's trials with a smaller id, and
        the cache holds every trial of the study up to its newest: this is a guess
        at the id of the trial numbered `rank`, which whoever uses it confirms."""
        with self._lock:  # the loose ids change in place
            packed, loose = self._packed, self._loose_ids
            if not 0 <= rank < len(packed) + len(loose):
                return None
            # The held trials are the packed ones and the loose ones, apart. Of the
            # loose ones, those before the answer are the ones whose rank among all
            # is below `rank`: the first `before` of them, found by bisection.
            low, high = 0, len(loose)
            while low < high:
                middle = (low + high) // 2
                if middle + packed.count_below(loose[middle]) < rank:
                    low = middle + 1
                else:
                    high = middle
            before = low
            if before < len(loose) and before + packed.count_below(loose[before]) == rank:
                return loose[before]
            return packed.id_at(rank - before)

    def unfinished_ids(self) -> list[int]:
        """The ids of the trials the cache holds unfinished, as its last sync saw them."""
        with self._lock:
            return list(self._unfinished)

    def trial_bytes(self, trial_id: int) -> bytes | None:
        with self._lock:
            encoded = self._loose_encoded(trial_id)
            return self._packed.trial_bytes(trial_id) if encoded is None else encoded

    def finished_trial_bytes(self, trial_id: int) -> bytes | None:
        """The trial's bytes if it is cached and finished (then they never change).

        Never where ids are reused: the id may now be another trial's, which only a
        sync finds out."""
        if self._ids_reused:
            return None
        with self._lock:
            encoded = self._recent.get(trial_id)
            return self._packed.trial_bytes(trial_id) if encoded is None else encoded

    def _visit(
        self,
        included_ids: Iterable[int],
        id_greater_than: int,
        packed_between: Callable[[int, int | None], None],
        loose: Callable[[list[bytes]], None],
    ) -> None:
        """In id order, the listed trials with id <= `id_greater_than`, then every
        trial above it: `loose(encodings)` for each run of trials held on their own
        with no packed trial among them, and `packed_between(low, high)` for the
        packed ones with low < id < high (no upper bound when high is None). Under
        the lock.

        Runs, not one call per trial: a client's delta under load holds thousands
        of unfinished trials, most of them next to each other by id, and building
        such replies a trial at a time took a quarter of a worker's CPU there
        (`bench/results/overload-queue.md`, What the replies cost)."""
        packed = self._packed
        run: list[bytes] = []
        for trial_id in sorted({i for i in included_ids if i <= id_greater_than}):
            encoded = self._loose_encoded(trial_id)
            if encoded is not None:
                run.append(encoded)
            else:
                if run:
                    loose(run)
                    run = []
                packed_between(trial_id - 1, trial_id + 1)
        low = id_greater_than
        loose_ids = self._loose_ids
        for trial_id in loose_ids[bisect_right(loose_ids, id_greater_than) :]:
            if trial_id > low + 1 and packed.any_between(low, trial_id):
                if run:
                    loose(run)
                    run = []
                packed_between(low, trial_id)
            encoded = self._loose_encoded(trial_id)
            assert encoded is not None  # every id in _loose_ids is held on its own
            run.append(encoded)
            low = trial_id
        if run:
            loose(run)
        packed_between(low, None)

    def _loose_encoded(self, trial_id: int) -> bytes | None:
        """The bytes of a trial held on its own (unfinished, or not yet packed)."""
        encoded = self._recent.get(trial_id)
        if encoded is None:
            unfinished = self._unfinished.get(trial_id)
            return None if unfinished is None else unfinished.encoded
        return encoded

    # -- sync ------------------------------------------------------------------

    @property
    def syncing(self) -> bool:
        """Whether a sync runs or reads wait for one: a read arriving now needs the
        next sync, which the reads of a study this busy rarely run alone. A hint:
        by the time the caller acts on it, that may have changed."""
        return self._sync_running or self._reads_for_next_sync > 0

    def sync(self) -> None:
        """Bring the cache up to date with a sync that started after this call.

        Raises KeyError when the study no longer exists, or whatever the database
        raised for the sync this call waited on.
        """
        with self._sync_lock:
            needed = self._syncs_started + 1
            done = self._sync_done[needed % 2]
            self._reads_for_next_sync += 1
            if self._sync_running:
                self._read_during_sync = True
            while self._syncs_finished < needed:
                if self._sync_running:
                    done.wait()
                    continue
                self._sync_running = True
                busy, self._read_during_sync = self._read_during_sync, False
                if busy and self._window > 0:
                    # Reads arriving meanwhile still see the sync as not yet
                    # started, so they join it rather than the one after.
                    self._sync_lock.release()
                    time.sleep(self._window)
                    self._sync_lock.acquire()
                self._syncs_started += 1
                number = self._syncs_started
                served, self._reads_for_next_sync = self._reads_for_next_sync, 0
                error: BaseException | None = None
                self._sync_lock.release()
                try:
                    if self._on_sync is not None:
                        self._on_sync(served)
                    self._refresh()
                except BaseException as exc:  # handed to the waiters, then re-raised
                    error = exc
                finally:
                    self._sync_lock.acquire()
                    self._sync_running = False
                    self._syncs_finished = number
                    self._failed_sync = None if error is None else (number, error)
                    self._sync_done[number % 2].notify_all()
                    if self._reads_for_next_sync:
                        self._sync_done[(number + 1) % 2].notify()
                if error is not None:
                    raise error
            if self._failed_sync is not None and self._failed_sync[0] == needed:
                raise self._failed_sync[1]

    def _empty(self) -> None:
        self._packed = PackedTrials()  # finished trials, most of them
        # Trials held on their own: finished ones not yet packed, and unfinished ones.
        self._recent: dict[int, bytes] = {}
        self._unfinished: dict[int, _UnfinishedTrial] = {}
        self._loose_ids: list[int] = []  # the ids of both, ascending
        self._loose_bytes = 0  # of their encodings
        self._max_id = -1
        self._witness: _Witness | None = None  # only where ids are reused

    def _refresh(self) -> None:
        if self._max_id < 0:
            # A first read, on the process's loading thread: see `heap.on_loading_thread`.
            on_loading_thread(self._refresh_first)
        elif self._refresh_now() >= SETTLE_AFTER:
            self._settle()

    def _refresh_first(self) -> None:
        # A study's first read builds objects for every trial at once, and the garbage
        # collector would walk them again and again as they pile up (a third of the
        # CPU of a first read of 100 000 trials): it waits until they are built.
        with collector_paused():
            added = self._refresh_now()
        if added >= SETTLE_AFTER:
            self._settle()

    def _settle(self) -> None:
        """After a large sync (a first read), lets the memory of its transients go.

        Its rows filled fresh memory, and whatever the sync kept that was made
        meanwhile sits among them: the packed trials' small objects (their arrays'
        headers and leaves; the blobs are allocations of their own), and the
        interpreter's free lists, which keep thousands of the freed rows' tuples and
        lists. Each keeps a whole arena of freed memory resident. So the small
        objects are made again now that the rows are gone, the free lists emptied
        (only a full collection does that; tens of milliseconds), and the C heap
        trimmed. Measured: 100 000 trials on SQLite leave the owner 280 bytes of
        RSS per trial instead of 583, 20 000 trials 526 instead of 811."""
        packed = self._packed.relocated()
        with self._lock:
            self._packed = packed
            self._recent = dict(self._recent)
            self._loose_ids = list(self._loose_ids)
        gc.collect()
        trim_c_heap()

    def _refresh_now(self) -> int:
        """Reads the delta and adds it; how many rows it read."""
        rows, witness = self._fetch_delta()
        if witness is not None:
            rows = list(rows)
            if not witness.still_holds(
                next((row for row in rows if row.trial_id == witness.trial_id), None)
            ):
                with self._lock:
                    self._empty()
                if self._on_replaced is not None:
                    self._on_replaced(self.study_id)
                rows, _ = self._fetch_delta()
        return self._apply(rows)

    def _fetch_delta(self) -> tuple[Iterable[TrialRow], _Witness | None]:
        with self._lock:
            max_id = self._max_id
            wanted = list(self._unfinished)
            witness = self._witness
        if witness is not None and witness.trial_id not in wanted:
            wanted.append(witness.trial_id)
        return self._load_trials(self.study_id, max_id, wanted), witness

    def _apply(self, rows: Iterable[TrialRow]) -> int:
        """Adds `rows` (sorted by id) a chunk at a time, so that each chunk's rows
        are freed once they are encoded; how many rows there were."""
        count = 0
        for chunk in _chunks(rows, APPLY_CHUNK):
            if count and self._on_grown is not None:
                self._on_grown(self)
            count += len(chunk)
            self._apply_chunk(chunk)
            del chunk
            if len(self._recent) >= PACK_AFTER:
                self._pack()
        return count

    def _apply_chunk(self, rows: list[TrialRow]) -> None:
        # Only the sync running now changes the cache, so it reads it without the
        # lock; it encodes outside the lock too: readers keep being served meanwhile.
        unfinished = self._unfinished
        fresh_unfinished: list[_UnfinishedTrial] = []
        fresh_finished: list[tuple[int, bytes]] = []
        for row in rows:
            current = unfinished.get(row.trial_id)
            if current is None:
                if row.trial_id <= self._max_id and self._holds_finished(row.trial_id):
                    continue  # finished: it never changes
            elif _same_row(current.row, row):
                continue
            if row.is_finished:
                fresh_finished.append((row.trial_id, codec.encode_trial(row)))
            else:
                fresh_unfinished.append(_UnfinishedTrial(row))
        with self._lock:
            for trial in fresh_unfinished:
                self._hold(trial.row.trial_id, trial.encoded)
                unfinished[trial.row.trial_id] = trial
            for trial_id, encoded in fresh_finished:
                self._hold(trial_id, encoded)
                self._recent[trial_id] = encoded
            if rows:
                self._max_id = max(self._max_id, rows[-1].trial_id)
            if self._ids_reused and rows and rows[-1].trial_id == self._max_id:
                newest = rows[-1]
                if self._witness is None or self._witness.trial_id != newest.trial_id:
                    self._witness = _Witness(newest.trial_id, newest.number,
                                             newest.datetime_start)

    def _holds_finished(self, trial_id: int) -> bool:
        return trial_id in self._recent or trial_id in self._packed

    def _hold(self, trial_id: int, encoded: bytes) -> None:
        """Bookkeeping for a trial (re)encoded to be held on its own; under the lock."""
        replaced = self._unfinished.pop(trial_id, None)
        if replaced is None:
            if not self._loose_ids or trial_id > self._loose_ids[-1]:
                self._loose_ids.append(trial_id)
            else:  # an unfinished trial below a newer one that finished first
                insort(self._loose_ids, trial_id)
        else:
            self._loose_bytes -= len(replaced.encoded)
        self._loose_bytes += len(encoded)

    def _pack(self) -> None:
        """Moves the finished trials held on their own into the packed ones."""
        recent = self._recent
        ids = sorted(recent)  # in id order already, unless trials finished out of order
        packed = self._packed.with_added(ids, [recent[i] for i in ids])  # readers go on
        with self._lock:
            self._packed = packed
            self._recent = {}
            self._loose_ids = [i for i in self._loose_ids if i in self._unfinished]
            self._loose_bytes -= sum(map(len, recent.values()))


def _chunks(rows: Iterable[TrialRow], size: int) -> Iterator[list[TrialRow]]:
    """`rows` `size` at a time. A list is emptied as it goes, so that a chunk's rows
    are freed once the caller has dropped it; an iterator is read as it goes."""
    if isinstance(rows, list):
        rows.reverse()  # chunks are cut from the end: O(chunk) each
        while rows:
            chunk = rows[-size:]
            del rows[-size:]
            chunk.reverse()
            yield chunk
        return
    remaining = iter(rows)
    while chunk := list(islice(remaining, size)):
        yield chunk


def _same_row(old: TrialRow, new: TrialRow) -> bool:
    """Row equality where a NaN intermediate value (which Optuna stores) equals itself:
    with plain `==` such a trial would look changed, and be re-encoded, on every sync."""
    if old == new:
        return True
    if old._replace(intermediate_values=[]) != new._replace(intermediate_values=[]):
        return False
    return _without_nan(old.intermediate_values) == _without_nan(new.intermediate_values)


def _without_nan(steps: list[tuple[int, float]]) -> list[tuple[int, float | None]]:
    return [(step, None if math.isnan(value) else value) for step, value in steps]
