"""Calls released together on threads of their own, for tests of concurrent stores."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def in_lockstep(count: int, call: Callable[[int], Any]) -> list[Any]:
    """Runs call(0..count-1) on as many threads released together; outcome per call
    (its result, or the exception it raised)."""
    barrier = threading.Barrier(count)

    def run(index: int) -> Any:
        barrier.wait()
        try:
            return call(index)
        except Exception as exc:  # the outcome under test
            return exc

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(run, range(count)))
