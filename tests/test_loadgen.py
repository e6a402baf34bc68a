"""The load generator sends what real Optuna workers send.

A counting server wraps Optuna's own servicer (over an in-memory storage) and
records every request's method and size. Real workers (`study.optimize` through
`GrpcStorageProxy`) run against one such server, the generator's virtual workers
against a fresh twin, and the per-trial method histograms and request sizes are
compared. RandomSampler must match exactly; for TPE the generator models the
sampler's storage calls from its cache counts, and the histogram must agree within
TPE_TOLERANCE calls per trial per method.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import optuna
import pytest
from optuna.storages import GrpcStorageProxy
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.storages._grpc.servicer import OptunaStorageProxyService

from bench.loadgen import wire
from bench.loadgen.process import GeneratorConfig, run_virtual_workers
from bench.loadgen.virtual import Recorder, StudyCache
from bench.loadgen.workload import Workload

TPE_TOLERANCE = 0.1  # calls per trial, per method


class CountingServer:
    """Optuna's stock servicer behind raw-bytes handlers that count each request."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.request_bytes: Counter[str] = Counter()
        self.included_ids = 0  # GetTrials requests that carried included_trial_ids
        servicer = OptunaStorageProxyService(optuna.storages.InMemoryStorage())
        service = api_pb2.DESCRIPTOR.services_by_name["StorageService"]
        handlers = {
            method.name: grpc.unary_unary_rpc_method_handler(
                self._handler(method.name, getattr(api_pb2, method.input_type.name),
                              getattr(servicer, method.name))
            )
            for method in service.methods
        }
        self.server = grpc.server(
            ThreadPoolExecutor(max_workers=16),
            handlers=[grpc.method_handlers_generic_handler(wire.SERVICE, handlers)],
        )
        self.port = self.server.add_insecure_port("127.0.0.1:0")

    def _handler(self, name: str, request_class: Any, serve: Any) -> Any:
        def handle(data: bytes, context: grpc.ServicerContext) -> bytes:
            request = request_class.FromString(data)
            with self._lock:
                self.calls[name] += 1
                self.request_bytes[name] += len(data)
                if name == "GetTrials" and request.included_trial_ids:
                    self.included_ids += 1
            return serve(request, context).SerializeToString()

        return handle

    def reset(self) -> None:
        with self._lock:
            self.calls.clear()
            self.request_bytes.clear()
            self.included_ids = 0

    def per_trial(self, trials: int) -> dict[str, float]:
        return {method: count / trials for method, count in self.calls.items()}

    def mean_size(self) -> dict[str, float]:
        return {m: self.request_bytes[m] / self.calls[m] for m in self.calls}


@contextlib.contextmanager
def counting_server() -> Iterator[CountingServer]:
    server = CountingServer()
    server.server.start()
    try:
        yield server
    finally:
        server.server.stop(grace=None)


def _new_study(port: int, workload: Workload) -> tuple[GrpcStorageProxy, optuna.Study]:
    storage = GrpcStorageProxy(host="127.0.0.1", port=port)
    storage.wait_server_ready(timeout=10)
    study = optuna.create_study(storage=storage, study_name="loadgen",
                                sampler=workload.make_sampler(seed=1))
    return storage, study


def run_real_workers(server: CountingServer, workload: Workload, trials: int,
                     threads: int) -> None:
    """`threads` Optuna workers, each with its own GrpcStorageProxy, `trials` in all."""
    first, _ = _new_study(server.port, workload)
    storages = [GrpcStorageProxy(host="127.0.0.1", port=server.port) for _ in range(threads)]
    studies = [
        optuna.load_study(study_name="loadgen", storage=storage,
                          sampler=workload.make_sampler(seed=index))
        for index, storage in enumerate(storages)
    ]
    share = [trials // threads + (i < trials % threads) for i in range(threads)]
    # Only what the trials send is counted, not the workers' set-up (load_study).
    server.reset()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(lambda i: studies[i].optimize(workload.objective(), n_trials=share[i]),
                          range(threads)))
    finally:
        optuna.logging.set_verbosity(verbosity)
        for storage in [first, *storages]:
            storage.close()
    assert server.calls["SetTrialStateValues"] == trials


