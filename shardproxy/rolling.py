"""The rolling restart's state: shards left to replace, the shard being handed over, the retiring.

Rolling restart (SIGHUP, as gunicorn's HUP): the standbys, which imported the old
code, are told to stop; then one shard at a time, a new process is spawned (it
imports the package afresh from disk), binds the shared port and takes over the
shard's forwarding socket, and only once it reported ready is the old process told
to go (SIGHUP: it lets its clients leave before it drains, see `handover`); the
next shard's replacement starts meanwhile. The old one keeps serving its
connections and the forwarded requests already on its socket until then. A
replacement that fails to start ends the reload and the old worker keeps its
shard.

The supervisor moves the reload on; this module keeps what it has to remember in
between, and the processes told to stop, each killed at its deadline.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable

from shardproxy.processes import Child, describe

_logger = logging.getLogger(__name__)


class RollingRestart:
    """What a reload has left to do, and the processes it told to stop."""

    def __init__(self) -> None:
        self._queue: list[int] = []  # shards yet to be replaced
        # Shard -> its old process, serving until its replacement is ready.
        self._handover: dict[int, Child] = {}
        # Told to stop, each with the time it is killed at.
        self._retiring: list[tuple[Child, float]] = []
        self._lock = threading.Lock()  # the admin endpoint's thread reads the tables

    @property
    def in_progress(self) -> bool:
        """Whether shards are left to replace, or one is being handed over."""
        with self._lock:
            return bool(self._queue or self._handover)

    def begin(self, shards: int) -> None:
        with self._lock:
            self._queue = list(range(shards))

    def cancel(self) -> None:
        """Replaces no more shards; a handover under way is finished or undone as usual."""
        with self._lock:
            self._queue.clear()

    @property
    def queued(self) -> bool:
        with self._lock:
            return bool(self._queue)

    def hand_over_next(self, current: dict[int, Child]) -> int | None:
        """The next shard to replace, its current process noted as the old one; None if
        none is left or a handover is still under way."""
        with self._lock:
            if not self._queue or self._handover:
                return None
            shard = self._queue.pop(0)
            self._handover[shard] = current[shard]
            return shard

    def old_process(self, shard: int) -> Child | None:
        """The process `shard` is being taken over from, if a handover is under way."""
        with self._lock:
            return self._handover.get(shard)

    def end_handover(self, shard: int) -> Child | None:
        """Ends `shard`'s handover (taken over, failed, or the old process died);
        returns the old process."""
        with self._lock:
            return self._handover.pop(shard, None)

    def handovers(self) -> dict[int, Child]:
        with self._lock:
            return dict(self._handover)

    def retire(self, child: Child, signum: int, timeout: float) -> None:
        """Tells a process to stop; it is killed if it has not exited within `timeout`."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signum)
        with self._lock:
            self._retiring.append((child, time.monotonic() + timeout))

    def retiring(self) -> list[Child]:
        with self._lock:
            return [child for child, _ in self._retiring]

    def next_deadline(self) -> float | None:
        """The earliest time a retiring process is due to be killed."""
        with self._lock:
            return min((deadline for _, deadline in self._retiring), default=None)

    def reap_retiring(self, release: Callable[[Child], None], *, quiet: bool = False) -> None:
        """Releases retired processes that exited; kills those past their deadline.
        `quiet`: while stopping, an exit code is not worth a warning."""
        now = time.monotonic()
        with self._lock:
            entries = list(self._retiring)
        for entry in entries:
            child, deadline = entry
            if child.exited:
                with self._lock:
                    self._retiring.remove(entry)
                assert child.process.exitcode is not None
                if child.process.exitcode != 0 and not quiet:
                    _logger.warning(
                        "pid %d %s while it drained", child.pid, describe(child.process.exitcode)
                    )
                release(child)
            elif now >= deadline and not quiet:
                _logger.warning("pid %d did not stop in time; killing it", child.pid)
                child.process.kill()
                with self._lock:  # killed once; reaped on a following pass
                    self._retiring[self._retiring.index(entry)] = (child, float("inf"))

    def remove_all(self) -> list[Child]:
        """Forgets the whole reload; returns every process it still held."""
        with self._lock:
            children = [*self._handover.values(), *(child for child, _ in self._retiring)]
            self._queue, self._handover, self._retiring = [], {}, []
        return children
