"""What a fresh client sees of the proxy, and the CPU the proxy spends while idle.

GetAllStudies latency on raw bytes over new connections, the wall time of an
Optuna trial through a new `GrpcStorageProxy`, and the tree's CPU over a window.
"""

from __future__ import annotations

import argparse
import time
import warnings
from typing import Any

import grpc

from bench import counters
from bench.memory.proxy import GET_ALL_STUDIES, LATENCY_CHANNELS, OWN_CONNECTION
from bench.stats import percentile

LATENCY_TIMEOUT = 10.0  # seconds a fresh client's call may take before it counts as failed


def small_request_latency(target: str, samples: int) -> dict[str, float]:
    """GetAllStudies one at a time over new connections (both workers, likely)."""
    channels = [grpc.insecure_channel(target, options=[OWN_CONNECTION])
                for _ in range(LATENCY_CHANNELS)]
    try:
        calls = [channel.unary_unary(GET_ALL_STUDIES) for channel in channels]
        for call in calls:  # connecting is not what is timed
            call(b"", timeout=LATENCY_TIMEOUT, wait_for_ready=True)
        times = []
        for i in range(samples):
            start = time.perf_counter()
            calls[i % len(calls)](b"", timeout=LATENCY_TIMEOUT)
            times.append(time.perf_counter() - start)
    finally:
        for channel in channels:
            channel.close()
    return summary_ms(times)


def optuna_trial_latency(target: str, study_name: str, trials: int) -> dict[str, float]:
    """Wall time per trial of RandomSampler on x**2 through a new GrpcStorageProxy."""
    import optuna

    host, _, port = target.rpartition(":")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        storage.wait_server_ready(timeout=LATENCY_TIMEOUT)
        study = optuna.load_study(study_name=study_name, storage=storage,
                                  sampler=optuna.samplers.RandomSampler())
        times = []
        for _ in range(trials):
            start = time.perf_counter()
            study.optimize(lambda t: t.suggest_float("x", -10, 10) ** 2, n_trials=1)
            times.append(time.perf_counter() - start)
    finally:
        storage.close()
    return summary_ms(times)


def summary_ms(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": percentile(seconds, 50) * 1000, "p99_ms": percentile(seconds, 99) * 1000,
            "max_ms": max(seconds) * 1000, "samples": len(seconds)}


def responsiveness(target: str, study_name: str, args: argparse.Namespace) -> dict[str, Any]:
    # An unresponsive proxy is a result, not a crash.
    result: dict[str, Any] = {}
    try:
        result["get_all_studies"] = small_request_latency(target, args.latency_samples)
    except grpc.RpcError as exc:
        result["get_all_studies"] = {"error": f"{exc.code().name} ({exc.details()})"}
    try:
        result["optuna_trial"] = optuna_trial_latency(target, study_name, args.optuna_trials)
    except Exception as exc:
        result["optuna_trial"] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
    return result


def idle_cpu(root: int, seconds: float) -> dict[str, float]:
    start = counters.tree_cpu_seconds([root])
    time.sleep(seconds)
    used = counters.tree_cpu_seconds([root]) - start
    return {"seconds": seconds, "cpu_s": used, "cpu_percent_of_one_core": 100 * used / seconds}
