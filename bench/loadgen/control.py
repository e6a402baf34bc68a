"""What the runner hands each load process: its configuration and the runner's hold on it.

Both kinds of load process (`process.generator_main`, `real.real_clients_main`) take
one `ClientProcessSpec` and follow the same handshake with the runner
(`bench.loads`): set `loaded` once connected, start trials at `go`, stop starting new
ones at `stop`, put one report on `results`, then wait for `release` so that the
runner can read the process's CPU time while it still lives.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from multiprocessing.queues import Queue
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from typing import Generic, TypeVar

ConfigT = TypeVar("ConfigT")

# Seconds a reported process waits for the runner's release before exiting anyway.
RELEASE_LIMIT = 600.0


@dataclass(frozen=True)
class ClientProcessSpec(Generic[ConfigT]):
    """One load process: what it runs (`config`) and its signals to and from the runner.

    Passed whole as the spawned process's argument: the events, the progress value
    and the queue are multiprocessing objects, which pickle only while a process is
    being started.
    """

    config: ConfigT
    cpus: tuple[int, ...] | None  # CPUs to pin the process to; None: any
    loaded: Event  # set by the process once connected and ready
    go: Event  # set by the runner: the measured window opens
    stop: Event  # set by the runner: start no new trial
    release: Event  # set by the runner once it has read the process's counters
    progress: Synchronized  # trials completed so far, for the progress line
    results: Queue  # one ("ok" | "error", pid, payload) per process

    def pin(self) -> None:
        """Pins this process to `cpus`, when given."""
        if self.cpus:
            os.sched_setaffinity(0, self.cpus)

    def report(self, status: str, payload: object) -> None:
        self.results.put((status, os.getpid(), payload))

    def wait_release(self) -> None:
        self.release.wait(timeout=RELEASE_LIMIT)
