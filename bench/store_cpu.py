"""The Store's own CPU per trial on MariaDB, PyMySQL against mysqlclient.

    python -m bench.store_cpu [--rounds 4] [--threads 8] [--trials-per-thread 100]
        [--out bench/results/store_cpu]

Each trial is what the proxy asks of its Store for one RandomSampler trial: a new
trial, a delta read of the study, one param (with its study, as the service
passes it) and the finishing state with its value, from `--threads` threads at
once. The figure is this process's CPU time (time.process_time) per trial, so it
holds the Store and its driver and nothing of gRPC. Each round runs every driver
once, on a fresh database of the same server, in turn, so that the machine's
drift between rounds touches both alike; the table gives every round.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from statistics import median

from optuna.distributions import FloatDistribution, distribution_to_json

from bench.databases import fresh_database
from shardproxy.rows import COMPLETE
from shardproxy.store import Store

DRIVERS = {"PyMySQL": "mysql+pymysql", "mysqlclient": "mysql+mysqldb"}
SERVER = "root@127.0.0.1:3306"
DISTRIBUTION_JSON = distribution_to_json(FloatDistribution(-10.0, 10.0))
WARMUP_TRIALS_PER_THREAD = 5


def cpu_ms_per_trial(url: str, threads: int, per_thread: int) -> float:
    store = Store(url)
    try:
        study_id = store.create_new_study([0], f"cpu-{uuid.uuid4().hex}")

        def worker(count: int) -> None:
            for i in range(count):
                trial_id = store.create_new_trial(study_id, None)
                store.load_trials(study_id, id_greater_than=trial_id - 1)
                store.set_trial_param(trial_id, "x", float(i % 20 - 10), DISTRIBUTION_JSON,
                                      study_id=study_id)
                store.set_trial_state_values(trial_id, COMPLETE, [float(i)])

        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(worker, [WARMUP_TRIALS_PER_THREAD] * threads))
            started = time.process_time()
            list(pool.map(worker, [per_thread] * threads))
            spent = time.process_time() - started
    finally:
        store.close()
    return spent * 1000 / (threads * per_thread)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--trials-per-thread", type=int, default=100)
    parser.add_argument("--out", default="bench/results/store_cpu")
    args = parser.parse_args(argv)

    rounds: list[dict[str, float]] = []
    for _ in range(args.rounds):
        figures: dict[str, float] = {}
        for driver, scheme in DRIVERS.items():
            with fresh_database("mariadb", f"{scheme}://{SERVER}") as db:
                figures[driver] = cpu_ms_per_trial(db.url, args.threads, args.trials_per_thread)
        rounds.append(figures)
        print(", ".join(f"{d} {ms:.3f} ms" for d, ms in figures.items()), flush=True)

    medians = {d: median(r[d] for r in rounds) for d in DRIVERS}
    command = "python -m bench.store_cpu " + " ".join(sys.argv[1:] if argv is None else argv)
    lines = [
        "# Store CPU per trial: PyMySQL and mysqlclient",
        "",
        __doc__.split("\n\n", 2)[2].strip().replace("\n", " "),
        "",
        f"Command: `{command.strip()}`; {args.threads} threads x {args.trials_per_thread} "
        f"trials per round. Machine: {platform.machine()}, Python {platform.python_version()}.",
        "",
        "| round | " + " | ".join(f"{d} ms/trial" for d in DRIVERS) + " | ratio |",
        "|---|" + "---:|" * (len(DRIVERS) + 1),
    ]
    for index, figures in enumerate(rounds, 1):
        ratio = figures["mysqlclient"] / figures["PyMySQL"]
        lines.append(f"| {index} | " + " | ".join(f"{figures[d]:.3f}" for d in DRIVERS)
                     + f" | x{ratio:.2f} |")
    lines.append("| median | " + " | ".join(f"{medians[d]:.3f}" for d in DRIVERS)
                 + f" | x{medians['mysqlclient'] / medians['PyMySQL']:.2f} |")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "rounds": rounds, "medians": medians}, indent=2))
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