def run_generator(server: CountingServer, workload: Workload, trials: int,
                  workers: int) -> None:
    storage, study = _new_study(server.port, workload)
    storage.close()
    server.reset()
    config = GeneratorConfig(
        f"127.0.0.1:{server.port}", (study._study_id,), workload, virtual_workers=workers,
        channels=workers, max_trials_per_worker=trials // workers,
    )
    recorder = asyncio.run(run_virtual_workers(config))
    assert recorder.trials == trials
    assert recorder.errors == 0
    assert list(recorder.trials_per_worker) == [trials // workers] * workers
    assert dict(recorder.calls) == dict(server.calls)  # the generator counts what it sends


def histograms(workload: Workload, trials: int, workers: int) -> tuple[CountingServer, ...]:
    with counting_server() as real, counting_server() as generated:
        run_real_workers(real, workload, trials, workers)
        run_generator(generated, workload, trials, workers)
    return real, generated


def test_random_one_worker_matches_exactly() -> None:
    trials = 30
    real, generated = histograms(Workload("random", 1), trials, workers=1)
    assert real.per_trial(trials) == {
        "GetTrials": 1, "CreateNewTrial": 1, "GetTrial": 2,
        "SetTrialParameter": 1, "SetTrialStateValues": 1,
    }
    assert generated.per_trial(trials) == real.per_trial(trials)
    # Same study id, same trial ids, same bookkeeping: the same bytes, double for double.
    assert generated.request_bytes == real.request_bytes


def test_random_concurrent_workers_keep_the_cache_bookkeeping() -> None:
    trials, workers = 60, 4
    real, generated = histograms(Workload("random", 3), trials, workers)
    assert generated.per_trial(trials) == real.per_trial(trials)
    assert real.per_trial(trials)["SetTrialParameter"] == 3
    # Other workers' running trials show up as included_trial_ids in both runs.
    assert real.included_ids > 0 and generated.included_ids > 0
    real_sizes, generated_sizes = real.mean_size(), generated.mean_size()
    for method in ("CreateNewTrial", "GetTrial", "SetTrialParameter", "SetTrialStateValues"):
        assert generated_sizes[method] == pytest.approx(real_sizes[method], rel=0.05), method
    assert generated_sizes["GetTrials"] == pytest.approx(real_sizes["GetTrials"], abs=4)


@pytest.mark.parametrize("params", [1, 4])
def test_tpe_matches_within_tolerance(params: int) -> None:
    trials = 24
    workload = Workload("tpe", params, n_startup_trials=8)
    real, generated = histograms(workload, trials, workers=1)
    real_hist, generated_hist = real.per_trial(trials), generated.per_trial(trials)
    # TPE's relative sampling happened: more GetTrials, and system attributes.
    assert real_hist["GetTrials"] > 2 and real_hist["SetTrialSystemAttribute"] > 0
    assert set(generated_hist) == set(real_hist)
    for method, per_trial in real_hist.items():
        assert math.isclose(generated_hist[method], per_trial, abs_tol=TPE_TOLERANCE), method
    real_sizes, generated_sizes = real.mean_size(), generated.mean_size()
    for method, size in real_sizes.items():
        assert generated_sizes[method] == pytest.approx(size, rel=0.1), method


# -- the wire helpers against Optuna's own message classes --------------------


@pytest.mark.parametrize(
    ("study_id", "included", "greater_than"),
    [(0, [], -1), (0, [], 0), (7, [3, 300, 2**40], 12), (2**33, [0], -5)],
)
def test_get_trials_request_bytes(study_id: int, included: list[int], greater_than: int) -> None:
    expected = api_pb2.GetTrialsRequest(
        study_id=study_id, included_trial_ids=included, trial_id_greater_than=greater_than
    ).SerializeToString()
    assert wire.get_trials(study_id, included, greater_than) == expected


@pytest.mark.parametrize("value", [0.0, -0.0, 1.5, -9.75, 1e300])
@pytest.mark.parametrize("trial_id", [0, 1, 130, 2**35])
def test_trial_requests_bytes(trial_id: int, value: float) -> None:
    distribution = Workload().distribution_json()
    assert wire.set_trial_parameter(
        trial_id, wire.param_tail("x", distribution), value
    ) == api_pb2.SetTrialParameterRequest(
        trial_id=trial_id, param_name="x", param_value_internal=value, distribution=distribution
    ).SerializeToString()
    assert wire.set_trial_state_values(
        trial_id, wire.COMPLETE, [value, 2.0]
    ) == api_pb2.SetTrialStateValuesRequest(
        trial_id=trial_id, state=api_pb2.COMPLETE, values=[value, 2.0]
    ).SerializeToString()
    get_trial = api_pb2.GetTrialRequest(trial_id=trial_id)
    assert wire.get_trial(trial_id) == get_trial.SerializeToString()
    assert wire.set_trial_system_attribute(trial_id, "k", '"v"') == (
        api_pb2.SetTrialSystemAttributeRequest(trial_id=trial_id, key="k", value='"v"')
    ).SerializeToString()


@pytest.mark.parametrize("study_id", [0, 5, 2**40])
def test_create_new_trial_request_bytes(study_id: int) -> None:
    assert wire.create_new_trial(study_id) == api_pb2.CreateNewTrialRequest(
        study_id=study_id, template_trial_is_none=True
    ).SerializeToString()


def test_reply_parsing_reads_ids_and_states_through_every_field() -> None:
    trials = [
        api_pb2.Trial(trial_id=0, number=0, state=api_pb2.RUNNING),
        api_pb2.Trial(
            trial_id=2**33, number=5, state=api_pb2.COMPLETE, values=[1.0],
            datetime_start="2025-01-01 00:00:00.000000", params={"x": 1.0},
            distributions={"x": "{}"}, user_attributes={"a": "1"},
            system_attributes={"b": "2"}, intermediate_values={3: 0.5},
        ),
        api_pb2.Trial(trial_id=9, number=1, state=api_pb2.FAIL),
    ]
    reply = api_pb2.GetTrialsReply(trials=trials).SerializeToString()
    assert wire.trials_of_reply(reply) == [(0, 0), (2**33, 1), (9, 3)]
    assert wire.single_int(api_pb2.CreateNewTrialReply(trial_id=77).SerializeToString()) == 77
    assert wire.single_int(b"") == 0

    cache = StudyCache()
    cache.absorb(reply)
    assert cache.unfinished == {0}
    assert cache.last_finished == 2**33
    assert cache.complete_or_pruned == 1  # FAIL is finished but not counted by TPE


def get_trials_only(
    handler: Callable[[bytes, grpc.ServicerContext], bytes], virtual_workers: int
) -> tuple[grpc.Server, GeneratorConfig]:
    """A started server that answers GetTrials with `handler` and nothing else, and a
    generator configuration for `virtual_workers` on one channel to it."""
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        wire.SERVICE, {"GetTrials": grpc.unary_unary_rpc_method_handler(handler)}),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    config = GeneratorConfig(f"127.0.0.1:{port}", (1,), Workload("random", 1),
                             virtual_workers=virtual_workers, channels=1)
    return server, config


