"""Room for large replies in flight, taken from the worker's cache bound until they are sent.

A full read of a study of 25 000 trials is a reply of about 5 MiB: built as one
bytes object, copied by gRPC into a buffer of its own and held there until the
client has read it all; where the call was forwarded, the worker that relays it
holds the relayed bytes and gRPC's copy of them as well. None of that is in the
cache's count, and with a few full reads at once it came to more than the cache
itself (`bench/results/memory-soak-90s.md`: 2.4 times the bound, three readers).

So a reply of `LARGE_REPLY` bytes or more takes room in the worker's byte bound
(`StudyCaches.reserve`) for as long as its call lasts: twice its size, for the
reply and gRPC's copy of it. The owner takes it before it builds the reply, so
the cached studies are evicted to leave it, and a reply that does not fit beside
those already in flight waits for one of them to be sent (up to `ROOM_WAIT`). The
relaying worker takes it when the owner's reply arrives, without waiting: the bytes
are there already. The room is given back when the call ends: for a gRPC call once
gRPC has sent its reply (`context.add_callback`), for a forwarded call once its
frame is written.

Which call a thread is serving is the one `serve` runs on it; `hold` outside of
one (a service called in-process) takes no room, since nobody would give it back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

from shardproxy.study_caches import StudyCaches
from shardproxy.wire import METHOD_INDEX

# Replies below this size are not counted: a delta read's few trials, a single trial.
LARGE_REPLY = 256 * 1024
# The bytes a reply holds per byte of it while in flight: itself and gRPC's copy.
COPIES = 2
# How long a large reply waits for room before it goes anyway (see `StudyCaches.reserve`).
ROOM_WAIT = 5.0
# The methods whose replies can be large: only GetTrials reads a study in full.
LARGE_REPLY_METHODS = frozenset([METHOD_INDEX["GetTrials"]])

Release = Callable[[], None]
T = TypeVar("T")


class ReplyRoom:
    """Takes room for the large replies of the calls this worker serves."""

    def __init__(
        self,
        caches: StudyCaches,
        wait: float = ROOM_WAIT,
        on_waited: Callable[[float], None] | None = None,
    ) -> None:
        """`on_waited(seconds)`: told of each reply that waited for room (metrics)."""
        self._caches = caches
        self._wait = wait
        self._on_waited = on_waited
        self._calls = threading.local()  # .held: the bytes the thread's call holds

    def serve(self, handle: Callable[..., T], *args: object) -> tuple[T, Release | None]:
        """`handle(*args)` as one call: its result, and what gives back the room its
        reply holds (None: none held), to be called once that reply is sent. If
        `handle` raises, the room is given back before the exception goes on."""
        calls = self._calls
        calls.held = 0
        try:
            result = handle(*args)
        except BaseException:
            self._give_back(calls.held)
            raise
        finally:
            held, calls.held = calls.held, None
        if not held:
            return result, None
        return result, lambda: self._give_back(held)

    def hold(self, reply_bytes: int, study_id: int | None = None, wait: bool = True) -> None:
        """Counts a reply of `reply_bytes` against the bound until the call serving
        it ends: first evicting cached studies (except `study_id`, the one it is read
        from), and, with `wait`, waiting for replies in flight to leave room."""
        held = getattr(self._calls, "held", None)
        if held is None or reply_bytes < LARGE_REPLY:
            return
        room = COPIES * reply_bytes
        waited = self._caches.reserve(room, keep=study_id, wait=self._wait if wait else 0.0)
        self._calls.held = held + room
        if waited and self._on_waited is not None:
            self._on_waited(waited)

    def _give_back(self, nbytes: int) -> None:
        if nbytes:
            self._caches.unreserve(nbytes)
