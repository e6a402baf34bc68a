"""Thousands of client connections at once, some of them running trials.

Client processes (spawned) each open their share of the connections within a
few seconds (one gRPC channel per connection: a local subchannel pool keeps
channels from sharing one), wait until every one is ready or has failed, then
run the load generator's virtual Optuna workers (`bench.loadgen`, the requests a
`GrpcStorageProxy` worker sends, RandomSampler) on the first `active` of them
for `duration` seconds, while the others stay open and idle. Each process
reports how many connections it opened and how many failed, the RPCs that
failed, and every call's latency by method.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from bench.loadgen.process import CHANNEL_OPTIONS, _calls_of
from bench.loadgen.virtual import Recorder, VirtualWorker, run_worker
from bench.loadgen.workload import Workload

CONNECT_LIMIT = 120.0


@dataclass
class CrowdReport:
    opened: int = 0
    failed_to_connect: int = 0
    connect_seconds: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)
    recorder: dict = field(default_factory=dict)


async def _crowd(target: str, connections: int, active: int, study_ids: tuple[int, ...],
                 duration: float, seed: int) -> CrowdReport:
    report = CrowdReport()
    started = time.monotonic()
    channels = [grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS)
                for _ in range(connections)]
    try:
        ready = await asyncio.gather(
            *(asyncio.wait_for(channel.channel_ready(), CONNECT_LIMIT) for channel in channels),
            return_exceptions=True)
        report.connect_seconds = time.monotonic() - started
        report.failed_to_connect = sum(isinstance(r, BaseException) for r in ready)
        report.opened = connections - report.failed_to_connect
        recorder = Recorder()
        workers = [
            VirtualWorker(_calls_of(channels[i]), study_ids[i % len(study_ids)],
                          Workload(), recorder, seed=seed * 100_003 + i)
            for i in range(active)
        ]
        for worker in workers:  # every failed call, by status
            worker._call = _counting(worker._call, report.errors)  # type: ignore[method-assign]
        stop_at = time.monotonic() + duration
        await asyncio.gather(
            *(run_worker(w, lambda: time.monotonic() < stop_at) for w in workers))
        report.recorder = recorder.to_dict()
    finally:
        await asyncio.gather(*(channel.close() for channel in channels))
    return report


def _counting(call, errors: Counter[str]):  # type: ignore[no-untyped-def]
    async def counted(method: str, request: bytes) -> bytes:
        try:
            return await call(method, request)
        except grpc.RpcError as exc:
            errors[f"{method} {exc.code().name}"] += 1
            raise
    return counted


def _crowd_process(results: multiprocessing.Queue, *args: object) -> None:
    results.put(asyncio.run(_crowd(*args)))  # type: ignore[arg-type]


def run_crowd(target: str, connections: int, active: int, study_ids: tuple[int, ...],
              duration: float, processes: int = 4) -> list[CrowdReport]:
    """`connections` connections to `target` from `processes` processes, `active` of them
    running trials for `duration` seconds; every process's report."""
    context = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = context.Queue()
    children = [
        context.Process(target=_crowd_process, daemon=True, args=(
            results, target, connections // processes + (i < connections % processes),
            active // processes + (i < active % processes), study_ids, duration, i))
        for i in range(processes)
    ]
    for child in children:
        child.start()
    reports: list[CrowdReport] = []
    try:
        deadline = time.monotonic() + CONNECT_LIMIT + duration + 120
        while len(reports) < processes and time.monotonic() < deadline:
            try:
                reports.append(results.get(timeout=1.0))
            except queue.Empty:
                if not any(c.is_alive() for c in children):
                    break
    finally:
        for child in children:
            child.join(timeout=30)
            if child.is_alive():
                child.kill()
                child.join()
    assert len(reports) == processes, "a crowd process gave no report"
    return reports


def merged(reports: list[CrowdReport]) -> tuple[CrowdReport, Recorder]:
    total = CrowdReport()
    recorder = Recorder()
    for report in reports:
        total.opened += report.opened
        total.failed_to_connect += report.failed_to_connect
        total.connect_seconds = max(total.connect_seconds, report.connect_seconds)
        total.errors.update(report.errors)
        recorder.merge(Recorder.from_dict(report.recorder))
    return total, recorder


def latency_percentiles(recorder: Recorder) -> dict[str, dict[str, float]]:
    """Per method: calls, p50 and p99 in milliseconds."""
    figures = {}
    for method, samples in sorted(recorder.latencies.items()):
        ordered = sorted(samples)
        figures[method] = {
            "calls": len(ordered),
            "p50_ms": round(ordered[len(ordered) // 2] * 1000, 2),
            "p99_ms": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000, 2),
        }
    return figures


def rss_mib(pid: int) -> float:
    """Resident memory of process `pid`, MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


class RssWatch:
    """The highest RSS of each of some processes, sampled from a thread."""

    def __init__(self, pids: dict[str, int], interval: float = 0.2) -> None:
        self.peak = dict.fromkeys(pids, 0.0)
        self._pids = pids
        self._done = threading.Event()
        self._interval = interval
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._done.wait(self._interval):
            for name, pid in self._pids.items():
                self.peak[name] = max(self.peak[name], rss_mib(pid))

    def __enter__(self) -> RssWatch:
        for name, pid in self._pids.items():
            self.peak[name] = rss_mib(pid)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

