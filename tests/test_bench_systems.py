"""A benchmark run keeps what the proxy under test logged, and how it answered health checks.

A worker restarted mid-run (killed, or by the watchdog) costs the load its calls in
flight; the load's figures show the errors, the proxy's log says why. The run
reads that log once the proxy stopped and the report prints it. Through the load a
probe's health checks are timed (`bench.health_checks`), and the report prints
those too.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from bench import report
from bench.health_checks import INTERVAL, HealthChecks
from bench.systems import LOG_LINES_KEPT, ProxyOptions, free_port, running_proxy
from tests.servers import children_by_name, wait_until


def test_a_worker_killed_during_a_run_is_in_the_proxy_log_the_run_keeps(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    with running_proxy("shardproxy", url, ProxyOptions(workers=1)) as proxy:
        assert proxy.log_lines == []
        victim = children_by_name(proxy.pid)["shardproxy-w0"]
        os.kill(victim, signal.SIGKILL)
        replaced = wait_until(
            lambda: children_by_name(proxy.pid).get("shardproxy-w0") not in (None, victim), 15)
        assert replaced, "the supervisor did not restart the killed worker"
    restart = [line for line in proxy.log_lines if f"pid {victim}" in line]
    assert restart and "restarting it" in restart[0], proxy.log_lines
    assert proxy.log_line_count >= len(proxy.log_lines)


def test_the_report_prints_the_first_lines_of_each_proxy_log_and_how_many_there_were() -> None:
    lines = [f"line {n}" for n in range(LOG_LINES_KEPT)]
    # A cell of latencies only: no load figures needed beside the log.
    cell = {"scenario": "seed", "system": "shardproxy", "load": None, "status": "ok",
            "proxy_log": lines, "proxy_log_lines": LOG_LINES_KEPT + 5}
    quiet = {**cell, "system": "echo", "proxy_log": [], "proxy_log_lines": 0}
    data = {"meta": {"date": "today", "db": "sqlite", "command": "bench", "git": None,
                     "cpus": 2, "workers": [1], "taskset": False, "elapsed_s": 1.0,
                     "scenarios": {}},
            "cells": [cell, quiet]}
    text = report.markdown(data)
    section = text.split("## What the proxies logged", 1)[1]
    kept = LOG_LINES_KEPT
    heading = f"seed · shardproxy · latency: {kept + 5} lines, the first {kept}:"
    assert heading in section
    assert all(f"      {line}\n" in section for line in lines)
    assert "echo" not in section


def test_health_checks_are_timed_when_answered_and_counted_by_outcome_when_not(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'bench.db'}"
    with running_proxy("shardproxy", url, ProxyOptions(workers=1)) as proxy, \
            HealthChecks(proxy.target) as checks:
        time.sleep(6 * INTERVAL)
    with HealthChecks(f"127.0.0.1:{free_port()}") as nobody:  # nothing listens there
        time.sleep(3 * INTERVAL)
    figures = checks.figures()
    assert figures["serving"] >= 3, figures
    assert figures["other"] == {}, figures
    assert 0 < figures["p50_s"] <= figures["p99_s"] <= figures["max_s"] < 10, figures
    refused = nobody.figures()
    assert refused["serving"] == 0 and refused["p50_s"] is None, refused
    assert refused["other"].get("UNAVAILABLE", 0) >= 1, refused


def test_the_report_prints_each_cells_health_checks() -> None:
    checks = {"serving": 118, "p50_s": 0.0042, "p99_s": 0.051, "max_s": 0.2,
              "other": {"DEADLINE_EXCEEDED": 2}}
    cell = {"scenario": "seed", "system": "shardproxy", "load": "gen", "workers": 2,
            "status": "ok", "health_checks": checks}
    without = {**cell, "system": "stock", "health_checks": None}
    rows = report.health_checks_table([cell, without])[2:]
    assert rows == ["| seed | shardproxy | gen | 118 | 0.004 | 0.051 | 0.200 "
                    "| 2 DEADLINE_EXCEEDED |"], rows
