"""Virtual Optuna workers: the RPC sequence of `study.optimize` on asyncio.

One `VirtualWorker` stands for one `GrpcStorageProxy` client running trials in a
loop. It sends what the client sends, in the same order, with the same payloads,
and keeps the same `GrpcClientCache` bookkeeping (unfinished trial ids, highest
finished trial id) from the GetTrials replies, so the proxy sees the same deltas.
What it skips is the client's CPU: no protobuf objects, no FrozenTrials, no
sampling maths.

Per trial, as `Study._run_trial` drives it (Optuna 5):

    ask:       GetTrials (waiting trials), CreateNewTrial, GetTrial
    TPE:       GetTrials (search space, cached for the trial); once the cache holds
               n_startup_trials complete trials, GetTrials again (constant liar reads
               uncached) and SetTrialSystemAttribute "tpe:relative_params:<i>"
    suggest:   SetTrialParameter per parameter
    tell:      GetTrial, SetTrialStateValues(COMPLETE, value)
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from array import array
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc

from bench.loadgen import wire
from bench.loadgen.workload import HIGH, LOW, Workload

METHODS = (
    "GetTrials",
    "CreateNewTrial",
    "GetTrial",
    "SetTrialParameter",
    "SetTrialSystemAttribute",
    "SetTrialStateValues",
)
# TPE stores its relative params in chunks of this many characters.
_RELATIVE_PARAMS_KEY = "tpe:relative_params"
_SYSTEM_ATTR_MAX_LENGTH = 2045
_DETAILS_SHOWN = 60  # characters of a failed call's status details kept in its error kind

Call = Callable[[bytes], Awaitable[bytes]]


@dataclass
class Recorder:
    """Calls, request bytes and latencies per method, and the trials completed."""

    trials: int = 0
    errors: int = 0
    calls: Counter[str] = field(default_factory=Counter)
    # What ended each abandoned trial: a gRPC status code's name, or an exception's.
    error_kinds: Counter[str] = field(default_factory=Counter)
    request_bytes: Counter[str] = field(default_factory=Counter)
    latencies: dict[str, array] = field(default_factory=dict)
    # The same, of the calls made after their worker's first trial: without the
    # start, when every virtual worker sends its first call at once.
    steady_latencies: dict[str, array] = field(default_factory=dict)
    # Trials each virtual worker finished, one entry per worker once it stopped: a
    # worker the proxy starves finishes fewer than the others.
    trials_per_worker: array = field(default_factory=lambda: array("l"))

    def record(self, method: str, request_size: int, seconds: float, steady: bool) -> None:
        self.calls[method] += 1
        self.request_bytes[method] += request_size
        for latencies in (self.latencies, self.steady_latencies) if steady else (self.latencies,):
            samples = latencies.get(method)
            if samples is None:
                samples = latencies[method] = array("d")
            samples.append(seconds)

    def merge(self, other: Recorder) -> None:
        self.trials += other.trials
        self.errors += other.errors
        self.error_kinds.update(other.error_kinds)
        self.calls.update(other.calls)
        self.request_bytes.update(other.request_bytes)
        self.trials_per_worker.extend(other.trials_per_worker)
        for mine, theirs in ((self.latencies, other.latencies),
                             (self.steady_latencies, other.steady_latencies)):
            for method, samples in theirs.items():
                mine.setdefault(method, array("d")).extend(samples)

    def to_dict(self) -> dict:
        return {
            "trials": self.trials,
            "errors": self.errors,
            "error_kinds": dict(self.error_kinds),
            "calls": dict(self.calls),
            "request_bytes": dict(self.request_bytes),
            "latencies": {m: s.tobytes() for m, s in self.latencies.items()},
            "steady_latencies": {m: s.tobytes() for m, s in self.steady_latencies.items()},
            "trials_per_worker": self.trials_per_worker.tobytes(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> Recorder:
        recorder = cls(data["trials"], data["errors"], Counter(data["calls"]),
                       Counter(data.get("error_kinds", {})), Counter(data["request_bytes"]))
        for key, latencies in (("latencies", recorder.latencies),
                               ("steady_latencies", recorder.steady_latencies)):
            for method, raw in data.get(key, {}).items():
                samples = array("d")
                samples.frombytes(raw)
                latencies[method] = samples
        recorder.trials_per_worker.frombytes(data.get("trials_per_worker", b""))
        return recorder


@dataclass
class StudyCache:
    """GrpcClientCacheEntry's bookkeeping, without the trials themselves."""

    unfinished: set[int] = field(default_factory=set)
    last_finished: int = -1
    complete_or_pruned: int = 0

    def request(self, study_id: int) -> bytes:
        return wire.get_trials(study_id, self.unfinished, self.last_finished)

    def absorb(self, reply: bytes) -> None:
        for trial_id, state in wire.trials_of_reply(reply):
            if state not in wire.FINISHED:
                self.unfinished.add(trial_id)
                continue
            # A finished trial is sent once: afterwards it is neither above
            # last_finished nor among the unfinished ids.
            self.unfinished.discard(trial_id)
            self.last_finished = max(self.last_finished, trial_id)
            if state != wire.FAIL:
                self.complete_or_pruned += 1


