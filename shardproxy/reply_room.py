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
relaying worker takes room for a full read before it forwards the call, as much
as the study's last full read it relayed, waiting as the owner does; what the
reply brings beyond that it takes without waiting once it is there. The room is
given back when the call ends: for a gRPC call once gRPC has sent its reply
(`context.add_callback`), for a forwarded call once its frame is written.

Which call a thread is serving is the one `serve` runs on it; `hold` outside of
one (a service called in-process) takes no room, since nobody would give it back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
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
# Studies whose last relayed full read a worker remembers the size of, at most.
REMEMBERED_STUDIES = 4096
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
        self._sizes_lock = threading.Lock()
        # study id -> bytes of its last full read relayed here, least recent first
        self._full_read_sizes: OrderedDict[int, int] = OrderedDict()

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

    def hold(self, reply_bytes: int, study_id: int | None = None) -> None:
        """Counts a reply about to be built, of `reply_bytes`, against the bound until
        the call serving it ends: evicting cached studies (except `study_id`, the one
        it is read from), and waiting for replies in flight to leave room."""
        if reply_bytes >= LARGE_REPLY:
            self._take(reply_bytes, study_id, wait=True)

    def relay(self, study_id: int, full_read: bool, fetch: Callable[[], bytes]) -> bytes:
        """The reply `fetch()` brings from the study's owner, held as `hold` holds
        one. For a full read, room as large as the last full read of the study
        relayed here is taken before `fetch` runs (waiting as the owner does), so
        that relayed replies too wait for room rather than pile up; the rest once
        the reply is here."""
        expected = self._last_full_read(study_id) if full_read else 0
        if expected < LARGE_REPLY:
            expected = 0
        if expected:
            self._take(expected, None, wait=True)
        reply = fetch()
        if full_read:
            self._remember_full_read(study_id, len(reply))
        if len(reply) >= LARGE_REPLY and len(reply) > expected:
            self._take(len(reply) - expected, None, wait=False)  # it is here already
        return reply

    def _take(self, reply_bytes: int, study_id: int | None, wait: bool) -> None:
        held = getattr(self._calls, "held", None)
        if held is None:  # not within a call: nobody would give it back
            return
        room = COPIES * reply_bytes
        waited = self._caches.reserve(room, keep=study_id, wait=self._wait if wait else 0.0)
        self._calls.held = held + room
        if waited and self._on_waited is not None:
            self._on_waited(waited)

    def _last_full_read(self, study_id: int) -> int:
        with self._sizes_lock:
            return self._full_read_sizes.get(study_id, 0)

    def _remember_full_read(self, study_id: int, size: int) -> None:
        with self._sizes_lock:
            self._full_read_sizes[study_id] = size
            self._full_read_sizes.move_to_end(study_id)
            if len(self._full_read_sizes) > REMEMBERED_STUDIES:
                self._full_read_sizes.popitem(last=False)

    def _give_back(self, nbytes: int) -> None:
        if nbytes:
            self._caches.unreserve(nbytes)
