"""GetTrial's reads of single unfinished trials, batched across the worker's studies.

A GetTrial for a trial the cache does not hold finished needs that trial as the
database has it now: another writer (another proxy, a direct RDBStorage user, a
heartbeat failer) may have changed it. Syncing the trial's study would do, but a
sync re-reads every unfinished trial of the study (one per busy client of it),
and a study with few clients shares few syncs: with 20 clients on each of 50
studies, every GetTrial read about 20 trials to answer for one.

So a GetTrial reads its own trial, and the reads that arrive while one batch runs
go together in the next: one statement for all of them, whatever their studies.
Single-flight like the cache's syncs: a read is answered by a batch that started
after it arrived, so a write acknowledged before the read is seen by it.

Where a sync of the study runs or is waited for, a GetTrial joins the next one
instead (`Service._get_trial`): a study that busy keeps its syncs going anyway, so
sharing one costs no statement of the GetTrial's own, where a batch of its own
would (eight Optuna clients on one study, MariaDB: 7.1–7.4 statements per trial
with every GetTrial read alone, 6.0 this way, 5.7–6.0 with every one syncing).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from shardproxy.rows import TrialRow

# load(trial_ids) -> the rows of those that exist, in any order.
LoadTrials = Callable[[Sequence[int]], list[TrialRow]]
# Told, as each batch starts, how many reads it serves (metrics); None: nobody listens.
OnBatch = Callable[[int], None] | None
# Reads per statement at most; a longer queue is served by the batches after.
MAX_BATCH = 256


class _Read:
    __slots__ = ("trial_id", "row", "error")

    def __init__(self, trial_id: int) -> None:
        self.trial_id = trial_id
        self.row: TrialRow | None = None
        self.error: BaseException | None = None


class TrialReads:
    """Reads of one trial each, one batch at a time; thread-safe."""

    def __init__(self, load: LoadTrials, on_batch: OnBatch = None,
                 max_batch: int = MAX_BATCH) -> None:
        self._load = load
        self._on_batch = on_batch
        self._max_batch = max_batch
        self._lock = threading.Lock()
        # A read waits on the condition of its batch's number's parity, as the
        # cache's syncs do: a batch that ends wakes its own reads and one read of
        # the next batch to run it, not every queued read (most of which would
        # only wait again). With more than a batch queued, the reads two batches
        # on share the parity and wake to wait again: rare, and still correct.
        self._batch_done = (threading.Condition(self._lock),
                            threading.Condition(self._lock))
        self._queue: list[_Read] = []  # arrived, not yet in a batch
        self._batches_started = 0
        self._batches_finished = 0

    @property
    def _running(self) -> bool:
        """Whether a batch runs: one at a time, so one started and not finished."""
        return self._batches_started > self._batches_finished

    def read(self, trial_id: int) -> TrialRow | None:
        """The trial as a batch that started after this call read it; None if it
        does not exist. Raises whatever the database raised for that batch."""
        read = _Read(trial_id)
        with self._lock:
            # The queue is served from its front, max_batch at a time, so the
            # batch that takes this read is known as it arrives.
            needed = self._batches_started + 1 + len(self._queue) // self._max_batch
            done = self._batch_done[needed % 2]
            self._queue.append(read)
            while self._batches_finished < needed:
                if self._running:
                    done.wait()
                else:
                    self._run_batch()
        if read.error is not None:
            raise read.error
        return read.row

    def _run_batch(self) -> None:
        """Runs the queue's first batch; called and returns with the lock held."""
        batch = self._queue[:self._max_batch]
        del self._queue[:self._max_batch]
        self._batches_started += 1
        number = self._batches_started
        self._lock.release()
        rows: dict[int, TrialRow] = {}
        error: BaseException | None = None
        try:
            if self._on_batch is not None:
                self._on_batch(len(batch))
            rows = {row.trial_id: row for row in self._load(
                sorted({read.trial_id for read in batch}))}
        except BaseException as exc:  # handed to every read of the batch
            error = exc
        finally:
            self._lock.acquire()
            for read in batch:
                read.row = rows.get(read.trial_id)
                read.error = error
            self._batches_finished = number
            self._batch_done[number % 2].notify_all()
            if self._queue:
                self._batch_done[(number + 1) % 2].notify()
