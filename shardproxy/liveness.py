"""The supervisor's side of the watchdog: reading each worker's beats and readiness.

A worker records in its status slot when it is ready, whether it still serves,
whether its database answers, and when its own request handlers last answered a
watchdog beat (`watchdog` is the worker's side). From those this module tells the
admin endpoint why a worker is not ready, and kills the workers whose beat is older
than `--watchdog-timeout` (the supervisor then restarts them as it restarts any
fallen worker).

A worker whose database does not answer is given longer: its handlers wait for
the database, and a new process would wait the same. And if the supervisor itself
did not run for a while (the machine stalled: a paused VM, swapping), it saw no
beats either, so every worker gets a whole timeout from then.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from shardproxy.child import WorkerStatus
from shardproxy.processes import Child

_logger = logging.getLogger(__name__)

# How often a worker proves its handlers answer, at most: a beat is one tiny RPC.
_MAX_BEAT_INTERVAL = 1.0
# While a worker reports that its database does not answer, its handlers wait for
# the database, so the watchdog gives it this many times its timeout before it kills it.
_DATABASE_DOWN_PATIENCE = 4.0
# A pass of the supervisor this much later than the last one means the supervisor
# did not run: the machine stalled.
_STALL = 2.0


class Liveness:
    """Judges workers by their status slots; `timeout` None: the watchdog is off."""

    def __init__(self, status: WorkerStatus, timeout: float | None) -> None:
        self.status = status
        self.timeout = timeout
        self._last_watch = time.monotonic()  # the last pass of `stale`
        self._watch_from = 0.0  # beats older than this count from this instead
        self.killed: set[int] = set()  # pids killed for a stale beat, until released

    @property
    def beat_interval(self) -> float | None:
        """How often a worker should beat: a few beats per timeout."""
        if self.timeout is None:
            return None
        return min(_MAX_BEAT_INTERVAL, self.timeout / 4)

    def start_watching(self) -> None:
        self._last_watch = time.monotonic()

    def unready_reason(self, slot: int, now: float) -> str | None:
        """Why the process in `slot` should not get clients; None when it should.

        Ready: it reported ready, has not begun to drain, reaches its database and
        (with the watchdog on) beat lately: its handlers began calls or answered a beat.
        """
        status = self.status
        if not status.is_ready(slot):
            return "starting"
        if not status.is_serving(slot):
            return "draining"
        if not status.database_answers(slot):
            return "its database does not answer"
        silent = now - status.last_beat(slot)
        if self.timeout is not None and silent > self.timeout / 2:
            return (f"its request handlers began no call and answered no watchdog beat "
                    f"for {silent:.1f} s")
        return None

    def problems(self, shards: dict[int, list[int]]) -> list[str]:
        """Why shards are not ready, one line each; empty when all are.

        `shards`: shard → the slots of its processes, its current one last (during a
        reload's handover, the old one first). A shard is ready when one of them is.
        """
        now = time.monotonic()
        found = []
        for shard, slots in shards.items():
            reasons = [self.unready_reason(slot, now) for slot in slots]
            if None not in reasons:
                found.append(f"worker {shard}: {reasons[-1] if reasons else 'not running'}")
        return found

    def states(self, shards: dict[int, int | None]) -> dict[int, tuple[bool, float | None]]:
        """Shard → (ready, seconds since its last beat, None before it is ready), from
        shard → the slot of its current process (None: none running)."""
        now = time.monotonic()
        states: dict[int, tuple[bool, float | None]] = {}
        for shard, slot in shards.items():
            if slot is None or not self.status.is_ready(slot):
                states[shard] = (False, None)
            else:
                ready = self.unready_reason(slot, now) is None
                states[shard] = (ready, now - self.status.last_beat(slot))
        return states

    def stale(self, slots: Iterable[int]) -> dict[int, float]:
        """Of `slots`, those whose beat is too old to wait for, with their silence in seconds."""
        if self.timeout is None:
            return {}
        now = time.monotonic()
        if now - self._last_watch > _STALL:
            _logger.warning(
                "the supervisor did not run for %.1f s; the watchdog starts over",
                now - self._last_watch,
            )
            self._watch_from = now
        self._last_watch = now
        found = {}
        for slot in slots:
            silent = now - max(self.status.last_beat(slot), self._watch_from)
            allowed = self.timeout
            if not self.status.database_answers(slot):
                allowed *= _DATABASE_DOWN_PATIENCE
            if silent > allowed:
                found[slot] = silent
        return found

    def kill_stale(self, watched: list[tuple[int, Child]]) -> None:
        """Kills the processes of `watched` (shard, process) whose beat is stale; the
        supervisor reaps and restarts each on a following pass."""
        candidates = {c.slot: (shard, c) for shard, c in watched if c.pid not in self.killed}
        for slot, silent in self.stale(candidates).items():
            shard, child = candidates[slot]
            _logger.error(
                "worker %d (pid %d): its request handlers began no call and answered no "
                "watchdog beat for %.1f s; killing it",
                shard,
                child.pid,
                silent,
            )
            self.killed.add(child.pid)
            child.process.kill()
