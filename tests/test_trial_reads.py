"""GetTrial's batched reads of single trials, on their own.

The database is stood in for by a table of rows behind the `load(trial_ids)`
signature the store provides, so that a test can hold a batch in flight and change
the rows meanwhile. Through the server with a real database they are tested by the
conformance suite (tests/test_conformance.py) and tests/test_metrics_endpoint.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from shardproxy.rows import COMPLETE, RUNNING, TrialRow
from shardproxy.trial_reads import TrialReads
from tests.test_cache import trial, wait_until


class Table:
    """Trial rows by id, and the ids each load asked for."""

    def __init__(self, *rows: TrialRow) -> None:
        self.rows = {row.trial_id: row for row in rows}
        self.loads: list[list[int]] = []
        self.hold: threading.Event | None = None  # while set, a load waits for it
        self.failure: Exception | None = None  # raised by the next loads
        self._lock = threading.Lock()

    def load(self, trial_ids: Sequence[int]) -> list[TrialRow]:
        with self._lock:
            self.loads.append(list(trial_ids))
            snapshot = dict(self.rows)  # the database as the load began
        hold = self.hold
        if hold is not None:
            hold.wait()
        if self.failure is not None:
            raise self.failure
        return [snapshot[i] for i in trial_ids if i in snapshot]


class Reader(threading.Thread):
    """One GetTrial's read on a thread of its own, its outcome kept."""

    def __init__(self, reads: TrialReads, trial_id: int) -> None:
        super().__init__()
        self._reads, self._trial_id = reads, trial_id
        self.row: TrialRow | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.row = self._reads.read(self._trial_id)
        except BaseException as exc:  # noqa: BLE001 - kept for the test to look at
            self.error = exc


def behind_a_running_batch(
    reads: TrialReads, table: Table, first_id: int, queued_ids: Sequence[int],
    meanwhile: Callable[[], None] = lambda: None,
) -> tuple[Reader, list[Reader]]:
    """A read of `first_id` whose batch is held in its load while `meanwhile` runs
    and reads of `queued_ids` queue behind it; then the load goes on. Returns the
    readers, finished."""
    table.hold = threading.Event()
    first = Reader(reads, first_id)
    first.start()
    assert wait_until(lambda: len(table.loads) == 1)
    meanwhile()
    queued = [Reader(reads, trial_id) for trial_id in queued_ids]
    for reader in queued:
        reader.start()
    assert wait_until(lambda: len(reads._queue) == len(queued))  # noqa: SLF001
    held, table.hold = table.hold, None
    held.set()
    for reader in (first, *queued):
        reader.join(10)
    return first, queued


def test_a_lone_read_is_one_load_of_its_trial() -> None:
    table = Table(trial(1), trial(2, RUNNING))
    reads = TrialReads(table.load)
    assert reads.read(2) == trial(2, RUNNING)
    assert reads.read(3) is None  # no such trial
    assert table.loads == [[2], [3]]


def test_reads_arriving_during_a_batch_share_the_next_one_which_sees_later_writes() -> None:
    """The running batch began before they arrived, so it may miss a write their
    clients saw acknowledged: they need a batch that starts later, one for all."""
    table = Table(trial(1, RUNNING), trial(2, RUNNING), trial(3, RUNNING))
    sizes: list[int] = []
    reads = TrialReads(table.load, on_batch=sizes.append)

    def write() -> None:  # committed after the running batch began
        table.rows[2] = trial(2, COMPLETE, value=5.0)

    first, later = behind_a_running_batch(reads, table, 1, [2, 3, 2], meanwhile=write)

    assert table.loads == [[1], [2, 3]]  # each id once in the batch
    assert sizes == [1, 3]
    assert first.row == trial(1, RUNNING)
    assert [r.row for r in later] == [trial(2, COMPLETE, 5.0), trial(3, RUNNING),
                                      trial(2, COMPLETE, 5.0)]


class CountedWakeUps(threading.Condition):
    """A condition that counts the waits it ends."""

    def __init__(self, lock: threading.Lock) -> None:
        super().__init__(lock)
        self.wake_ups = 0

    def wait(self, timeout: float | None = None) -> bool:
        woken = super().wait(timeout)
        self.wake_ups += 1
        return woken


def test_a_batch_that_ends_wakes_its_own_reads_and_one_of_the_next_not_every_queued_read(
) -> None:
    """Five reads queue behind a batch: one of them is woken to run the next batch
    and the other four when it ends, once each. Woken by the first batch's end as
    well, the four would wake during the next batch's load and wait again: nine."""
    table = Table(*(trial(i, RUNNING) for i in range(1, 7)))
    reads = TrialReads(table.load)
    counted = (CountedWakeUps(reads._lock), CountedWakeUps(reads._lock))  # noqa: SLF001
    reads._batch_done = counted  # noqa: SLF001
    first_batch = table.hold = threading.Event()
    readers = [Reader(reads, 1)]
    readers[0].start()
    assert wait_until(lambda: len(table.loads) == 1)
    readers += [Reader(reads, trial_id) for trial_id in range(2, 7)]
    for reader in readers[1:]:
        reader.start()
    assert wait_until(lambda: len(reads._queue) == 5)  # noqa: SLF001
    second_batch = table.hold = threading.Event()
    first_batch.set()
    assert wait_until(lambda: len(table.loads) == 2)
    time.sleep(0.1)  # time for reads woken in vain to wake, while the batch is held
    table.hold = None
    second_batch.set()
    for reader in readers:
        reader.join(10)

    assert [r.row for r in readers] == [trial(i, RUNNING) for i in range(1, 7)]
    assert table.loads == [[1], [2, 3, 4, 5, 6]]
    assert sum(c.wake_ups for c in counted) == 5


def test_a_long_queue_is_served_in_batches_of_at_most_max_batch() -> None:
    table = Table(*(trial(i) for i in range(1, 8)))
    reads = TrialReads(table.load, max_batch=3)
    _, queued = behind_a_running_batch(reads, table, 1, range(2, 8))

    assert [len(ids) for ids in table.loads] == [1, 3, 3]
    assert sorted(i for ids in table.loads for i in ids) == list(range(1, 8))
    assert [r.row for r in queued] == [trial(i) for i in range(2, 8)]


def test_a_failed_load_fails_every_read_of_its_batch_and_not_the_next() -> None:
    table = Table(trial(1), trial(2))
    reads = TrialReads(table.load)

    def fail() -> None:
        table.failure = ConnectionError("database went away")

    first, batch = behind_a_running_batch(reads, table, 1, [1, 2], meanwhile=fail)

    assert all(isinstance(r.error, ConnectionError) for r in (first, *batch))
    assert all(r.row is None for r in (first, *batch))
    table.failure = None
    assert reads.read(2) == trial(2)  # the next batch is a new try


def test_an_error_in_the_batch_callback_fails_the_reads_rather_than_hanging_them() -> None:
    def on_batch(size: int) -> None:
        raise RuntimeError("metrics broke")

    reads = TrialReads(Table(trial(1)).load, on_batch=on_batch)
    with pytest.raises(RuntimeError, match="metrics broke"):
        reads.read(1)
    assert not reads._running  # noqa: SLF001 - the next read can start a batch
