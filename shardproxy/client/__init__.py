"""`GrpcStorageProxy`: Optuna's gRPC storage client with heartbeats, retries and TLS.

A drop-in subclass of `optuna.storages.GrpcStorageProxy`; one import changes:

    from shardproxy.client import GrpcStorageProxy

    storage = GrpcStorageProxy(host="proxy", port=13000, heartbeat_interval=60,
                               heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(3))

What it adds, over Optuna's 19 RPCs and shardproxy's own service beside them
(proto/client_extension.proto):

- Heartbeats, as `RDBStorage` has them (`BaseHeartbeat`, the same keyword options):
  `study.optimize` beats from its own heartbeat thread and fails stale trials
  before each trial; `optuna.storages.fail_stale_trials` works too. The proxy writes
  the beats into Optuna's `trial_heartbeats` table with the database's clock, so
  RDBStorage users on the same database agree on which trials are stale.
- Retries of calls that fail with UNAVAILABLE, up to `retry_deadline` seconds, and
  only as far as a repeat cannot apply a write twice (`retrying`).
- `timeout`: a deadline for each attempt of each call, in seconds.
- `credentials`: `grpc.ssl_channel_credentials(...)` for a proxy serving TLS.

Against Optuna's own proxy, which lacks shardproxy's service, it warns once
(`ExtensionUnavailableWarning`) and runs as Optuna's client does, without
heartbeats. Without heartbeat options no heartbeat is sent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
import optuna
from optuna import _deprecated
from optuna._experimental import warn_experimental_argument
from optuna._warnings import optuna_warn
from optuna.storages import GrpcStorageProxy as OptunaGrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.client import GrpcClientCache, GrpcClientCacheEntry
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import FrozenTrial

from shardproxy.client.decoding import AVAILABLE as DECODING_AVAILABLE
from shardproxy.client.decoding import TrialDecoder
from shardproxy.client.retrying import (
    ExtensionSupport,
    ExtensionUnavailableWarning,
    Retrier,
    RetryingStub,
)
from shardproxy.extension_wire import (
    decode_stale_reply,
    encode_heartbeat_request,
    encode_stale_request,
    extension_path,
)

__all__ = ["ExtensionUnavailableWarning", "GrpcStorageProxy"]

_logger = logging.getLogger(__name__)

StaleTrialCallback = Callable[["optuna.study.Study", FrozenTrial], None]
# Optuna's client takes replies of any size (a GetTrials of a large study).
_CHANNEL_OPTIONS = [("grpc.max_receive_message_length", -1)]


class GrpcStorageProxy(OptunaGrpcStorageProxy, BaseHeartbeat):
    """Optuna's `GrpcStorageProxy`, plus heartbeats, safe retries, deadlines and TLS.

    Args:
        host, port: as Optuna's client.
        heartbeat_interval, grace_period, heartbeat_stale_trial_callback,
        failed_trial_callback: as `optuna.storages.RDBStorage` takes them (the last
            is deprecated there and here).
        retry_deadline: seconds a call that fails with UNAVAILABLE is tried again
            (0: never, as Optuna's client).
        timeout: seconds each attempt of a call may take (None: no limit).
        credentials: channel credentials for TLS (None: plaintext, as Optuna's).
    """

    def __init__(
        self,
        *,
        host: str = "localhost",
        port: int = 13000,
        heartbeat_interval: int | None = None,
        grace_period: int | None = None,
        heartbeat_stale_trial_callback: StaleTrialCallback | None = None,
        failed_trial_callback: StaleTrialCallback | None = None,
        retry_deadline: float = 60.0,
        timeout: float | None = None,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        # RDBStorage's checks and warnings, word for word.
        if heartbeat_interval is not None:
            if heartbeat_interval <= 0:
                raise ValueError("The value of `heartbeat_interval` should be a positive integer.")
            else:
                warn_experimental_argument("heartbeat_interval")
        if grace_period is not None and grace_period <= 0:
            raise ValueError("The value of `grace_period` should be a positive integer.")
        if heartbeat_stale_trial_callback is not None and failed_trial_callback is not None:
            raise ValueError(
                "Specify only one of `heartbeat_stale_trial_callback` and `failed_trial_callback`."
            )
        if failed_trial_callback is not None:
            msg = _deprecated._DEPRECATION_WARNING_TEMPLATE.format(
                name="`failed_trial_callback`", d_ver="4.9.0", r_ver="6.0.0"
            )
            optuna_warn(f"{msg} Use `heartbeat_stale_trial_callback` instead.", FutureWarning)
        if not retry_deadline >= 0:
            raise ValueError(f"retry_deadline must be at least 0, got {retry_deadline}")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"timeout must be positive or None, got {timeout}")
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = (
            heartbeat_stale_trial_callback or failed_trial_callback
        )
        self.failed_trial_callback = self.heartbeat_stale_trial_callback
        self.retry_deadline = retry_deadline
        self.timeout = timeout
        self._credentials = credentials
        super().__init__(host=host, port=port)

    def _setup(self) -> None:
        """The channel, the retrying stub in place of Optuna's, the cache over it."""
        self._channel = self._open_channel()
        self._support = ExtensionSupport()
        self._retrier = Retrier(self.retry_deadline, self.timeout)
        self._retrying = RetryingStub(self._channel, self._retrier, self._support)
        self._stub = self._retrying  # type: ignore[assignment]  # the same methods
        if DECODING_AVAILABLE:
            self._decoder = TrialDecoder()
            self._cache = _DecodingCache(self._retrying, self._decoder)
        else:
            self._cache = GrpcClientCache(self._stub)  # type: ignore[arg-type]
        self._record = self._channel.unary_unary(extension_path("RecordHeartbeat"))
        self._stale = self._channel.unary_unary(extension_path("GetStaleTrialIds"))

    def _open_channel(self) -> grpc.Channel:
        target = f"{self._host}:{self._port}"
        if self._credentials is None:
            return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
        return grpc.secure_channel(target, self._credentials, options=_CHANNEL_OPTIONS)

    def wait_server_ready(self, timeout: float | None = None) -> None:
        """Wait until the gRPC server is ready (over TLS too, with `credentials`)."""
        try:
            with self._open_channel() as channel:
                grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError as e:
            raise ConnectionError("GRPC connection timeout") from e

    def __getstate__(self) -> dict[Any, Any]:
        state = super().__getstate__()
        for name in ("_support", "_retrier", "_retrying", "_record", "_stale", "_credentials",
                     "_decoder"):
            state.pop(name, None)
        if self._credentials is not None:
            # Channel credentials hold C state that cannot be pickled.
            raise TypeError("a GrpcStorageProxy with credentials cannot be pickled")
        return state

    def __setstate__(self, state: dict[Any, Any]) -> None:
        state.setdefault("_credentials", None)
        super().__setstate__(state)

    def get_trial(self, trial_id: int) -> FrozenTrial:
        if not DECODING_AVAILABLE:
            return super().get_trial(trial_id)
        try:
            reply = self._retrying.raw_get_trial(api_pb2.GetTrialRequest(trial_id=trial_id))
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise KeyError from e
            raise
        return self._decoder.trial_reply(reply)

    # -- BaseHeartbeat -----------------------------------------------------------------

    def record_heartbeat(self, trial_id: int) -> None:
        if self._support.supported is False:
            return
        request = encode_heartbeat_request(trial_id)
        try:
            self._retrier.run(lambda _: self._record(request, timeout=self.timeout))
        except grpc.RpcError as exc:
            if not self._support.learn(exc):
                return
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise KeyError(f"trial {trial_id} not found") from exc
            if exc.code() == grpc.StatusCode.UNAVAILABLE:  # type: ignore[attr-defined]
                # Out of retries: the next beat tries again. Raising would end
                # study.optimize's heartbeat thread, and the trial would go stale.
                _logger.warning("heartbeat of trial %d not recorded: %s", trial_id,
                                exc.details())  # type: ignore[attr-defined]
                return
            raise
        self._support.learn(None)

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        assert self.heartbeat_interval is not None
        grace = self.grace_period if self.grace_period is not None else 2 * self.heartbeat_interval
        if self._support.supported is False:
            return []
        request = encode_stale_request(study_id, float(grace))
        try:
            reply = self._retrier.run(lambda _: self._stale(request, timeout=self.timeout))
        except grpc.RpcError as exc:
            if not self._support.learn(exc):
                return []
            if exc.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                raise KeyError(f"study {study_id} not found") from exc
            raise
        self._support.learn(None)
        return decode_stale_reply(reply)

    def get_heartbeat_interval(self) -> int | None:
        if self.heartbeat_interval is None or self._support.supported is False:
            return None
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self) -> StaleTrialCallback | None:
        return self.heartbeat_stale_trial_callback


class _DecodingCache(GrpcClientCache):
    """Optuna's client cache, its GetTrials replies decoded by `decoding`."""

    def __init__(self, stub: RetryingStub, decoder: TrialDecoder) -> None:
        super().__init__(stub)  # type: ignore[arg-type]
        self._raw_get_trials = stub.raw_get_trials
        self._decoder = decoder

    def _read_trials_from_remote_storage(self, study_id: int) -> None:
        # Optuna's, with the reply decoded straight into FrozenTrials.
        if study_id not in self.studies:
            self.studies[study_id] = GrpcClientCacheEntry()
        study = self.studies[study_id]
        request = api_pb2.GetTrialsRequest(
            study_id=study_id,
            included_trial_ids=study.unfinished_trial_ids,
            trial_id_greater_than=study.last_finished_trial_id,
        )
        try:
            reply = self._raw_get_trials(request)
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                self.studies.pop(study_id, None)
                raise KeyError from e
            raise
        for trial in self._decoder.trials_reply(reply):
            self._add_trial_to_cache(study_id, trial)
