"""Per-worker counters: what arrived, what was served here, what was forwarded.

Cheap enough for the request path (one lock, one integer add); read by tests, the
benchmarks and the log line a worker writes when it stops.
"""

from __future__ import annotations

import threading
from collections import Counter


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def get(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def summary(self) -> str:
        return ", ".join(f"{name}={count}" for name, count in sorted(self.snapshot().items()))
