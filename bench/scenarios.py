"""The scenarios of a run: what the workers do, how many, for how long.

Load sizes are for this 2-core machine: enough workers to keep every system busy
(real clients: 4 processes x 2 threads, the 8 workers of the reference figures;
load generator: 2 processes x 32 virtual workers), short enough that all scenarios
over all systems fit in about 15 minutes.

Connections matter to a proxy whose workers share the port through SO_REUSEPORT:
the kernel spreads connections, not RPCs. The threads of one real-client process
share one connection (gRPC's global subchannel pool), so real clients open one per
process; each generator process opens `gen_channels`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from bench.loadgen.workload import Workload
from bench.systems import SYSTEMS

LOADS = ("real", "gen")


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    workload: Workload
    duration: float = 10.0  # seconds of measured load per system and load kind
    studies: int = 1
    loads: tuple[str, ...] = LOADS
    systems: tuple[str, ...] = SYSTEMS
    real_processes: int = 4
    real_threads: int = 2
    gen_processes: int = 2
    gen_workers: int = 32  # virtual workers per generator process
    gen_channels: int = 8  # TCP connections per generator process
    # Finished trials already in the measured study; the generator's workers start
    # as if they had read them (a long-running worker's cache).
    prefill: int = 0
    # Study sizes for the GetTrials latency measurements (first full read, delta p50).
    latency_sizes: tuple[int, ...] = ()
    latency_samples: int = 20

    def with_options(self, **changes: object) -> Scenario:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("seed", "one study, RandomSampler, x**2 (6 RPCs per trial)",
                 Workload("random", 1), duration=15.0),
        Scenario("tpe", "one study, TPESampler (defaults: multivariate, constant liar)",
                 Workload("tpe", 1)),
        Scenario("params10", "one study, RandomSampler, 10 float parameters",
                 Workload("random", 10)),
        Scenario("many-studies", "50 studies x 20 virtual workers (real clients: one study each)",
                 Workload("random", 1), studies=50, gen_workers=500, gen_channels=16,
                 real_threads=4),
        Scenario("prefilled", "a study of 100 000 finished trials: GetTrials latency at "
                 "1k/10k/100k, then the seed load from synced workers",
                 Workload("random", 1), loads=("gen",), systems=("shardproxy", "stock", "direct"),
                 prefill=100_000, latency_sizes=(1_000, 10_000, 100_000), gen_workers=16),
    )
}


def quick(scenario: Scenario) -> Scenario:
    """A smoke-test version: a few seconds each, small pre-filled studies."""
    sizes = tuple(size for size in scenario.latency_sizes if size <= 10_000)
    return scenario.with_options(
        duration=4.0,
        prefill=min(scenario.prefill, 10_000),
        latency_sizes=sizes,
        latency_samples=10,
    )
