"""Soak: the proxy's RSS under `--cache-memory` while the studies read outgrow it.

`--soak-studies` studies of `--soak-trials` COMPLETE trials each (one float
parameter, one value) are bulk-inserted like the cached-trials part's. By the
cache's own count (`StudyCache.memory_bytes`: the trials' encodings, which a full
read's reply is, plus 16 bytes a trial) they hold about four times
`--soak-cache-memory` at the defaults. A proxy started with that bound is warmed up
and reads a small study on each worker, so that one-off costs fall before the
baseline is read.

Then `--soak-readers` threads, each on a connection of its own, read the studies in
full (raw GetTrials, the reply discarded) for `--soak-seconds`, taking them
round-robin over all of them: a worker keeps only the few it read last, and the
next one asked for is always one it read longer ago, so after the first pass every
read loads an evicted study again in full and the cache churns at its bound all
along. The tree's and each worker's RSS are sampled once a second (all kept); the
figure is the tree's largest growth over its baseline, against the bound.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import itertools
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from bench import databases
from bench.memory.cached_trials import full_read, study_owned_by
from bench.memory.proctree import rss_kib, tree_rss, workers
from bench.memory.proxy import FULL_READ_OPTIONS, SETTLE, get_all_trials, serve, warm_up
from shardproxy.cache import TRIAL_OVERHEAD

SAMPLE_EVERY = 1.0  # seconds between RSS samples


def fill_studies(url: str, count: int, trials: int, tag: str) -> list[int]:
    """`count` new studies of `trials` COMPLETE trials each, by id."""
    study_ids = databases.create_studies(url, [f"{tag}-{n}" for n in range(count)])
    for study_id in study_ids:
        databases.prefill(url, study_id, trials, ("x",))
    return study_ids


def small_study_per_worker(url: str, worker_count: int, tag: str) -> list[int]:
    """A 100-trial study owned by each worker: its first read's one-off costs."""
    study_ids = [study_owned_by(url, owner, worker_count, f"{tag}-small{owner}")
                 for owner in range(worker_count)]
    for study_id in study_ids:
        databases.prefill(url, study_id, 100, ("x",))
    return study_ids


def snapshot(root: int, pids: dict[int, int]) -> dict[str, Any]:
    """RSS of the tree and of each worker, and of every process of the tree."""
    tree = tree_rss(root)
    return {"tree_kib": tree["total_kib"], "processes": tree["processes"],
            "workers_kib": {f"w{index}": rss_kib(pid) for index, pid in sorted(pids.items())}}


def kib(rss: dict[str, Any], column: str) -> int:
    """One column of a snapshot or sample: "tree" or a worker's ("w0")."""
    return rss["tree_kib"] if column == "tree" else rss["workers_kib"][column]


class Readers:
    """Threads reading studies in full, round-robin over `study_ids`, until `stop`.

    `replies` holds each reply's size in the order they came (list.append is atomic),
    `first_reply` the size of each study's first, which is what its cache holds.
    """

    def __init__(self, target: str, study_ids: Sequence[int], count: int) -> None:
        self.replies: list[int] = []
        self.first_reply: dict[int, int] = {}
        self._target = target
        self._turns: Iterator[int] = itertools.cycle(study_ids)
        self._turn_lock = threading.Lock()  # a cycle shared by threads is not thread-safe
        self._stopping = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(count, "soak-reader")
        self._running = [self._pool.submit(self._read_until_stopped) for _ in range(count)]

    def _next_study(self) -> int:
        with self._turn_lock:
            return next(self._turns)

    def _read_until_stopped(self) -> None:
        with grpc.insecure_channel(self._target, options=FULL_READ_OPTIONS) as channel:
            while not self._stopping.is_set():
                study_id = self._next_study()
                size = len(get_all_trials(channel, study_id))
                self.first_reply.setdefault(study_id, size)
                self.replies.append(size)

    def failed(self) -> bool:
        """A reader ended before it was stopped: its error is raised by `stop`."""
        return any(future.done() for future in self._running)

    def stop(self) -> None:
        """Lets every reader finish the read it is in, then raises a reader's error."""
        self._stopping.set()
        self._pool.shutdown()
        for future in self._running:
            future.result()


def sample(root: int, pids: dict[int, int], since: float, reads: int) -> dict[str, Any]:
    rss = snapshot(root, pids)
    del rss["processes"]  # the tree's and the workers' are enough once a second
    return {"t": round(time.monotonic() - since, 1), "reads": reads, **rss}


def figures(column: str, baseline: dict[str, Any], samples: list[dict[str, Any]],
            final: dict[str, Any]) -> dict[str, int]:
    peak = max(kib(s, column) for s in samples)
    return {"baseline_kib": kib(baseline, column), "max_kib": peak,
            "final_kib": kib(final, column), "max_growth_kib": peak - kib(baseline, column)}


def measure_soak(url: str, args: argparse.Namespace, say: Any) -> dict[str, Any]:
    tag = f"soak-{uuid.uuid4().hex[:6]}"
    say(f"inserting {args.soak_studies} studies of {args.soak_trials} trials ...")
    started = time.monotonic()
    study_ids = fill_studies(url, args.soak_studies, args.soak_trials, tag)
    small = small_study_per_worker(url, args.workers, tag)
    prefill_s = time.monotonic() - started
    bound = args.soak_cache_memory
    flags = ("--cache-memory", str(bound))
    with serve(url, args.workers, args.server_nofile, flags) as (proxy, stderr):
        pids = workers(proxy.pid)
        warm_up(proxy.target)
        for study_id in small:
            full_read(proxy, study_id)
        time.sleep(SETTLE)
        baseline = snapshot(proxy.pid, pids)
        say(f"reading round-robin with {args.soak_readers} threads for "
            f"{args.soak_seconds:.0f} s, baseline {baseline['tree_kib'] / 1024:.1f} MiB ...")
        samples: list[dict[str, Any]] = []
        started = time.monotonic()
        readers = Readers(proxy.target, study_ids, args.soak_readers)
        try:
            # Sampled on a fixed beat, however long a sample takes.
            for beat in itertools.count():
                time.sleep(max(0.0, started + beat * SAMPLE_EVERY - time.monotonic()))
                samples.append(sample(proxy.pid, pids, started, len(readers.replies)))
                if beat * SAMPLE_EVERY >= args.soak_seconds or readers.failed():
                    break
        finally:
            readers.stop()
        seconds = time.monotonic() - started  # to the end of the last read
        samples.append(sample(proxy.pid, pids, started, len(readers.replies)))
        time.sleep(SETTLE)
        final = snapshot(proxy.pid, pids)
    # The cache's own count of each study: its encodings (the reply) and 16 bytes a trial.
    cached_bytes = sum(size + args.soak_trials * TRIAL_OVERHEAD
                       for size in readers.first_reply.values())
    rss = {column: figures(column, baseline, samples, final)
           for column in ("tree", *baseline["workers_kib"])}
    return {
        "workers": args.workers, "cache_memory_bytes": bound, "studies": len(study_ids),
        "trials_per_study": args.soak_trials, "readers": args.soak_readers,
        "prefill_s": prefill_s, "seconds": seconds, "reads": len(readers.replies),
        "reply_bytes": sum(readers.replies), "studies_read": len(readers.first_reply),
        "cached_bytes_by_cache_count": cached_bytes,
        "rss": rss, "max_growth_over_bound": rss["tree"]["max_growth_kib"] * 1024 / bound,
        "baseline": baseline, "final": final, "samples": samples,
        "proxy_exit_code": proxy.process.returncode, "proxy_stderr": stderr,
    }
