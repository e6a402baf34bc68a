"""`shardproxy serve` refuses a multi-primary cluster it cannot number safely on,
unless --single-writer says that one node takes every proxy's writes.

MySQL Group Replication is not available here, so its detection is replaced by
its result; the check around it runs as `serve` runs it.
"""

from __future__ import annotations

import logging

import pytest

from shardproxy import logs, startup
from shardproxy.config import Config
from shardproxy.store import cluster
from shardproxy.store.cluster import Topology

GROUP_REPLICATION = Topology(cluster.GROUP_REPLICATION, 3)
URL = "mysql+pymysql://optuna:secret@db/optuna"


@pytest.fixture
def detected(monkeypatch: pytest.MonkeyPatch) -> list[Topology]:
    """What the database check will find: set by the test."""
    found: list[Topology] = []
    monkeypatch.setattr(startup, "_open_database", lambda url: found[0])
    monkeypatch.setattr(logs, "configure_logging", lambda *args: None)
    return found


def test_group_replication_multi_primary_is_refused_with_what_to_do(
    detected: list[Topology],
) -> None:
    detected.append(GROUP_REPLICATION)
    problem = startup.database_problem(Config(storage_url=URL))
    assert problem is not None
    code, message, cause, _ = problem
    assert (code, cause) == (startup.EXIT_MULTI_PRIMARY, "multi-primary")
    assert "Group Replication (multi-primary) cluster of 3 nodes" in message
    assert "duplicate trial numbers" in message and "--single-writer" in message
    assert "secret" not in message
    assert startup.EXIT_MULTI_PRIMARY in startup.EXIT_CODES


def test_single_writer_lifts_the_refusal_and_is_logged(
    detected: list[Topology], caplog: pytest.LogCaptureFixture
) -> None:
    detected.append(GROUP_REPLICATION)
    with caplog.at_level(logging.INFO):
        assert startup.database_problem(Config(storage_url=URL, single_writer=True)) is None
    assert "--single-writer" in caplog.text


@pytest.mark.parametrize("topology", [Topology(), Topology(cluster.GALERA, 2),
                                      Topology(cluster.GROUP_REPLICATION, 1)])
def test_a_single_server_galera_and_a_one_member_group_are_served(
    detected: list[Topology], topology: Topology
) -> None:
    detected.append(topology)
    assert startup.database_problem(Config(storage_url=URL)) is None


def test_single_writer_flag_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from shardproxy.cli import build_parser

    assert build_parser().parse_args(["serve"]).single_writer is False
    assert build_parser().parse_args(["serve", "--single-writer"]).single_writer is True
    monkeypatch.setenv("SHARDPROXY_SINGLE_WRITER", "1")
    assert build_parser().parse_args(["serve"]).single_writer is True
    assert build_parser().parse_args(["serve", "--no-single-writer"]).single_writer is False


def test_a_galera_node_out_of_the_primary_component_is_retried() -> None:
    """A node that lost its cluster's quorum answers every query with 1047 until it
    rejoins (seen on a two-node cluster with one node killed): retried like a
    server restart, not failed at once."""
    import pymysql
    import sqlalchemy.exc

    from shardproxy.store.retry import is_transient

    error = pymysql.err.OperationalError(1047, "WSREP has not yet prepared node for "
                                               "application use")
    assert is_transient(sqlalchemy.exc.OperationalError("SELECT 1", {}, error))
