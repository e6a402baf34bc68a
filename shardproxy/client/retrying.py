"""Optuna's stub with each call retried where a repeat is safe, and writes applied once.

Optuna's `GrpcStorageProxy` calls `self._stub.<Method>(request)` and reads the
reply's fields; `RetryingStub` stands in for the stub with the same methods, so
Optuna's own client code runs unchanged above it.

A call that fails with UNAVAILABLE (a worker restarting or draining, a GOAWAY, a
refused connection) is tried again, with exponential backoff and jitter, until
`retry_deadline` seconds after it was first sent. UNAVAILABLE does not say whether
a write was applied, so each method is retried only as far as a repeat cannot
apply it twice:

- reads: always;
- attribute, parameter and intermediate-value writes: always; each is an upsert or
  an insert-or-ignore of the same row, so a repeat leaves what the first left;
- CreateNewStudy: a repeat of one that was applied finds the name taken; the
  study of that name is then the answer. DeleteStudy: a repeat of one that was
  applied finds no study, which is then the answer;
- CreateNewTrial and SetTrialStateValues: sent through shardproxy's
  `CreateNewTrialOnce` / `SetTrialStateValuesOnce` with a request key of the
  call's own; a repeat carries the same key, and the proxy answers it from the
  first call's commit if there was one (`shardproxy.store.request_keys`). Against
  a proxy without that service (Optuna's, UNIMPLEMENTED) they are sent as Optuna's
  client sends them and not retried.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import grpc
from optuna.storages._grpc.auto_generated import api_pb2, api_pb2_grpc

from shardproxy.extension_wire import encode_once_request, extension_path
from shardproxy.wire import METHODS

_logger = logging.getLogger(__name__)

# Backoff between attempts: from FIRST_BACKOFF, doubling, up to MAX_BACKOFF, each
# drawn at random from [half, all] of it so that many clients do not come back in step.
FIRST_BACKOFF = 0.05
MAX_BACKOFF = 2.0

_IDEMPOTENT = frozenset({
    "SetStudyUserAttribute", "SetStudySystemAttribute", "SetTrialParameter",
    "SetTrialIntermediateValue", "SetTrialUserAttribute", "SetTrialSystemAttribute",
})  # fmt: skip
_READS = frozenset(name for name in METHODS if name.startswith("Get"))
_KEYED: dict[str, tuple[str, Any]] = {
    "CreateNewTrial": ("CreateNewTrialOnce", api_pb2.CreateNewTrialReply),
    "SetTrialStateValues": ("SetTrialStateValuesOnce", api_pb2.SetTrialStateValuesReply),
}


def new_request_key() -> str:
    return str(uuid.uuid4())


class Retrier:
    """Runs one call with retries of UNAVAILABLE up to the deadline."""

    def __init__(self, retry_deadline: float, timeout: float | None) -> None:
        self.retry_deadline = retry_deadline
        self.timeout = timeout

    def run(self, attempt: Callable[[int], Any], retry: bool = True) -> Any:
        """`attempt(n)` for n = 0, 1, ...; raises the last error once out of time."""
        deadline = time.monotonic() + self.retry_deadline
        backoff = FIRST_BACKOFF
        number = 0
        while True:
            try:
                return attempt(number)
            except grpc.RpcError as exc:
                if not retry or exc.code() != grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                    raise
                pause = backoff * random.uniform(0.5, 1.0)
                if time.monotonic() + pause > deadline:
                    raise
                _logger.debug("retrying after UNAVAILABLE (%s)", exc.details())  # type: ignore[attr-defined]
                time.sleep(pause)
                backoff = min(backoff * 2, MAX_BACKOFF)
                number += 1


class ExtensionUnavailableWarning(UserWarning):
    """The proxy does not serve shardproxy's own service (Optuna's own proxy, say)."""


class ExtensionSupport:
    """Whether the proxy serves shardproxy's own service: unknown until it answers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.supported: bool | None = None

    def learn(self, exc: grpc.RpcError | None) -> bool:
        """After a call of the extension: False if its error says the proxy lacks it.

        The first time it does, warns once: the client then runs as Optuna's does.
        """
        if exc is None:
            self.supported = True
            return True
        if exc.code() != grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            return True
        with self._lock:
            first, self.supported = self.supported is not False, False
        if first:
            warnings.warn(
                "the proxy does not serve shardproxy.ClientExtension (Optuna's own proxy?): "
                "running without heartbeats, and CreateNewTrial and SetTrialStateValues "
                "are not retried",
                ExtensionUnavailableWarning,
                stacklevel=2,
            )
        return False


