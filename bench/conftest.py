"""Settings shared by the micro benchmarks."""

from __future__ import annotations

from typing import Any


def pytest_benchmark_update_json(config: Any, benchmarks: Any, output_json: dict) -> None:
    """Keep the statistics of each case in `--benchmark-json` files, not every sample.

    With the raw samples a run of bench/test_bench_codec.py writes some 30 MB;
    bench/results/ keeps what the tables are made of.
    """
    for benchmark in output_json.get("benchmarks", []):
        benchmark.get("stats", {}).pop("data", None)
