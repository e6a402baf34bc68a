"""The owner's side of shardproxy's own service (proto/client_extension.proto).

Like `service` for Optuna's 19 RPCs: the front decoded the request and found its
study, which this worker owns. Heartbeats and the keyed ("Once") writes go to the
store's group commit; stale trials are read from the database, whose clock
decides, as RDBStorage's does. Optuna asks for them before every trial: in a
study the cache holds READ_WHOLE_BELOW trials or more of, they are looked up among
its unfinished trials as a sync of the cache finds them, rather than by reading
the study, O(study) each time.

A keyed write is applied at most once per key (see `store.request_keys`). A
repeat that arrives while the first call with its key is still in this worker
(the client lost the connection to a front, not the owner) waits for that call
and gets its answer; a repeat after the owner restarted finds the key's row.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from shardproxy import codec
from shardproxy.extension_wire import (
    decode_heartbeat_request,
    decode_once_request,
    decode_stale_request,
    encode_stale_reply,
)
from shardproxy.rows import STATE_NAMES, TrialRow
from shardproxy.store import Store
from shardproxy.study_caches import StudyCaches


def decode_create_new_trial_once(data: bytes) -> tuple[Any, ...]:
    """(study id, template, key, repeated): the study first, as the front routes by it."""
    key, repeated, inner = decode_once_request(data)
    study_id, template = codec.decode_create_new_trial_request(inner)
    return study_id, template, key, repeated


def decode_set_trial_state_values_once(data: bytes) -> tuple[Any, ...]:
    """(trial id, state, values, key, repeated): the trial first."""
    key, repeated, inner = decode_once_request(data)
    trial_id, state, values = codec.decode_set_trial_state_values_request(inner)
    return trial_id, state, values, key, repeated


# In the order of extension_wire.EXTENSION_METHODS.
DECODERS: tuple[Callable[[bytes], tuple[Any, ...]], ...] = (
    decode_heartbeat_request,
    decode_stale_request,
    decode_create_new_trial_once,
    decode_set_trial_state_values_once,
)


_KEPT_ANSWERS = 1024

# Stale trials of a study the cache holds fewer trials of than this are read from
# the study whole: one statement, cheaper there than a sync and a lookup by id
# (0.3 against 1.2 ms at 1 000 trials on MariaDB; the two meet near 10 000 on the
# servers and 3 000 on SQLite, `bench/results/stale-trials.md`).
READ_WHOLE_BELOW = 2_000


class _InFlight:
    """The keyed calls this worker is applying, by key, and their answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._calls: dict[str, threading.Event] = {}
        # The latest answers, for repeats that waited on a call (a few are enough:
        # a waiter reads its answer right after the call ends).
        self._answers: OrderedDict[str, tuple[bool, Any]] = OrderedDict()

    def run(self, key: str, call: Callable[[], Any]) -> Any:
        with self._lock:
            running = self._calls.get(key)
            if running is None:
                done = self._calls[key] = threading.Event()
        if running is not None:
            # The same call arrived again while its first copy runs here: its answer.
            running.wait()
            with self._lock:
                answered = self._answers.get(key)
            if answered is not None:
                ok, value = answered
                if ok:
                    return value
                raise value
            return self.run(key, call)  # answered and forgotten: the key's row decides
        try:
            result = call()
            answer: tuple[bool, Any] = (True, result)
            return result
        except BaseException as exc:
            answer = (False, exc)
            raise
        finally:
            with self._lock:
                self._answers[key] = answer
                if len(self._answers) > _KEPT_ANSWERS:
                    self._answers.popitem(last=False)
                del self._calls[key]
            done.set()


class ClientExtension:
    """Answers the extension's decoded requests for the studies this process owns."""

    def __init__(
        self, store: Store, caches: StudyCaches,
        after_commit: Callable[[str, bool], None] | None = None,
    ) -> None:
        """`after_commit(key, repeated)`: a test's fault hook, between commit and reply."""
        self._store = store
        self._caches = caches
        self._in_flight = _InFlight()
        self._after_commit = after_commit
        self._handlers: tuple[Callable[..., bytes], ...] = (
            self._record_heartbeat,
            self._get_stale_trial_ids,
            self._create_new_trial_once,
            self._set_trial_state_values_once,
        )

    def call(self, index: int, args: tuple[Any, ...]) -> bytes:
        """The reply bytes for one decoded request; `index` in EXTENSION_METHODS."""
        return self._handlers[index](*args)

    def _record_heartbeat(self, study_id: int, trial_id: int) -> bytes:
        self._store.record_heartbeat(trial_id)
        return b""

    def _get_stale_trial_ids(self, study_id: int, grace_period: float) -> bytes:
        cache = self._caches.held(study_id)
        if cache is None or len(cache) < READ_WHOLE_BELOW:
            # Small, or not cached here: reading the study is one statement.
            return encode_stale_reply(self._store.stale_trial_ids(study_id, grace_period))
        # A sync that started after this call: every trial RUNNING before it is
        # among the unfinished ones it leaves (trials committed after it have just
        # begun, and beat, if at all, within the grace period).
        unfinished = self._caches.synced(study_id).unfinished_ids()
        return encode_stale_reply(
            self._store.stale_trial_ids(study_id, grace_period, among=unfinished))

    def _create_new_trial_once(
        self, study_id: int, template: TrialRow | None, key: str, repeated: bool
    ) -> bytes:
        if template is not None and not 0 <= template.state < len(STATE_NAMES):
            raise ValueError(f"unknown trial state {template.state}")

        def create() -> int:
            return self._store.create_new_trial_once(study_id, template, key, repeated)

        trial_id = self._in_flight.run(key, create)
        if self._after_commit is not None:
            self._after_commit(key, repeated)
        return codec.encode_id_reply(trial_id)

    def _set_trial_state_values_once(
        self, study_id: int, trial_id: int, state: int, values: list[float], key: str,
        repeated: bool,
    ) -> bytes:
        if not 0 <= state < len(STATE_NAMES):
            raise ValueError(f"unknown trial state {state}")

        def change() -> bool:
            return self._store.set_trial_state_values_once(
                trial_id, state, values or None, key, repeated
            )

        updated = self._in_flight.run(key, change)
        if self._after_commit is not None:
            self._after_commit(key, repeated)
        return codec.encode_bool_reply(updated)
