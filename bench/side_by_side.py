"""Two shardproxy settings measured at the same time, so that a busy machine's noise hits both.

`bench.run` measures one cell after the other; on a shared two-core machine the
proxy's CPU per trial then moves by up to a fifth between cells of identical
settings, which hides a difference of a few percent. Here each round starts both
proxies at once, each on a fresh database with its own load, and compares their
proxy CPU per trial; the order in which they start alternates between rounds.
Running the same settings on both sides (an A/A run) shows the method's own spread.

    python -m bench.side_by_side --b "--admin-port 9108" --rounds 8
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import threading
from collections.abc import Sequence
from typing import Any

from bench.measure import Setup, measure_cell
from bench.scenarios import LOADS, SCENARIOS
from bench.systems import ProxyOptions


def one_round(scenario_name: str, load: str, flags: dict[str, tuple[str, ...]],
              workers: int) -> dict[str, dict[str, Any]]:
    """Both settings under the same load at the same time: name -> its cell."""
    cells: dict[str, dict[str, Any]] = {}

    def measure(name: str) -> None:
        setup = Setup(backend="mariadb", server_url=None, load_cpus=None,
                      proxy=ProxyOptions(workers, None, None, flags[name]))
        cells[name] = measure_cell(SCENARIOS[scenario_name], "shardproxy", load, setup,
                                   lambda text: None)

    threads = [threading.Thread(target=measure, args=(name,)) for name in flags]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.side_by_side", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", default="", help="serve flags of side A [none]")
    parser.add_argument("--b", default="", help="serve flags of side B [none]")
    parser.add_argument("--rounds", type=int, default=8, help="[%(default)s]")
    parser.add_argument("--scenario", default="seed", choices=list(SCENARIOS))
    parser.add_argument("--load", default="gen", choices=LOADS)
    parser.add_argument("--workers", type=int, default=2, help="[%(default)s]")
    args = parser.parse_args(argv)
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    ratios = []
    for number in range(args.rounds):
        sides = {"A": tuple(shlex.split(args.a)), "B": tuple(shlex.split(args.b))}
        if number % 2:  # the other one starts first
            sides = dict(reversed(list(sides.items())))
        cells = one_round(args.scenario, args.load, sides, args.workers)
        if any(cell["status"] != "ok" for cell in cells.values()):
            print(f"round {number}: failed: {[c.get('reason') for c in cells.values()]}")
            continue
        a, b = (cells[name]["proxy_cpu_ms_per_trial"] for name in ("A", "B"))
        ratios.append(b / a)
        print(f"round {number}: A {a:.3f} ms/trial ({cells['A']['trials_per_s']:.1f}/s), "
              f"B {b:.3f} ms/trial ({cells['B']['trials_per_s']:.1f}/s), B/A {b / a:.3f}",
              flush=True)
    if not ratios:
        return 1
    print(f"B/A proxy CPU per trial over {len(ratios)} rounds: "
          f"mean {statistics.mean(ratios):.3f}, median {statistics.median(ratios):.3f}, "
          f"spread {min(ratios):.3f}..{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
