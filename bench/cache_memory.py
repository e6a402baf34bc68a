"""One owner worker's memory and CPU for a study's cached trials, in-process.

    python -m bench.cache_memory [--db sqlite|postgres|mariadb] [--db-url URL]
                                 [--trials 20000,100000]

For each size, a study of N COMPLETE trials of one float parameter (and a
100-trial one) is bulk-inserted into a fresh database; then, each in a fresh
process, a single-shard `Worker` (never started: `front.handle`, request bytes in,
reply bytes out) reads the small study twice, then the big one in full, as a new
`GrpcStorageProxy` first does. Two passes:

- `rss`: the time (wall and CPU) of that first full read, and the process's VmRSS
  delta over it, per trial (the reply dropped); then the CPU (`time.process_time`)
  of a full GetTrials from the warm cache, and of a delta one
  (`trial_id_greater_than` = the last trial: one sync, an empty reply);
- `trace`: with tracemalloc, the memory still allocated after the read (live)
  and the peak during it, per trial, and where the store returns the study's rows
  as one list (a checkout that does not stream first reads) the live memory then
  (the part of the peak the cache does not hold).

Prints one JSON line per size and pass. Bench code only: no assertion, no file
written. `PYTHONPATH` picks the shardproxy measured (another checkout's, to
compare: `PYTHONPATH=/path/to/checkout python -m bench.cache_memory`).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any


def rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def measure(url: str, big: int, small: int, size: int, mode: str) -> dict[str, Any]:
    from optuna.storages._grpc.auto_generated import api_pb2

    from shardproxy.config import Config
    from shardproxy.wire import METHOD_INDEX
    from shardproxy.worker import Worker

    get_trials = METHOD_INDEX["GetTrials"]

    def request(study_id: int, greater_than: int) -> bytes:
        return api_pb2.GetTrialsRequest(
            study_id=study_id, trial_id_greater_than=greater_than).SerializeToString()

    worker = Worker(Config(storage_url=url))
    handle = worker.front.handle
    handle(get_trials, request(small, -1))
    handle(get_trials, request(small, -1))
    gc.collect()
    out: dict[str, Any] = {"trials": size, "pass": mode}
    if mode == "trace":
        load = worker.caches._load_trials  # noqa: SLF001

        def traced_load(*args: Any) -> Any:
            rows = load(*args)
            # A first read streams the study (no list to weigh): its peak tells.
            if isinstance(rows, list) and len(rows) > 1000:
                out["store_returned_live_per_trial"] = round(
                    (tracemalloc.get_traced_memory()[0] - base) / size, 1)
            return rows

        worker.caches._load_trials = traced_load  # noqa: SLF001
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
    time.sleep(0.2)
    before = rss_kib()
    started, started_wall = time.process_time(), time.perf_counter()
    reply = handle(get_trials, request(big, -1))
    out["first_read_cpu_s"] = round(time.process_time() - started, 3)
    out["first_read_wall_s"] = round(time.perf_counter() - started_wall, 3)
    out["reply_bytes"] = len(reply)
    del reply
    if mode == "trace":
        current, peak = tracemalloc.get_traced_memory()
        out["live_per_trial"] = round((current - base) / size, 1)
        out["peak_per_trial"] = round((peak - base) / size, 1)
        tracemalloc.stop()
    else:
        time.sleep(0.2)
        out["rss_delta_per_trial"] = round((rss_kib() - before) * 1024 / size)
        cache = worker.caches.get(big)
        out["encoded_per_trial"] = round(cache.encoded_bytes / size, 1)
        out["memory_bytes_per_trial"] = round(cache.memory_bytes / size, 1)
        full, delta = request(big, -1), request(big, 10**12)
        for name, body, calls in (("full", full, 20), ("delta", delta, 200)):
            started = time.process_time()
            for _ in range(calls):
                handle(get_trials, body)
            out[f"{name}_get_trials_cpu_ms"] = round(
                (time.process_time() - started) / calls * 1000, 3)
    worker.store.close()
    return out


def main() -> None:
    if sys.argv[1:2] == ["--measure"]:
        url, mode = sys.argv[2], sys.argv[6]
        big_id, small_id, trials = (int(arg) for arg in sys.argv[3:6])
        print(json.dumps(measure(url, big_id, small_id, trials, mode)))
        return
    from bench.databases import create_studies, fresh_database, prefill

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--db", default="sqlite", help="sqlite, postgres or mariadb")
    parser.add_argument("--db-url", help="server URL without a database, to pick another "
                        "driver: mysql+mysqldb://root@127.0.0.1:3306, say")
    parser.add_argument("--trials", default="20000,100000", help="study sizes")
    args = parser.parse_args()
    for size in (int(s) for s in args.trials.split(",")):
        with fresh_database(args.db, args.db_url) as db:
            big, small = create_studies(db.url, ["big", "small"])
            prefill(db.url, big, size, ("x",))
            prefill(db.url, small, 100, ("x",))
            for mode in ("rss", "trace"):
                result = subprocess.run(
                    # As a script, so that PYTHONPATH (not this checkout) picks shardproxy.
                    [sys.executable, __file__, "--measure", db.url,
                     str(big), str(small), str(size), mode],
                    capture_output=True, text=True, env=os.environ, check=False,
                )
                if result.returncode:
                    sys.exit(result.stderr[-3000:])
                print(args.db, result.stdout.strip(), flush=True)


if __name__ == "__main__":
    main()
