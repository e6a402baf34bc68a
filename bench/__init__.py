"""The benchmark instrument: load generator, reference servers, runner and report.

`python -m bench.run --help` runs shardproxy beside Optuna's stock proxy, direct
RDBStorage workers and an echo floor on one database and prints the ratios; the
pytest-benchmark micro benches (`bench/test_bench_*.py`) measure single pieces.
"""
