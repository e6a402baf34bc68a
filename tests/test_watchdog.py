"""The worker's side of the watchdog: what counts as proof that its handlers serve.

A real gRPC server with a pool of one handler thread (`CountingExecutor`), the
watchdog's beat service and a method that takes a while, on a Unix socket, and the
worker's `Pinger` sending to it; `Stall`, which the health service asks whether
the same pool takes work. The supervisor's side (killing a worker whose beat went
stale) is `test_supervisor` and `test_watchdog_and_reload`; a worker's health with
its handlers blocked is `test_health`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from shardproxy.watchdog import CountingExecutor, Pinger, Stall, beat_handler

INTERVAL = 0.2  # seconds between beats; a beat RPC waits at most 4 of them
WORK = 0.05  # seconds each call of the test's own method takes on the one handler thread
CALLERS = 60  # each keeps one call in flight: the queue holds 3 s of work
LONG_WORK = 0.5  # seconds a call of the other method takes: longer than an interval


class Beats:
    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self) -> None:
        self.times.append(time.monotonic())

    def between(self, start: float, end: float) -> list[float]:
        return [t for t in self.times if start <= t <= end]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, CountingExecutor, Beats]]:
    """(target, the handlers' pool of one thread, the beats recorded)."""
    beats = Beats()
    pool = CountingExecutor(max_workers=1)

    def work(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(WORK)
        return b""

    def long_work(request: bytes, context: grpc.ServicerContext) -> bytes:
        time.sleep(LONG_WORK)
        return b""

    server = grpc.server(pool, handlers=[
        beat_handler(beats),
        grpc.method_handlers_generic_handler("test.Slow", {
            "Work": grpc.unary_unary_rpc_method_handler(work),
            "LongWork": grpc.unary_unary_rpc_method_handler(long_work),
        }),
    ])
    target = f"unix:{tmp_path / 'worker.sock'}"
    server.add_insecure_port(target)
    server.start()
    try:
        yield target, pool, beats
    finally:
        server.stop(0)
        pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def queue_kept_full(target: str, callers: int, method: str = "Work") -> Iterator[None]:
    """`callers` threads each keeping one call of a slow method in flight, from a
    second before entering (the queue fills) until leaving."""
    stop = threading.Event()

    def calling() -> None:
        with grpc.insecure_channel(target) as channel:
            call = channel.unary_unary(f"/test.Slow/{method}")
            while not stop.is_set():
                call(b"", timeout=60)

    pool = ThreadPoolExecutor(max_workers=callers)
    futures = [pool.submit(calling) for _ in range(callers)]
    try:
        time.sleep(1.0)
        yield
    finally:
        stop.set()
        for future in futures:
            future.result(timeout=30)
        pool.shutdown()


def beat_gaps(pinger: Pinger, beats: Beats, seconds: float) -> list[float]:
    """Seconds between the beats `pinger` records in `seconds` from its start, and
    from the start and to the end."""
    pinger.start()
    try:
        start = time.monotonic()
        time.sleep(seconds)
        end = time.monotonic()
    finally:
        pinger.close()
    recorded = beats.between(start, end)
    return [b - a for a, b in zip([start, *recorded], [*recorded, end], strict=True)]


def test_the_pool_counts_a_task_when_a_thread_begins_it_not_when_it_is_queued() -> None:
    pool = CountingExecutor(max_workers=1)
    release = threading.Event()
    try:
        pool.submit(release.wait)
        queued = [pool.submit(lambda: None) for _ in range(5)]
        time.sleep(0.1)
        assert pool.begun == 1  # the one thread is busy: five wait in the queue
        release.set()
        for future in queued:
            future.result(timeout=5)
        assert pool.begun == 6
    finally:
        release.set()
        pool.shutdown()


def test_handlers_that_keep_taking_calls_keep_beating_while_a_beat_would_wait_behind_them(
    server: tuple[str, CountingExecutor, Beats],
) -> None:
    target, pool, beats = server
    pinger = Pinger(target, INTERVAL, beats, lambda: pool.begun)
    # 60 callers on one thread taking 0.05 s a call: each call, and a beat RPC,
    # waits about 3 s in the queue, far past the 0.8 s a beat RPC is given, while
    # calls begin four times an interval.
    with queue_kept_full(target, CALLERS):
        gaps = beat_gaps(pinger, beats, 3.0)
    assert len(gaps) >= 6, gaps
    # Each look should find calls begun; one that finds none sends a beat RPC and
    # the next look goes on without waiting for it: beats at most 2 intervals
    # apart (room for 4 here). Beats only through the queue, as at first, left
    # none in the 3 s; a pinger that waited on its beat RPC, up to 4 intervals,
    # gave gaps of 6.
    assert max(gaps) < 4 * INTERVAL, gaps


def test_calls_longer_than_an_interval_beat_at_the_first_look_after_each_begins(
    server: tuple[str, CountingExecutor, Beats],
) -> None:
    target, pool, beats = server
    pinger = Pinger(target, INTERVAL, beats, lambda: pool.begun)
    with queue_kept_full(target, 8, "LongWork"):  # 4 s of calls queued
        gaps = beat_gaps(pinger, beats, 4.0)
    # A call begins every 0.5 s; most looks between two find none and send a beat
    # RPC, which waits behind the queue. The looks go on meanwhile, so the first
    # one after the next call began beats: at most a call and an interval apart,
    # room for one more interval here. A pinger that waited for its beat RPC left
    # a gap of 3.8 s.
    assert max(gaps) < LONG_WORK + 2 * INTERVAL, gaps


def test_a_pool_whose_every_thread_is_stuck_beats_no_more(
    server: tuple[str, CountingExecutor, Beats],
) -> None:
    target, pool, beats = server
    pinger = Pinger(target, INTERVAL, beats, lambda: pool.begun)
    pinger.start()
    stuck = threading.Event()
    try:
        time.sleep(1.0)
        idle_beats = len(beats.times)
        pool.submit(stuck.wait)  # the only handler thread, stuck until released
        time.sleep(0.1)
        start = time.monotonic()
        time.sleep(2.0)
        assert beats.between(start, time.monotonic()) == []
    finally:
        stuck.set()
        pinger.close()
    # While idle, the beats came through the beat RPC: nothing else begun a call.
    assert idle_beats >= 3


def stalls_seen(stall: Stall, seconds: float) -> list[float]:
    """What `stall` says when looked at every 0.05 s for `seconds`."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append(stall.look(time.monotonic()))
        time.sleep(0.05)
    return seen


def test_an_idle_pool_is_not_stalled_nor_one_whose_queue_is_seconds_deep(
    server: tuple[str, CountingExecutor, Beats],
) -> None:
    target, pool, _ = server
    stall = Stall(pool)
    # Idle: each look that finds nothing begun queues a task the next look finds run,
    # which the pool does not count as a call (the watchdog's pinger would take it
    # for one and send no beat RPC).
    assert max(stalls_seen(stall, 1.0)) < 0.5
    assert pool.begun == 0
    with queue_kept_full(target, CALLERS):  # 3 s of calls queued before the one thread
        busy = stalls_seen(stall, 2.0)
    assert max(busy) < 0.5, busy


def test_a_pool_whose_every_thread_is_stuck_stalls_until_released() -> None:
    pool = CountingExecutor(max_workers=1)
    stuck = threading.Event()
    try:
        stall = Stall(pool)
        pool.submit(stuck.wait)
        time.sleep(0.1)
        seen = stalls_seen(stall, 1.5)
        assert seen[-1] > 1.2, seen
        assert seen == sorted(seen), seen  # it only grows while nothing begins
        stuck.set()
        assert max(stalls_seen(stall, 0.5)[-3:]) < 0.5
    finally:
        stuck.set()
        pool.shutdown()
