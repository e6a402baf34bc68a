"""Cached trials: the owner worker's memory per trial of a study read once in full.

A study of N finished trials is bulk-inserted, a fresh proxy started and warmed
up, and the study read in full as a new `GrpcStorageProxy` reads it first; the
owner worker's RSS delta divided by N is the figure, with the default cache
limit it implies (`cache_limit`).
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import grpc

from bench import databases, systems
from bench.memory.proctree import connections_by_worker, rss_kib, workers
from bench.memory.proxy import FULL_READ_OPTIONS, SETTLE, get_all_trials, serve, warm_up


def study_owned_by(url: str, owner: int, shard_count: int, tag: str) -> int:
    """A new empty study whose id the shard `owner` owns."""
    from shardproxy.routing import owner_of

    for attempt in range(4 * shard_count):
        (study_id,) = databases.create_studies(url, [f"{tag}-{attempt}"])
        if owner_of(study_id, shard_count) == owner:
            return study_id
    raise RuntimeError(f"no study id for shard {owner}")


def full_read(proxy: systems.RunningProxy, study_id: int) -> tuple[float, int, str]:
    """One full GetTrials on a new connection: (seconds, reply bytes, front worker)."""
    with grpc.insecure_channel(proxy.target, options=FULL_READ_OPTIONS) as channel:
        start = time.perf_counter()
        reply = get_all_trials(channel, study_id)
        seconds = time.perf_counter() - start
        # The only client connection open now: the worker holding it is the front.
        held = connections_by_worker(proxy.pid, proxy.port)
    return seconds, len(reply), ",".join(w for w, n in held.items() if n) or "?"


def measure_cached_trials(url: str, size: int, args: argparse.Namespace,
                          say: Any) -> dict[str, Any]:
    from shardproxy.routing import owner_of

    tag = f"memory-{uuid.uuid4().hex[:6]}"
    (big,) = databases.create_studies(url, [f"{tag}-{size}"])
    owner = owner_of(big, args.workers)
    small = study_owned_by(url, owner, args.workers, f"{tag}-small")
    started = time.monotonic()
    databases.prefill(url, big, size, ("x",))
    databases.prefill(url, small, 100, ("x",))
    prefill_s = time.monotonic() - started
    with serve(url, args.workers, args.server_nofile) as (proxy, _):
        pids = workers(proxy.pid)

        def settled_rss() -> dict[str, int]:
            time.sleep(SETTLE)
            return {f"w{index}": rss_kib(pid) for index, pid in pids.items()}

        warm_up(proxy.target)
        full_read(proxy, small)
        before = settled_rss()
        say(f"reading the {size}-trial study ...")
        first_s, reply_bytes, front = full_read(proxy, big)
        after = settled_rss()
        again_s, _, front_again = full_read(proxy, big)
        again = settled_rss()
    mine = f"w{owner}"
    return {
        "trials": size, "study_id": big, "owner": mine, "prefill_s": prefill_s,
        "front_first_read": front, "front_second_read": front_again,
        "first_read_s": first_s, "second_read_s": again_s, "reply_bytes": reply_bytes,
        "rss_kib": {"before": before, "after_first_read": after, "after_second_read": again},
        "owner_delta_kib": after[mine] - before[mine],
        "owner_per_trial_bytes": (after[mine] - before[mine]) * 1024 / size,
        "owner_second_read_delta_kib": again[mine] - after[mine],
        "other_workers_delta_kib": {w: after[w] - before[w] for w in after if w != mine},
    }


def cache_limit() -> dict[str, Any]:
    from shardproxy.config import Config

    return {"cache_max_trials_default": Config().cache_max_trials,
            "meaning": "trials cached per worker, summed over its studies; whole "
                       "least-recently-used studies are evicted beyond it"}
