"""A worker's memory: the garbage collector kept out of a large read, freed memory given back.

A study's first read builds objects for every trial at once; the cyclic garbage
collector, triggered by allocations, would walk them again and again as they pile
up, though none of them is garbage yet. And once the read's transients are freed,
glibc keeps the freed C heap unless asked to return it.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Iterator


def trim_c_heap() -> None:
    """Returns the C heap's free memory to the system, where the C library can (glibc)."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):
        return
    trim(0)


# Threads in `collector_paused`, and whether the collector ran before the first came.
_paused_lock = threading.Lock()
_paused_threads = 0
_was_enabled = False


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """The cyclic garbage collector off while any thread is inside; it was on before
    the first came in, it is on again when the last goes out."""
    global _paused_threads, _was_enabled
    with _paused_lock:
        if _paused_threads == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _paused_threads += 1
    try:
        yield
    finally:
        with _paused_lock:
            _paused_threads -= 1
            if _paused_threads == 0 and _was_enabled:
                gc.enable()
