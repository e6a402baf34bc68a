"""A worker's memory: the garbage collector kept out of a large read, freed memory given back.

A study's first read builds objects for every trial at once; the cyclic garbage
collector, triggered by allocations, would walk them again and again as they pile
up, though none of them is garbage yet. And once the read's transients are freed,
glibc keeps the freed C heap unless asked to return it.

Large allocations (a full read's reply, its copy in gRPC, the packed blobs) should
each get pages of their own, returned to the system when freed. glibc does that
above its mmap threshold, but raises the threshold to the size of each such block
freed, up to 32 MiB: after the first full read of a large study, replies of
megabytes come from the heaps of the threads' arenas, where a freed block stays
resident for as long as anything allocated after it lives. `keep_large_blocks_apart`
pins the threshold.

And glibc gives each thread that allocates a heap of its own (an arena), keeping
what is freed there for that heap's next allocations: first reads served by
whichever handler threads took them would leave their churn resident in the heaps
of all of them. They run on one thread instead (`on_loading_thread`).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


def _c_function(name: str) -> Callable[..., Any] | None:
    """The C library's function of that name, None where it has none (glibc's own)."""
    try:
        return getattr(ctypes.CDLL(None), name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def trim_c_heap() -> None:
    """Returns the C heap's free memory to the system, where the C library can (glibc)."""
    trim = _c_function("malloc_trim")
    if trim is not None:
        trim(0)


# glibc's mallopt parameter (malloc.h), and the threshold glibc itself starts with.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 128 * 1024


def keep_large_blocks_apart() -> bool:
    """Allocations of MMAP_THRESHOLD bytes or more get pages of their own, always.

    Setting the threshold switches glibc's raising of it off (mallopt(3)). Measured
    in the memory soak (`python -m bench.memory --parts soak`, a 32 MiB bound, 60 s):
    the proxy tree grew 4.8 times the bound without, 2.9 times with. False where the
    C library has no mallopt (not glibc): nothing changed."""
    mallopt = _c_function("mallopt")
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD))


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


# The thread that runs a process's first reads (`on_loading_thread`), started by the first.
_loading = ThreadPoolExecutor(max_workers=1, thread_name_prefix="first-read")


def on_loading_thread(load: Callable[[], T]) -> T:
    """Runs `load` (a study's first read) on the process's one loading thread and
    waits for it; returns what it returns, raises what it raises.

    What a first read churns through (the driver's rows, each chunk's transients)
    is then allocated and freed in one C heap, where the next first read reuses it,
    rather than in the heap of each handler thread that happened to take one.
    Measured in the memory soak (`python -m bench.memory --parts soak`: a 32 MiB
    bound, three clients reading studies of 25 000 trials in full, MariaDB): the
    proxy grew 0.87 and 0.91 times the bound against 1.53 and 1.58 with first reads
    on the handler threads, and served 110 and 124 full reads in 90 s against 80
    and 77. First reads in one process go one at a time: the rows they assemble
    are Python work, which the interpreter's lock serializes anyway; a small
    study's first read waits for a large one running."""
    return _loading.submit(load).result()
