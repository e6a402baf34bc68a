"""Standbys: processes booted ahead of need, so a fallen worker is replaced in a moment.

A spawned interpreter spends most of a second importing and connecting before it
can serve. Once all workers are ready the supervisor keeps `--standbys` extra
processes that have prepared (see `child`) and wait for a shard index; a fallen
worker is replaced by a standby (and a new standby is spawned behind it), so a
restart costs only the worker's shard-specific set-up. The idea is the spare
servers of Apache's prefork and PHP-FPM; there is still no fork.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from shardproxy.processes import Child, Processes, describe

_logger = logging.getLogger(__name__)

# A standby that died unused is replaced only after this pause: one that cannot even
# import must not be respawned in a hot loop (meanwhile a restart starts cold).
RETRY_PAUSE = 5.0


class Standbys:
    """Up to `size` prepared processes waiting for a shard, the oldest used first."""

    def __init__(self, size: int, processes: Processes, spawn: Callable[[], Child]) -> None:
        """`spawn()` starts one standby process."""
        if size < 0:
            raise ValueError(f"standbys must not be negative, got {size}")
        self.size = size
        self._processes = processes
        self._spawn = spawn
        self._waiting: list[Child] = []  # oldest first
        self._lock = threading.Lock()  # the admin endpoint's thread reads the list
        # When to start the missing standbys; None: not now (none missing, or while
        # the workers boot: standbys booting beside them would slow their start).
        self.due: float | None = None

    def pids(self) -> list[int]:
        with self._lock:
            return [child.pid for child in self._waiting]

    def children(self) -> list[Child]:
        with self._lock:
            return list(self._waiting)

    def fill_after(self, delay: float = 0.0) -> None:
        """Starts the missing standbys `delay` seconds from now (at the next `start_due`)."""
        self.due = time.monotonic() + delay

    def take(self, shard: int) -> Child | None:
        """The oldest standby, told its shard; None when no standby is left."""
        while True:
            with self._lock:
                if not self._waiting:
                    return None
                child = self._waiting.pop(0)
            assert child.assignment is not None
            try:
                child.assignment.send(shard)
                self.fill_after()  # its replacement
                return child
            except OSError:  # it died a moment ago and cannot take the shard
                child.process.kill()
                child.process.join(5.0)
                self._processes.release(child)
            finally:
                if child.assignment is not None:
                    child.assignment.close()
                    child.assignment = None

    def start_due(self) -> None:
        """Starts standbys up to `size` if their time has come and slots are free."""
        if self.due is None or time.monotonic() < self.due:
            return
        self.due = None
        while self._processes.has_free_slot:
            with self._lock:
                if len(self._waiting) >= self.size:
                    return
            child = self._spawn()
            with self._lock:
                self._waiting.append(child)
            _logger.debug("standby started (pid %d)", child.pid)

    def reap(self, *, stopping: bool) -> None:
        """Releases standbys that exited; unless stopping, schedules their replacement."""
        for child in self.children():
            if not child.exited:
                continue
            with self._lock:
                self._waiting.remove(child)
            if not stopping:
                assert child.process.exitcode is not None
                _logger.warning(
                    "standby (pid %s) %s before it was needed; another starts in %.0f s",
                    child.pid,
                    describe(child.process.exitcode),
                    RETRY_PAUSE,
                )
                self.fill_after(RETRY_PAUSE)
            self._processes.release(child)

    def remove_all(self) -> list[Child]:
        """Takes every standby out of the pool (to retire or kill them), none due."""
        with self._lock:
            children, self._waiting = self._waiting, []
        self.due = None
        return children
