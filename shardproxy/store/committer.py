"""Group commit: writes from many threads, committed together in shared transactions.

While one transaction runs, the writes that arrive queue up; the next transaction
takes all of them (up to `max_batch`). Each caller waits for the commit that
carries its write and gets its own result or exception. A batch that fails as a
whole for a reason that is not transient (a row another writer inserted first,
say) is re-run one operation per transaction, so that the failure lands only on
the operation that caused it.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from shardproxy.store.operations import Operation
from shardproxy.store.retry import is_transient

_logger = logging.getLogger(__name__)

RunBatch = Callable[[list[Operation]], list[Any]]


class GroupCommitter:
    def __init__(self, run_batch: RunBatch, max_batch: int) -> None:
        self._run_batch = run_batch
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[Operation, Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="group-commit", daemon=True)
        self._thread.start()

    def submit(self, operation: Operation) -> Any:
        """Blocks until the operation's transaction committed; returns its result."""
        if self._closed:
            raise RuntimeError("the store is closed")
        future: Future[Any] = Future()
        self._queue.put((operation, future))
        return future.result()

    def close(self) -> None:
        """Commits what is queued, then stops the committing thread."""
        self._closed = True
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            stopping = False
            while len(batch) < self._max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                batch.append(more)
            self._commit(batch)
            if stopping:
                return

    def _commit(self, batch: list[tuple[Operation, Future[Any]]]) -> None:
        operations = [operation for operation, _ in batch]
        try:
            results = self._run_batch(operations)
        except Exception as exc:
            if len(batch) == 1 or is_transient(exc):
                # Retried up to the deadline already: retrying alone would not help.
                for _, future in batch:
                    future.set_exception(exc)
                return
            _logger.info("batch of %d failed (%s); isolating its operations", len(batch), exc)
            for item in batch:
                self._commit([item])
            return
        for (_, future), result in zip(batch, results, strict=True):
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
