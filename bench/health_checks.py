"""Health checks sent to a proxy while it is loaded: how long a probe waits for its answer.

A balancer's or Kubernetes' probe opens a connection, calls
`grpc.health.v1.Health/Check` and gives up at its timeout (one second by default
in Kubernetes). `HealthChecks` does the same from a thread of the benchmark, one
check at a time, a new channel each, every `INTERVAL` seconds while the load
runs, with a timeout long enough to see how long an answer really takes.
"""

from __future__ import annotations

import threading
import time
from types import TracebackType
from typing import Any

from bench.stats import percentile
from shardproxy.health import ask_health

INTERVAL = 0.5  # seconds from one check's end to the next one's start
TIMEOUT = 60.0  # seconds a check may take before it counts as not answered


class HealthChecks:
    """Checks of `target`'s overall health from `start` (or entering) to `stop`."""

    def __init__(self, target: str) -> None:
        self._target = target
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="health-checks", daemon=True)
        self.seconds: list[float] = []  # of every check that came back SERVING
        self.other: dict[str, int] = {}  # what the rest came back with: status or gRPC code

    def __enter__(self) -> HealthChecks:
        self._thread.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._stop.set()
        self._thread.join(TIMEOUT + 5)

    def figures(self) -> dict[str, Any]:
        """Checks answered SERVING, the seconds they took, and what the others got."""
        times = sorted(self.seconds)
        return {
            "serving": len(times),
            "p50_s": percentile(times, 50) if times else None,
            "p99_s": percentile(times, 99) if times else None,
            "max_s": times[-1] if times else None,
            "other": dict(self.other),
        }

    def _run(self) -> None:
        while not self._stop.wait(INTERVAL):
            started = time.monotonic()
            outcome = ask_health(self._target, TIMEOUT).name  # a new connection each
            if outcome == "SERVING":
                self.seconds.append(time.monotonic() - started)
            else:
                self.other[outcome] = self.other.get(outcome, 0) + 1