class VirtualWorker:
    """One client's trial loop over per-method calls."""

    def __init__(
        self,
        calls: dict[str, Call],
        study_id: int,
        workload: Workload,
        recorder: Recorder,
        seed: int,
        cache: StudyCache | None = None,
    ) -> None:
        self._calls = calls
        self._study_id = study_id
        self._workload = workload
        self.recorder = recorder
        self._rng = random.Random(seed)
        self.cache = cache or StudyCache()
        self._create_request = wire.create_new_trial(study_id)
        distribution = workload.distribution_json()
        self._names = workload.param_names
        self._tails = [wire.param_tail(name, distribution) for name in self._names]
        self._tpe_after = max(1, workload.n_startup_trials)
        self._trials_done = 0  # this worker's own
        self.calling = ""  # the method of the call in flight, or of the last one

    async def _call(self, method: str, request: bytes) -> bytes:
        self.calling = method
        start = time.perf_counter()
        reply = await self._calls[method](request)
        self.recorder.record(method, len(request), time.perf_counter() - start,
                             steady=self._trials_done > 0)
        return reply

    async def _refresh(self) -> None:
        self.cache.absorb(await self._call("GetTrials", self.cache.request(self._study_id)))

    async def run_trial(self) -> None:
        await self._refresh()
        trial_id = wire.single_int(await self._call("CreateNewTrial", self._create_request))
        await self._call("GetTrial", wire.get_trial(trial_id))
        values = [self._rng.uniform(LOW, HIGH) for _ in self._names]
        if self._workload.sampler == "tpe":
            await self._refresh()
            if self.cache.complete_or_pruned >= self._tpe_after:
                await self._refresh()
                await self._store_relative_params(trial_id, values)
        for tail, value in zip(self._tails, values, strict=True):
            await self._call("SetTrialParameter", wire.set_trial_parameter(trial_id, tail, value))
        await self._call("GetTrial", wire.get_trial(trial_id))
        objective = sum(v * v for v in values)
        request = wire.set_trial_state_values(trial_id, wire.COMPLETE, [objective])
        await self._call("SetTrialStateValues", request)
        self.recorder.trials += 1
        self._trials_done += 1

    async def _store_relative_params(self, trial_id: int, values: Sequence[float]) -> None:
        text = json.dumps(dict(zip(self._names, values, strict=True)))
        for i in range(0, len(text), _SYSTEM_ATTR_MAX_LENGTH):
            key = f"{_RELATIVE_PARAMS_KEY}:{i // _SYSTEM_ATTR_MAX_LENGTH}"
            request = wire.set_trial_system_attribute(
                trial_id, key, json.dumps(text[i : i + _SYSTEM_ATTR_MAX_LENGTH])
            )
            await self._call("SetTrialSystemAttribute", request)


def error_kind(exc: Exception, method: str) -> str:
    """What ended a trial, as the run's errors list it: the status code, the method
    and the start of the status details (which say what failed, e.g. which shard or
    the database), or the exception's type where the reply did not parse."""
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{exc.code().name} in {method}: {(exc.details() or '')[:_DETAILS_SHOWN]}"
    return type(exc).__name__


async def run_worker(
    worker: VirtualWorker,
    keep_going: Callable[[], bool],
    max_trials: int | None = None,
    max_errors: int = 20,
) -> None:
    """Trials until `keep_going()` is false (checked between trials) or `max_trials`."""
    done = errors = 0
    try:
        while keep_going() and (max_trials is None or done < max_trials):
            try:
                await worker.run_trial()
            except (grpc.RpcError, ValueError, IndexError) as exc:
                # The RPC failed or its reply did not parse: the trial is abandoned, as
                # a crashed worker's would be, and the worker goes on with a new one.
                worker.recorder.errors += 1
                worker.recorder.error_kinds[error_kind(exc, worker.calling)] += 1
                errors += 1
                if errors >= max_errors:
                    return
                await asyncio.sleep(0.05)
                continue
            except asyncio.CancelledError:
                # The generator's wind-down limit passed with this trial in flight.
                worker.recorder.errors += 1
                worker.recorder.error_kinds["CUT_AT_WIND_DOWN_LIMIT"] += 1
                raise
            done += 1
    finally:
        worker.recorder.trials_per_worker.append(done)
