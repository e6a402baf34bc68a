"""GetTrials cost against study size, on pre-filled studies.

For each study size: the server's share of a first full read on its own (raw
GetTrials bytes on a new connection, request in and reply bytes out, of a twin
study of the same trials that nothing has read yet), the first full read as a new
real client sees it end to end (`GrpcStorageProxy.get_all_trials`: the proxy's
first load plus the transfer and the client's decoding), the same full read again
on raw bytes (warm proxy), and the delta read a synced worker sends every trial
(`trial_id_greater_than` = the last trial id), p50 and p99 over a few samples. For
direct RDBStorage workers there is no server: the same first read goes through
`get_storage(URL)`, and the repeat is its cached `get_all_trials`.
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


def _summary(first: float, full_again: float, deltas: list[float],
             first_raw: float | None = None) -> dict[str, float | None]:
    return {
        "first_raw_s": first_raw,
        "first_full_s": first,
        "full_again_s": full_again,
        "delta_p50_ms": percentile(deltas, 50) * 1000,
        "delta_p99_ms": percentile(deltas, 99) * 1000,
    }


def proxy_latency(target: str, study_id: int, last_trial_id: int, samples: int,
                  twin_id: int) -> dict:
    import optuna

    options = [("grpc.max_receive_message_length", -1)]
    with grpc.insecure_channel(target, options=options) as channel:
        get_trials = channel.unary_unary(wire.method_path("GetTrials"))
        grpc.channel_ready_future(channel).result(timeout=60)  # connected before the clock
        first_raw = _timed(lambda: get_trials(wire.get_trials(twin_id, (), -1),
                                              timeout=FULL_READ_LIMIT))
        host, _, port = target.rpartition(":")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            client = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
        try:
            first = _timed(lambda: client.get_all_trials(study_id, deepcopy=False))
        finally:
            client.close()
        full = wire.get_trials(study_id, (), -1)
        delta = wire.get_trials(study_id, (), last_trial_id)
        again = _timed(lambda: get_trials(full, timeout=FULL_READ_LIMIT))
        deltas = _samples(lambda: get_trials(delta, timeout=60), samples)
    return _summary(first, again, deltas, first_raw)


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
