"""Running one load (real clients or the generator) through a measured window.

The load processes connect first and report `loaded`; the window opens at `go`
(counters read just before), stays open for the scenario's duration while progress
is printed, and closes when every process has finished its in-flight trials and
reported (counters read then, while the processes still live, before `release`).
"""

from __future__ import annotations

import multiprocessing
import queue
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bench.loadgen.control import ClientProcessSpec
from bench.loadgen.process import GeneratorConfig, generator_main
from bench.loadgen.real import RealClientsConfig, real_clients_main
from bench.loadgen.virtual import Recorder

LOADED_LIMIT = 120.0
REPORT_LIMIT = 120.0

Snapshot = Callable[[list[int]], dict[str, Any]]


class LoadFailed(Exception):
    """The load processes could not start or did not report."""


@dataclass
class LoadOutcome:
    wall: float  # seconds from go to the last report
    trials: int  # completed trials the load processes counted
    before: dict[str, Any]
    after: dict[str, Any]
    recorder: Recorder | None  # generator only
    errors: list[str] = field(default_factory=list)
    progress: list[tuple[float, int]] = field(default_factory=list)


def run_load(
    kind: str,
    configs: list[GeneratorConfig] | list[RealClientsConfig],
    cpus: tuple[int, ...] | None,
    duration: float,
    snapshot: Snapshot,
    tick: Callable[[float, int], None],
) -> LoadOutcome:
    """Runs `configs` (one per process) for `duration` seconds of measured load."""
    context = multiprocessing.get_context("spawn")
    go, stop, release = context.Event(), context.Event(), context.Event()
    results = context.Queue()
    loaded = [context.Event() for _ in configs]
    progress = [context.Value("q", 0, lock=False) for _ in configs]
    main = generator_main if kind == "gen" else real_clients_main
    specs = [ClientProcessSpec(config, cpus, loaded[i], go, stop, release, progress[i], results)
             for i, config in enumerate(configs)]
    processes = [context.Process(target=main, args=(spec,), daemon=True) for spec in specs]
    try:
        for process in processes:
            process.start()
        _wait_loaded(loaded, processes, results)
        pids = [p.pid for p in processes if p.pid is not None]
        before = snapshot(pids)
        go.set()
        start = time.monotonic()
        history = _measure(start, duration, progress, tick)
        stop.set()
        reports = _collect(results, len(processes), processes)
        wall = time.monotonic() - start
        after = snapshot(pids)
    finally:
        stop.set()
        go.set()
        release.set()
        for process in processes:
            process.join(timeout=30)
            if process.is_alive():
                process.kill()
                process.join(timeout=5)
    return _outcome(kind, reports, wall, before, after, history)


def _wait_loaded(loaded: list[Any], processes: list[Any], results: Any) -> None:
    deadline = time.monotonic() + LOADED_LIMIT
    while not all(event.is_set() for event in loaded):
        _raise_early_error(results)
        if any(p.exitcode is not None for p in processes):
            raise LoadFailed("a load process exited before it was ready")
        if time.monotonic() > deadline:
            raise LoadFailed(f"load processes not ready after {LOADED_LIMIT:.0f} s")
        time.sleep(0.05)


def _raise_early_error(results: Any) -> None:
    try:
        status, pid, payload = results.get_nowait()
    except queue.Empty:
        return
    raise LoadFailed(f"load process {pid} failed: {payload}")


def _measure(start: float, duration: float, progress: list[Any],
             tick: Callable[[float, int], None]) -> list[tuple[float, int]]:
    history = []
    while (elapsed := time.monotonic() - start) < duration:
        time.sleep(min(1.0, duration - elapsed))
        elapsed = time.monotonic() - start
        done = sum(value.value for value in progress)
        history.append((round(elapsed, 2), done))
        tick(elapsed, done)
    return history


def _collect(results: Any, count: int, processes: list[Any]) -> list[tuple[str, int, Any]]:
    reports: list[tuple[str, int, Any]] = []
    deadline = time.monotonic() + REPORT_LIMIT
    while len(reports) < count:
        try:
            reports.append(results.get(timeout=0.5))
        except queue.Empty:
            if time.monotonic() > deadline:
                raise LoadFailed(f"{count - len(reports)} load processes did not report") from None
            if all(p.exitcode is not None for p in processes) and results.empty():
                raise LoadFailed("load processes exited without reporting") from None
    return reports


def _outcome(kind: str, reports: list[tuple[str, int, Any]], wall: float,
             before: dict[str, Any], after: dict[str, Any],
             history: list[tuple[float, int]]) -> LoadOutcome:
    errors = [f"process {pid}: {payload}" for status, pid, payload in reports if status != "ok"]
    payloads = [payload for status, _, payload in reports if status == "ok"]
    if kind == "gen":
        recorder = Recorder()
        for payload in payloads:
            recorder.merge(Recorder.from_dict(payload))
        if recorder.errors:
            kinds = ", ".join(f"{kind} {n}" for kind, n in recorder.error_kinds.most_common())
            errors.append(f"{recorder.errors} trials abandoned on RPC errors ({kinds})")
        return LoadOutcome(wall, recorder.trials, before, after, recorder, errors, history)
    trials = sum(payload["trials"] for payload in payloads)
    for payload in payloads:
        errors.extend(payload["errors"][:3])
    return LoadOutcome(wall, trials, before, after, None, errors, history)
