"""The front role of a worker: decode a request once, find its study, serve or forward it.

Every worker terminates client gRPC on the shared port, but a study's cache, sync
and write batching live in one worker only, its owner. The front decodes each
request into its fields, asks the router which study it touches and which shard
owns that study, and then either hands the decoded fields to this worker's service
or forwards the client's raw bytes to the owner over `forwarding`, relaying the
raw reply.

A request is decoded once per worker it passes through: here, and once more by
the owner's front when it was forwarded (the channel carries bytes, not objects).
The service never decodes.

Which study a request touches: a study-scoped request names its study first; a
trial-scoped one names its trial first, and the router knows the trial's study.
Requests without a study (create a study, find one by name, list all) are served
where they arrive.
"""

from __future__ import annotations

import enum
import logging
import struct
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import grpc
import sqlalchemy.exc

from shardproxy import codec
from shardproxy.errors import ANSWERED_ERRORS, StatusError, status_error
from shardproxy.extension import DECODERS as EXTENSION_DECODERS
from shardproxy.extension import ClientExtension
from shardproxy.extension_wire import EXTENSION_INDEX
from shardproxy.metrics import Metrics
from shardproxy.reply_room import LARGE_REPLY_METHODS, ReplyRoom
from shardproxy.routing import Router
from shardproxy.service import Service
from shardproxy.wire import METHOD_INDEX, METHODS

_logger = logging.getLogger(__name__)


class Scope(enum.Enum):
    NONE = "served where it arrives"
    STUDY = "names its study first"
    TRIAL = "names its trial first"


def _fields(decode: Callable[[bytes], Any]) -> Callable[[bytes], tuple[Any, ...]]:
    """A decoder of a one-field request, returning the field as a 1-tuple."""
    return lambda data: (decode(data),)


# How to read each request: its decoder (to a tuple of fields) and what it names first.
_REQUESTS: dict[str, tuple[Callable[[bytes], tuple[Any, ...]], Scope]] = {
    "CreateNewStudy": (codec.decode_create_new_study_request, Scope.NONE),
    "DeleteStudy": (_fields(codec.decode_id_request), Scope.STUDY),
    "SetStudyUserAttribute": (codec.decode_attr_request, Scope.STUDY),
    "SetStudySystemAttribute": (codec.decode_attr_request, Scope.STUDY),
    "GetStudyIdFromName": (_fields(codec.decode_name_request), Scope.NONE),
    "GetStudyNameFromId": (_fields(codec.decode_id_request), Scope.STUDY),
    "GetStudyDirections": (_fields(codec.decode_id_request), Scope.STUDY),
    "GetStudyUserAttributes": (_fields(codec.decode_id_request), Scope.STUDY),
    "GetStudySystemAttributes": (_fields(codec.decode_id_request), Scope.STUDY),
    "GetAllStudies": (lambda data: codec.decode_empty_request(data) or (), Scope.NONE),
    "CreateNewTrial": (codec.decode_create_new_trial_request, Scope.STUDY),
    "SetTrialParameter": (codec.decode_set_trial_param_request, Scope.TRIAL),
    "GetTrialIdFromStudyIdTrialNumber": (codec.decode_trial_number_request, Scope.STUDY),
    "SetTrialStateValues": (codec.decode_set_trial_state_values_request, Scope.TRIAL),
    "SetTrialIntermediateValue": (
        codec.decode_set_trial_intermediate_value_request, Scope.TRIAL
    ),
    "SetTrialUserAttribute": (codec.decode_attr_request, Scope.TRIAL),
    "SetTrialSystemAttribute": (codec.decode_attr_request, Scope.TRIAL),
    "GetTrial": (_fields(codec.decode_id_request), Scope.TRIAL),
    "GetTrials": (codec.decode_get_trials_request, Scope.STUDY),
}
# shardproxy's own service (`extension`), numbered after Optuna's methods: what each
# request names first.
_EXTENSION_SCOPES = (Scope.TRIAL, Scope.STUDY, Scope.STUDY, Scope.TRIAL)
_CREATE_NEW_TRIAL = METHOD_INDEX["CreateNewTrial"]
_CREATE_NEW_TRIAL_ONCE = EXTENSION_INDEX["CreateNewTrialOnce"]
_DELETE_STUDY = METHOD_INDEX["DeleteStudy"]
_GET_TRIAL = METHOD_INDEX["GetTrial"]
# Reads, and heartbeats (a heartbeat sent twice records what it records once): safe
# to forward again when the owner went away mid-call, and to stop waiting for.
_REPEATABLE = frozenset(
    [index for index, name in enumerate(METHODS) if name.startswith("Get")]
    + [EXTENSION_INDEX["GetStaleTrialIds"], EXTENSION_INDEX["RecordHeartbeat"]]
)
_OPTUNA_METHODS = len(METHODS)
# Not an RPC: a worker tells the others that a study id now names another study
# (SQLite reuses a deleted study's id), so that they forget its trials. Negative, so
# that no method index can ever take it.
FORGET_STUDY = -1
_STUDY_ID = struct.Struct("<q")
_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class Forwarder(Protocol):
    """The client end of the forwarding channel to one other worker."""

    def call(
        self, method_index: int, request: bytes, timeout: float | None
    ) -> tuple[int, bytes]: ...


