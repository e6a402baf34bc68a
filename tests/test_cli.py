"""`shardproxy serve` refuses settings it cannot run with, before touching anything."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shardproxy import serve
from shardproxy.cli import main


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--workers", "0"], "workers must be at least 1, got 0"),
        (["--standbys", "-1"], "standbys must be at least 0, got -1"),
        (["--threads", "0"], "threads must be at least 1, got 0"),
        (["--db-pool-size", "0"], "db-pool-size must be at least 1, got 0"),
        (["--max-batch", "0"], "max-batch must be at least 1, got 0"),
        (["--port", "70000"], "port must be at most 65535, got 70000"),
        (["--port", "-1"], "port must be at least 0, got -1"),
        (["--commit-window", "nan"], "commit-window must be at least 0.0, got nan"),
        (["--sync-window", "-0.5"], "sync-window must be at least 0.0, got -0.5"),
        (["--drain-timeout", "-1"], "drain-timeout must be at least 0.0, got -1.0"),
        (["--log-level", "loud"], "log-level must be one of DEBUG, INFO, WARNING, ERROR"),
        (["--log-format", "xml"], "log-format must be one of text, json, got 'xml'"),
        (["--max-request-bytes", "100"], "max-request-bytes must be at least 1024, got 100"),
        (["--max-request-bytes", "3G"], "max-request-bytes must be at most 2147483647"),
        (["--max-request-bytes", "lots"], "not a size in bytes: 'lots'"),
        (["--db-check-interval", "0"], "db-check-interval must be at least 0.01, got 0.0"),
        (["--keepalive-timeout", "0"], "keepalive-timeout must be at least 0.001, got 0.0"),
        (["--drain-delay", "-1"], "drain-delay must be at least 0.0, got -1.0"),
        (["--cache-memory=-1G"], "cache-memory must be at least 0, got -1073741824"),
        (["--cache-memory", "much"], "not a size in bytes: 'much'"),
    ],
)
def test_serve_refuses_a_bad_setting_by_name_and_starts_nothing(
    flags: list[str],
    message: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.chdir(tmp_path)  # where the default SQLite database would be created
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", *flags])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # no database, no socket, nothing


def test_the_python_api_refuses_the_same(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="standbys must be at least 0"):
        serve(f"sqlite:///{tmp_path}/db.sqlite", standbys=-1)
    assert list(tmp_path.iterdir()) == []


def test_the_cache_memory_is_split_over_the_workers() -> None:
    from shardproxy.config import Config, machine_memory

    assert Config(cache_memory=8 << 30, workers=4).cache_bytes_per_worker == 2 << 30
    # Unset: a quarter of what this machine (or its cgroup) lets the process use.
    assert Config(workers=2).cache_bytes_per_worker == machine_memory() // 4 // 2
    assert 0 < machine_memory() <= os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
