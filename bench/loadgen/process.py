"""Load generator processes: many virtual workers per process on grpc.aio.

`run_virtual_workers` is the in-process core (the validation test calls it
directly); `generator_main` is the entry of a spawned process that the runner starts
several of, and which follows the runner's handshake (`control.ClientProcessSpec`):
it waits for `go`, runs until `stop`, reports its `Recorder` and waits for `release`
so its CPU time can be read while it still lives.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from multiprocessing.synchronize import Event
from typing import Any

import grpc

from bench.loadgen import wire
from bench.loadgen.control import ClientProcessSpec
from bench.loadgen.virtual import METHODS, Recorder, StudyCache, VirtualWorker, run_worker
from bench.loadgen.workload import Workload

CONNECT_LIMIT = 60.0  # seconds for every channel to connect
# Seconds a connected generator waits for the runner's go before giving up.
START_LIMIT = 600.0
# Seconds the trials in flight at the end of the window have to finish before they
# are cut (a proxy that barely serves the load would otherwise keep the generator
# from reporting at all: the runner waits bench.loads.REPORT_LIMIT for it).
WIND_DOWN_LIMIT = 60.0
CHANNEL_OPTIONS = [
    ("grpc.max_receive_message_length", -1),
    # Without it, channels of one process to one target share a single TCP
    # connection; SO_REUSEPORT spreads connections, not RPCs, over proxy workers.
    ("grpc.use_local_subchannel_pool", 1),
]


@dataclass(frozen=True)
class GeneratorConfig:
    target: str
    study_ids: tuple[int, ...]
    workload: Workload
    virtual_workers: int = 100
    channels: int = 8
    seed: int = 0
    # (highest finished trial id, complete trials): workers that have already read
    # the whole study, as long-running workers joining a big study would have.
    synced: tuple[int, int] | None = None
    max_trials_per_worker: int | None = None


def _calls_of(channel: grpc.aio.Channel) -> dict[str, Any]:
    # No serializers: requests and replies stay bytes.
    return {m: channel.unary_unary(wire.method_path(m)) for m in METHODS}


def _initial_cache(config: GeneratorConfig) -> StudyCache:
    if config.synced is None:
        return StudyCache()
    last_finished, complete = config.synced
    return StudyCache(last_finished=last_finished, complete_or_pruned=complete)


async def run_virtual_workers(
    config: GeneratorConfig,
    keep_going: Callable[[], bool] = lambda: True,
    ready: Callable[[], Awaitable[None]] | None = None,
    recorder: Recorder | None = None,
) -> Recorder:
    """Runs the configured virtual workers; `ready` is awaited once channels are up."""
    recorder = recorder if recorder is not None else Recorder()
    channels = [
        grpc.aio.insecure_channel(config.target, options=CHANNEL_OPTIONS)
        for _ in range(max(1, min(config.channels, config.virtual_workers)))
    ]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(channel.channel_ready() for channel in channels)), CONNECT_LIMIT
        )
        calls = [_calls_of(channel) for channel in channels]
        workers = [
            VirtualWorker(
                calls[i % len(calls)],
                config.study_ids[i % len(config.study_ids)],
                config.workload,
                recorder,
                seed=config.seed * 100_003 + i,
                cache=_initial_cache(config),
            )
            for i in range(config.virtual_workers)
        ]
        if ready is not None:
            await ready()
        await asyncio.gather(
            *(run_worker(w, keep_going, config.max_trials_per_worker) for w in workers)
        )
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return recorder


async def _wait_event(event: Event, poll: float = 0.01) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + START_LIMIT
    while not event.is_set():
        if loop.time() > deadline:
            raise TimeoutError("the runner never said go")
        await asyncio.sleep(poll)


async def _run_between(spec: ClientProcessSpec[GeneratorConfig]) -> Recorder:
    """Connects, says `loaded`, starts trials at `go`, stops starting new ones at `stop`."""
    recorder = Recorder()

    async def ready() -> None:
        spec.loaded.set()
        await _wait_event(spec.go)

    run = asyncio.ensure_future(
        run_virtual_workers(spec.config, lambda: not spec.stop.is_set(), ready, recorder)
    )
    loop = asyncio.get_running_loop()
    cut_at: float | None = None
    while not run.done():
        await asyncio.wait({run}, timeout=0.25)
        spec.progress.value = recorder.trials
        if spec.stop.is_set() and cut_at is None:
            cut_at = loop.time() + WIND_DOWN_LIMIT
        if cut_at is not None and loop.time() > cut_at and not run.done():
            run.cancel()  # each trial still in flight is counted as cut (`run_worker`)
            with contextlib.suppress(asyncio.CancelledError):
                await run
            return recorder
    return run.result()


def generator_main(spec: ClientProcessSpec[GeneratorConfig]) -> None:
    spec.pin()
    try:
        recorder = asyncio.run(_run_between(spec))
        spec.report("ok", recorder.to_dict())
    except Exception as exc:  # reported to the runner, which prints it
        spec.report("error", f"{type(exc).__name__}: {exc}")
    spec.wait_release()