class Front:
    """Serves a request here when this worker owns its study, else forwards it."""

    def __init__(
        self,
        service: Service,
        router: Router,
        forwarders: Sequence[Forwarder | None],
        metrics: Metrics,
        read_timeout: float,
        room: ReplyRoom,
        extension: ClientExtension | None = None,
    ) -> None:
        """`forwarders[shard]` reaches that shard's worker (None for this one);
        `extension` answers shardproxy's own service (method indices after Optuna's).

        `read_timeout`: how long a forwarded read (or heartbeat) waits for its owner
        before it is answered UNAVAILABLE. A forwarded write waits for its owner's
        answer however long that takes: the owner answers at its retry deadline,
        except when it cannot know whether the write was applied (a COMMIT whose reply
        was lost), and then only once the database says. Answering UNAVAILABLE before
        that would tell the client of a failure for a write that may stand. An owner
        that dies closes the connection; a hung one is restarted by the watchdog.

        `room`: where a large reply relayed from its owner takes room until it is
        sent, as the owner's own replies do (`ReplyRoom.relay`)."""
        self._service = service
        self._router = router
        self._forwarders = forwarders
        self._metrics = metrics
        self._read_timeout = read_timeout
        self._room = room
        self._extension = extension
        self._requests = [_REQUESTS[name] for name in METHODS] + list(
            zip(EXTENSION_DECODERS, _EXTENSION_SCOPES, strict=True)
        )

    def handle(self, method_index: int, request: bytes) -> bytes:
        """The reply to a client's request; raises StatusError with the status to send."""
        try:
            fields, study_id = self._read(method_index, request)
            try:
                reply = self._route(method_index, request, fields, study_id)
            except (KeyError, StatusError) as exc:
                if method_index != _GET_TRIAL or not _is_not_found(exc):
                    raise
                reply = self._get_trial_again(request, fields, study_id, exc)
        except ANSWERED_ERRORS as exc:
            raise _answer(exc) from exc
        self._learn_from(method_index, reply, study_id)
        return reply

    def handle_forwarded(self, method_index: int, request: bytes) -> tuple[int, bytes]:
        """A request another worker forwarded to this one, its study's owner.

        (0, reply bytes), or (status code, UTF-8 details) for the forwarding channel.
        """
        if method_index == FORGET_STUDY:
            self._router.forget_study(_STUDY_ID.unpack(request)[0])
            return 0, b""
        try:
            return 0, self.handle(method_index, request)
        except StatusError as exc:
            return exc.code.value[0], exc.details.encode()

    def study_replaced(self, study_id: int) -> None:
        """The owner found `study_id` naming another study than before (see `cache`):
        every worker forgets which trials were in it; a trial id is looked up again
        on its next request. Best effort: a worker that cannot be told now is one
        restarting, whose map starts empty."""
        self._router.forget_study(study_id)
        request = _STUDY_ID.pack(study_id)
        for shard, forwarder in enumerate(self._forwarders):
            if forwarder is None:
                continue
            try:
                forwarder.call(FORGET_STUDY, request, self._read_timeout)
            except (ConnectionError, TimeoutError, OSError) as exc:
                _logger.warning("could not tell shard %d that study %d was replaced: %s",
                                shard, study_id, exc)

    def whereabouts(self, method_index: int, request: bytes) -> tuple[int | None, int | None]:
        """For an access line: the request's study, and the shard it was forwarded to.

        (study, None) when served here; (None, None) for a request that names no
        study, or a trial whose study this worker has not learned (no database read).
        """
        decode, scope = self._requests[method_index]
        if scope is Scope.NONE:
            return None, None
        first = decode(request)[0]
        study_id = first if scope is Scope.STUDY else self._router.remembered_study_of(first)
        if study_id is None:
            return None, None
        owner = self._router.owner_of(study_id)
        return study_id, None if owner == self._router.shard_index else owner

    def _read(self, method_index: int, request: bytes) -> tuple[tuple[Any, ...], int | None]:
        """The request's fields, and the study it touches (None for no study)."""
        decode, scope = self._requests[method_index]
        fields = decode(request)
        if scope is Scope.NONE:
            return fields, None
        if scope is Scope.STUDY:
            return fields, fields[0]
        return fields, self._router.study_of_trial(fields[0])

    def _route(
        self, method_index: int, request: bytes, fields: tuple[Any, ...], study_id: int | None
    ) -> bytes:
        if study_id is None:
            return self._service.call(method_index, fields)
        owner = self._router.owner_of(study_id)
        if owner != self._router.shard_index:
            if method_index in LARGE_REPLY_METHODS:  # GetTrials: (study, ids, id > this)
                full_read = fields[2] < 0
                return self._room.relay(
                    study_id, full_read, lambda: self._forward(owner, method_index, request)
                )
            return self._forward(owner, method_index, request)
        if self._requests[method_index][1] is Scope.TRIAL:
            fields = (study_id, *fields)
        if method_index >= _OPTUNA_METHODS:
            assert self._extension is not None
            return self._extension.call(method_index - _OPTUNA_METHODS, fields)
        return self._service.call(method_index, fields)

    def _get_trial_again(
        self,
        request: bytes,
        fields: tuple[Any, ...],
        remembered_study_id: int | None,
        not_found: Exception,
    ) -> bytes:
        """GetTrial once more, should the remembered study of the trial be stale.

        That happens only where the database hands out a deleted trial's id again
        (SQLite): the trial is then in another study than the one remembered.
        """
        study_id = self._router.look_up_again(fields[0])  # KeyError: no such trial
        if study_id == remembered_study_id:
            raise not_found
        return self._route(_GET_TRIAL, request, fields, study_id)

    def _learn_from(self, method_index: int, reply: bytes, study_id: int | None) -> None:
        """What the router learns from a reply: new trials' studies, deleted studies."""
        if method_index == _CREATE_NEW_TRIAL or method_index == _CREATE_NEW_TRIAL_ONCE:
            assert study_id is not None
            # CreateNewTrialReply has the shape of an id request: field 1, int64.
            self._router.learn(codec.decode_id_request(reply), study_id)
        elif method_index == _DELETE_STUDY:
            assert study_id is not None
            self._router.forget_study(study_id)

    def _forward(self, owner: int, method_index: int, request: bytes) -> bytes:
        self._metrics.forwarded(method_index)
        forwarder = self._forwarders[owner]
        assert forwarder is not None
        repeatable = method_index in _REPEATABLE
        timeout = self._read_timeout if repeatable else None  # see __init__
        try:
            try:
                status, payload = forwarder.call(method_index, request, timeout)
            except ConnectionError:
                if not repeatable:
                    raise  # the owner may have applied the write before it went away
                # Safe to repeat: the owner died mid-call and is restarting.
                status, payload = forwarder.call(method_index, request, timeout)
        except (ConnectionError, TimeoutError, OSError) as exc:
            message = f"shard {owner} unavailable: {exc}"
            raise StatusError(grpc.StatusCode.UNAVAILABLE, message) from exc
        if status != 0:
            code = _STATUS_BY_VALUE.get(status, grpc.StatusCode.UNKNOWN)
            raise StatusError(code, payload.decode("utf-8", "replace"))
        return payload


def _is_not_found(exc: Exception) -> bool:
    return isinstance(exc, KeyError) or (
        isinstance(exc, StatusError) and exc.code == grpc.StatusCode.NOT_FOUND
    )


def _answer(exc: Exception) -> StatusError:
    if isinstance(exc, sqlalchemy.exc.OperationalError):
        # The store retried it up to its deadline before giving up.
        _logger.warning("database unavailable: %s", exc)
    return status_error(exc)