def test_trials_in_flight_when_the_generator_is_cut_are_counted_as_cut() -> None:
    """A proxy that never answers: the trials its calls hold are cut and counted."""
    release = threading.Event()
    arrived = threading.Semaphore(0)

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        arrived.release()
        release.wait(30)
        return b""

    server, config = get_trials_only(hang, virtual_workers=3)

    async def run_then_cut() -> Any:
        task = asyncio.ensure_future(run_virtual_workers(config, recorder=recorder))
        for _ in range(3):  # every virtual worker's first call is held by the server
            while not arrived.acquire(blocking=False):
                assert not task.done()
                await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    recorder = Recorder()
    try:
        asyncio.run(run_then_cut())
    finally:
        release.set()
        server.stop(grace=None)
    assert recorder.trials == 0 and not recorder.calls  # no call ever returned
    assert recorder.errors == 3
    assert recorder.error_kinds == Counter({"CUT_AT_WIND_DOWN_LIMIT": 3})
    assert list(recorder.trials_per_worker) == [0, 0, 0]  # counted though cut


def test_a_trial_ended_by_an_error_is_counted_by_status_method_and_details() -> None:
    def unavailable(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.UNAVAILABLE, "shard 1 unavailable: connection refused")

    server, config = get_trials_only(unavailable, virtual_workers=2)
    recorder = Recorder()
    try:
        asyncio.run(run_virtual_workers(config, recorder=recorder))  # each gives up after 20
    finally:
        server.stop(grace=None)
    assert recorder.trials == 0
    assert recorder.error_kinds == Counter(
        {"UNAVAILABLE in GetTrials: shard 1 unavailable: connection refused": 40})
    assert list(recorder.trials_per_worker) == [0, 0]  # each gave up with none finished


def test_trials_per_virtual_worker_survive_the_trip_from_the_generator_processes() -> None:
    first, second = Recorder(), Recorder()
    first.trials_per_worker.extend([3, 5])
    second.trials_per_worker.extend([4])
    merged = Recorder()
    for recorder in (first, second):
        merged.merge(Recorder.from_dict(recorder.to_dict()))
    assert sorted(merged.trials_per_worker) == [3, 4, 5]
