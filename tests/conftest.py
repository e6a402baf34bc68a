from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.databases import BACKENDS, fresh_database


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database on each backend in turn."""
    with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("sqlite", tmp_path) as url:
        yield url


@pytest.fixture
def mariadb_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("mariadb", tmp_path) as url:
        yield url


@pytest.fixture
def mariadb_mysqlclient_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("mariadb-mysqlclient", tmp_path) as url:
        yield url


@pytest.fixture
def postgres_url(tmp_path: Path) -> Iterator[str]:
    with fresh_database("postgres", tmp_path) as url:
        yield url


# Optuna's schema declares trial datetimes as plain DATETIME, which MySQL and MariaDB
# keep to whole seconds; these inherited tests compare them with microsecond clocks,
# and fail the same way for Optuna's own RDBStorage on the same server
# (tests/test_conformance.py::test_mariadb_keeps_whole_seconds_for_rdbstorage_too).
_SECOND_PRECISION_TESTS = (
    "test_create_new_trial[",
    "test_create_new_trial_with_template_trial[",
    "test_get_trial[",
    "test_get_all_trials[",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if (
            "TestStorageThroughShardproxy" in item.nodeid
            and "mariadb" in item.nodeid
            and any(name in item.nodeid for name in _SECOND_PRECISION_TESTS)
        ):
            item.add_marker(pytest.mark.xfail(
                reason="MariaDB DATETIME in Optuna's schema has whole-second precision",
                strict=False,
            ))
