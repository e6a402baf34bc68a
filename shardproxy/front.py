"""The front role of a worker: find the study of a request, then serve or forward it.

Every worker terminates client gRPC on the shared port. A study's cache, sync and
write batching live in exactly one worker, its owner (`routing.owner_of`), so a
request for a study owned elsewhere is forwarded there as raw bytes over a local
Unix socket and the raw reply relayed back.

Which study a request touches: study-scoped requests carry `study_id` in field 1;
trial-scoped ones carry only `trial_id`, mapped to its study through the
`trial_id → study_id` map (learned from CreateNewTrial replies, and from one
primary-key lookup on a miss — the mapping never changes). Requests without a
study (create a study, find one by name, list all) are served where they arrive.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

import grpc

from shardproxy import codec
from shardproxy.errors import StatusError
from shardproxy.metrics import Metrics
from shardproxy.service import METHOD_INDEX, METHODS, Service, status_error

_STUDY_SCOPED = {
    "DeleteStudy": codec.decode_id_request,
    "SetStudyUserAttribute": lambda data: codec.decode_attr_request(data)[0],
    "SetStudySystemAttribute": lambda data: codec.decode_attr_request(data)[0],
    "GetStudyNameFromId": codec.decode_id_request,
    "GetStudyDirections": codec.decode_id_request,
    "GetStudyUserAttributes": codec.decode_id_request,
    "GetStudySystemAttributes": codec.decode_id_request,
    "CreateNewTrial": lambda data: codec.decode_create_new_trial_request(data)[0],
    "GetTrialIdFromStudyIdTrialNumber": lambda data: codec.decode_trial_number_request(data)[0],
    "GetTrials": lambda data: codec.decode_get_trials_request(data)[0],
}
_TRIAL_SCOPED = {
    "SetTrialParameter": lambda data: codec.decode_set_trial_param_request(data)[0],
    "SetTrialStateValues": lambda data: codec.decode_set_trial_state_values_request(data)[0],
    "SetTrialIntermediateValue": (
        lambda data: codec.decode_set_trial_intermediate_value_request(data)[0]
    ),
    "SetTrialUserAttribute": lambda data: codec.decode_attr_request(data)[0],
    "SetTrialSystemAttribute": lambda data: codec.decode_attr_request(data)[0],
    "GetTrial": codec.decode_id_request,
}
_CREATE_NEW_TRIAL = METHOD_INDEX["CreateNewTrial"]
_READS = frozenset(index for index, name in enumerate(METHODS) if name.startswith("Get"))
_STATUS_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


class Forwarder(Protocol):
    def call(
        self, method_index: int, request: bytes, timeout: float | None
    ) -> tuple[int, bytes]: ...


def _via_trial(service: Service, trial_of: Callable[[bytes], int]) -> Callable[[bytes], int]:
    """The study of a trial-scoped request: its trial's study."""
    return lambda data: service.study_of_trial(trial_of(data))


class Front:
    """Serves a request here when this worker owns its study, else forwards it."""

    def __init__(
        self,
        service: Service,
        shard_index: int,
        owner_of: Callable[[int], int],
        forwarders: Sequence[Forwarder | None],
        metrics: Metrics,
        forward_timeout: float,
    ) -> None:
        self._metrics = metrics
        self._service = service
        self._shard_index = shard_index
        self._owner_of = owner_of
        self._forwarders = forwarders
        self._forward_timeout = forward_timeout
        self._study_of: list[Callable[[bytes], int] | None] = []
        for name in METHODS:
            if name in _STUDY_SCOPED:
                self._study_of.append(_STUDY_SCOPED[name])
            elif name in _TRIAL_SCOPED:
                self._study_of.append(_via_trial(service, _TRIAL_SCOPED[name]))
            else:
                self._study_of.append(None)

    def handle(self, method_index: int, request: bytes) -> bytes:
        owner = self.owner_of_request(method_index, request)
        if owner == self._shard_index:
            return self._service.handle(method_index, request)
        self._metrics.add(f"forwarded.{METHODS[method_index]}")
        reply = self._forward(owner, method_index, request)
        if method_index == _CREATE_NEW_TRIAL:
            # CreateNewTrialReply has the shape of an id request: field 1, int64.
            study_id = codec.decode_create_new_trial_request(request)[0]
            self._service.remember_trial(codec.decode_id_request(reply), study_id)
        return reply

    def owner_of_request(self, method_index: int, request: bytes) -> int:
        """The shard that must serve this request (this one when no study is named)."""
        study_of = self._study_of[method_index]
        if study_of is None:
            return self._shard_index
        try:
            study_id = study_of(request)
        except (codec.DecodeError, KeyError) as exc:
            raise status_error(exc) from exc
        return self._owner_of(study_id)

    def _forward(self, owner: int, method_index: int, request: bytes) -> bytes:
        forwarder = self._forwarders[owner]
        assert forwarder is not None
        try:
            try:
                status, payload = forwarder.call(method_index, request, self._forward_timeout)
            except ConnectionError:
                if method_index not in _READS:
                    raise  # the owner may have applied the write before it went away
                # A read is safe to repeat: the owner died mid-call and is restarting.
                status, payload = forwarder.call(method_index, request, self._forward_timeout)
        except (ConnectionError, TimeoutError, OSError) as exc:
            message = f"shard {owner} unavailable: {exc}"
            raise StatusError(grpc.StatusCode.UNAVAILABLE, message) from exc
        if status != 0:
            code = _STATUS_BY_VALUE.get(status, grpc.StatusCode.UNKNOWN)
            raise StatusError(code, payload.decode("utf-8", "replace"))
        return payload
