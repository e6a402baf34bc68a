"""One owner worker's RSS against its cache bound while studies churn through it, in-process.

    python -m bench.cache_churn [--db mariadb|postgres|sqlite] [--share-mib 16]
                                [--studies 6] [--trials 25000] [--rounds 6] [--threads 1]

Where the soak (`python -m bench.memory --parts soak`) measures a whole proxy tree
under gRPC, this takes gRPC and forwarding away: a single-shard `Worker`, never
started (`front.handle`, request bytes in, reply bytes out), with a `--cache-memory`
of `--share-mib`, reads `--studies` studies of `--trials` COMPLETE trials in full,
round-robin, one read at a time: each read after the first round loads an evicted
study again. `--threads` > 1 hands each read to a thread pool of that size, as the
gRPC server does, so that reads run on many threads (and glibc gives threads
heaps of their own). The process is prepared as a worker process is
(`worker.prepare`: the C heap's settings).

Prints, after each round, the process's RSS over its baseline (taken after a small
study's read), the cache's own count (`StudyCache.memory_bytes`, which the bound
is checked against) and the RSS growth split by mapping kind from
/proc/self/smaps: the main heap, anonymous mappings (large blocks, the
interpreter's arenas, other threads' heaps), the rest. Bench code only: no
assertion, no file written. `MALLOC_ARENA_MAX` and the like act as usual.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import gc
import time
from collections.abc import Callable


def rss_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def rss_by_mapping() -> dict[str, float]:
    """MiB resident in the main heap, in anonymous mappings, and in the rest."""
    sums = {"heap": 0.0, "anonymous": 0.0, "other": 0.0}
    kind = "other"
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            fields = line.split()
            if fields and "-" in fields[0] and len(fields) >= 5:  # a mapping's header
                name = fields[5] if len(fields) > 5 else ""
                kind = "heap" if name == "[heap]" else "anonymous" if not name else "other"
            elif fields and fields[0] == "Rss:":
                sums[kind] += int(fields[1]) / 1024
    return sums


def churn(url: str, study_ids: list[int], small_id: int, share: int, rounds: int,
          threads: int) -> None:
    from optuna.storages._grpc.auto_generated import api_pb2

    from shardproxy.config import Config
    from shardproxy.wire import METHOD_INDEX
    from shardproxy.worker import Worker, prepare

    prepare(Config(storage_url=url)).close()  # as a worker process starts
    get_trials = METHOD_INDEX["GetTrials"]
    worker = Worker(Config(storage_url=url, cache_memory=share, workers=1))

    def read(study_id: int) -> int:
        request = api_pb2.GetTrialsRequest(study_id=study_id, trial_id_greater_than=-1)
        return len(worker.front.handle(get_trials, request.SerializeToString()))

    run: Callable[[int], int] = read
    if threads > 1:
        pool = concurrent.futures.ThreadPoolExecutor(threads)
        for _ in range(4 * threads):  # every thread of the pool started
            pool.submit(time.sleep, 0.01)
        run = lambda study_id: pool.submit(read, study_id).result()  # noqa: E731
    run(small_id)
    run(small_id)
    gc.collect()
    time.sleep(0.2)
    base, base_maps = rss_mib(), rss_by_mapping()
    print(f"share {share / 2**20:.1f} MiB, {threads} thread(s), baseline RSS {base:.1f} MiB")
    print("round | RSS growth, MiB | cache's count, MiB | growth ÷ share"
          " | heap | anonymous | other")
    for number in range(rounds):
        for study_id in study_ids:
            run(study_id)
        maps = rss_by_mapping()
        growth = rss_mib() - base
        counted = sum(size for _, size in worker.caches._sizes.values())  # noqa: SLF001
        print(f"{number} | {growth:.1f} | {counted / 2**20:.1f} | {growth * 2**20 / share:.2f} | "
              + " | ".join(f"{maps[k] - base_maps[k]:+.1f}" for k in maps))
    worker.store.close()


def main() -> None:
    from bench.databases import create_studies, fresh_database, prefill

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="mariadb", help="mariadb, postgres or sqlite")
    parser.add_argument("--share-mib", type=float, default=16.0,
                        help="the worker's cache bound (a soak's 32 MiB over 2 workers: 16)")
    parser.add_argument("--studies", type=int, default=6)
    parser.add_argument("--trials", type=int, default=25000, help="trials per study")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1, help="reads run on a pool this big")
    args = parser.parse_args()
    with fresh_database(args.db) as db:
        *study_ids, small = create_studies(
            db.url, [f"churn-{i}" for i in range(args.studies)] + ["small"])
        for study_id in study_ids:
            prefill(db.url, study_id, args.trials, ("x",))
        prefill(db.url, small, 100, ("x",))
        churn(db.url, study_ids, small, int(args.share_mib * 2**20), args.rounds, args.threads)


if __name__ == "__main__":
    main()
