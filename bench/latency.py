"""GetTrials cost against study size, on pre-filled studies.

For each study size: the first full read as a new real client sees it end to end
(`GrpcStorageProxy.get_all_trials`: the proxy's first load plus the client's
decoding), the same full read again on raw bytes (warm proxy), and the delta read a
synced worker sends every trial (`trial_id_greater_than` = the last trial id), p50
and p99 over a few samples. For direct RDBStorage workers the same first read goes
through `get_storage(URL)`, and the repeat is its cached `get_all_trials`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import grpc

from bench.loadgen import wire
from bench.stats import percentile

FULL_READ_LIMIT = 600.0


def _timed(call: Callable[[], Any]) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


def _samples(call: Callable[[], Any], count: int) -> list[float]:
    return [_timed(call) for _ in range(count)]


def _summary(first: float, full_again: float, deltas: list[float]) -> dict[str, float]:
    return {
        "first_full_s": first,
        "full_again_s": full_again,
        "delta_p50_ms": percentile(deltas, 50) * 1000,
        "delta_p99_ms": percentile(deltas, 99) * 1000,
    }


def proxy_latency(target: str, study_id: int, last_trial_id: int, samples: int) -> dict:
    import optuna

    host, _, port = target.rpartition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        client = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        first = _timed(lambda: client.get_all_trials(study_id, deepcopy=False))
    finally:
        client.close()
    options = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        get_trials = channel.unary_unary(wire.method_path("GetTrials"))
        full = wire.get_trials(study_id, (), -1)
        delta = wire.get_trials(study_id, (), last_trial_id)
        again = _timed(lambda: get_trials(full, timeout=FULL_READ_LIMIT))
        deltas = _samples(lambda: get_trials(delta, timeout=60), samples)
    return _summary(first, again, deltas)


def direct_latency(url: str, study_id: int, samples: int) -> dict:
    import optuna

    storage = optuna.storages.get_storage(url)
    try:
        first = _timed(lambda: storage.get_all_trials(study_id, deepcopy=False))
        again = _timed(lambda: storage.get_all_trials(study_id, deepcopy=False))
        deltas = _samples(lambda: storage.get_all_trials(study_id, deepcopy=False), samples)
    finally:
        # get_storage wraps RDBStorage in a cache; its engine holds the connections.
        rdb: Any = getattr(storage, "_backend", storage)
        rdb.engine.dispose()
    return _summary(first, again, deltas)