class RetryingStub:
    """Optuna's StorageServiceStub, each method retried as far as it is safe (see above)."""

    def __init__(
        self, channel: grpc.Channel, retrier: Retrier, support: ExtensionSupport
    ) -> None:
        stub = api_pb2_grpc.StorageServiceStub(channel)
        self._retrier = retrier
        self._support = support
        for name in METHODS:
            call = getattr(stub, name)
            if name in _KEYED:
                once, reply = _KEYED[name]
                method = self._keyed(call, channel.unary_unary(extension_path(once)), reply)
            elif name in _READS or name in _IDEMPOTENT:
                method = self._retried(call)
            elif name == "CreateNewStudy":
                method = self._create_study(call, stub.GetStudyIdFromName)
            else:
                assert name == "DeleteStudy"
                method = self._delete_study(call)
            setattr(self, name, method)
        # GetTrial and GetTrials with their replies as bytes, for `decoding`.
        self.raw_get_trial = self._retried(channel.unary_unary(
            "/optuna.StorageService/GetTrial",
            request_serializer=api_pb2.GetTrialRequest.SerializeToString))
        self.raw_get_trials = self._retried(channel.unary_unary(
            "/optuna.StorageService/GetTrials",
            request_serializer=api_pb2.GetTrialsRequest.SerializeToString))

    def _retried(self, call: Any) -> Callable[..., Any]:
        def method(request: Any) -> Any:
            return self._retrier.run(lambda _: call(request, timeout=self._retrier.timeout))

        return method

    def _create_study(self, call: Any, id_from_name: Any) -> Callable[..., Any]:
        timeout = self._retrier.timeout

        def method(request: Any) -> Any:
            def attempt(number: int) -> Any:
                try:
                    return call(request, timeout=timeout)
                except grpc.RpcError as exc:
                    if number == 0 or exc.code() != grpc.StatusCode.ALREADY_EXISTS:  # type: ignore[attr-defined]
                        raise
                # The first attempt's outcome was unknown, and the name is taken now.
                found = id_from_name(
                    api_pb2.GetStudyIdFromNameRequest(study_name=request.study_name),
                    timeout=timeout,
                )
                return api_pb2.CreateNewStudyReply(study_id=found.study_id)

            return self._retrier.run(attempt)

        return method

    def _delete_study(self, call: Any) -> Callable[..., Any]:
        def method(request: Any) -> Any:
            def attempt(number: int) -> Any:
                try:
                    return call(request, timeout=self._retrier.timeout)
                except grpc.RpcError as exc:
                    if number == 0 or exc.code() != grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                        raise
                return api_pb2.DeleteStudyReply()  # an earlier attempt deleted it

            return self._retrier.run(attempt)

        return method

    def _keyed(self, plain: Any, once: Any, reply_type: Any) -> Callable[..., Any]:
        support = self._support

        def method(request: Any) -> Any:
            if support.supported is False:
                return plain(request, timeout=self._retrier.timeout)
            key = new_request_key()
            inner = request.SerializeToString()

            def attempt(number: int) -> Any:
                data = encode_once_request(key, number > 0, inner)
                return reply_type.FromString(once(data, timeout=self._retrier.timeout))

            try:
                result = self._retrier.run(attempt)
            except grpc.RpcError as exc:
                if support.learn(exc):
                    raise
                # Optuna's own proxy: the plain call, not retried (its outcome would be
                # unknown on UNAVAILABLE).
                return plain(request, timeout=self._retrier.timeout)
            support.learn(None)
            return result

        return method
