"""The Store creates exactly Optuna's schema, and refuses one it cannot serve."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage

from shardproxy.store import SchemaError, Store, schema
from shardproxy.store.database import driver_url
from tests.databases import fresh_database


def _describe(url: str) -> dict[str, Any]:
    """Everything about a database's schema that Optuna or a DBA could look at."""
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            inspector = sqlalchemy.inspect(conn)
            tables = sorted(inspector.get_table_names())
            described: dict[str, Any] = {
                "tables": {
                    name: {
                        "columns": [
                            (c["name"], str(c["type"]), c["nullable"])
                            for c in inspector.get_columns(name)
                        ],
                        "primary_key": inspector.get_pk_constraint(name)["constrained_columns"],
                        "foreign_keys": sorted(
                            (tuple(fk["constrained_columns"]), fk["referred_table"])
                            for fk in inspector.get_foreign_keys(name)
                        ),
                        "indexes": sorted(
                            (i["name"], tuple(i["column_names"]), bool(i["unique"]))
                            for i in inspector.get_indexes(name)
                        ),
                        "unique": sorted(
                            tuple(u["column_names"])
                            for u in inspector.get_unique_constraints(name)
                        ),
                    }
                    for name in tables
                },
                "alembic": conn.execute(sqlalchemy.text(
                    "SELECT version_num FROM alembic_version")).all(),
                "version_info": conn.execute(sqlalchemy.text(
                    "SELECT version_info_id, schema_version, library_version "
                    "FROM version_info")).all(),
            }
            described["ddl"] = _ddl(conn, tables)
            if engine.dialect.name == "postgresql":
                described["enums"] = inspector.get_enums()  # type: ignore[attr-defined]
            return described
    finally:
        engine.dispose()


def _ddl(conn: sqlalchemy.Connection, tables: list[str]) -> list[Any]:
    """The server's own account of each table, where it gives one."""
    if conn.dialect.name == "sqlite":
        return list(conn.execute(sqlalchemy.text(
            "SELECT type, name, tbl_name, sql FROM sqlite_master ORDER BY name")).all())
    if conn.dialect.name == "mysql":
        return [
            re.sub(r" AUTO_INCREMENT=\d+", "", conn.execute(
                sqlalchemy.text(f"SHOW CREATE TABLE {name}")).one()[1])
            for name in tables
        ]
    return []


def test_created_schema_is_optunas(db_url: str, tmp_path: Path) -> None:
    Store(db_url).close()
    backend = {"sqlite": "sqlite", "mysql": "mariadb", "postgresql": "postgres"}[
        driver_url(db_url).get_backend_name()]
    (tmp_path / "optuna").mkdir()
    with fresh_database(backend, tmp_path / "optuna") as optuna_url:
        RDBStorage(optuna_url).engine.dispose()
        assert _describe(db_url) == _describe(optuna_url)


def test_rdbstorage_accepts_a_database_the_store_created(db_url: str) -> None:
    Store(db_url).close()
    storage = RDBStorage(db_url)  # checks the alembic revision, as Optuna always does
    try:
        assert storage.get_current_version() == storage.get_head_version()
        assert storage.get_all_versions()[0] == schema.HEAD_REVISION
        assert sorted(storage.get_all_versions()) == sorted(schema.KNOWN_REVISIONS)
    finally:
        storage.engine.dispose()


def _stamp(url: str, revision: str) -> None:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = :r"),
                     {"r": revision})
    engine.dispose()


@pytest.mark.parametrize(
    ("revision", "advice"),
    [("v3.0.0.d", "optuna storage upgrade --storage"), ("v9.9.9.z", "unknown schema revision")],
)
def test_other_revision_is_refused_and_left_untouched(
    db_url: str, revision: str, advice: str
) -> None:
    RDBStorage(db_url).engine.dispose()
    _stamp(db_url, revision)
    before = _describe(db_url)
    with pytest.raises(SchemaError, match=advice):
        Store(db_url)
    assert _describe(db_url) == before
    assert before["alembic"] == [(revision,)]


def test_tables_without_revision_are_refused_and_left_untouched(db_url: str) -> None:
    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.begin() as conn:
        schema.studies.create(conn)
    engine.dispose()
    with pytest.raises(SchemaError, match="optuna storage upgrade --storage"):
        Store(db_url)
    engine = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    with engine.connect() as conn:
        assert sqlalchemy.inspect(conn).get_table_names() == ["studies"]
    engine.dispose()


def _open_and_create_study(url: str, name: str) -> int:
    store = Store(url)
    try:
        return store.create_new_study([0], name)
    finally:
        store.close()


def test_processes_opening_a_fresh_database_together(db_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    with context.Pool(3) as pool:
        study_ids = pool.starmap(_open_and_create_study, [(db_url, f"s{i}") for i in range(3)])
    assert len(set(study_ids)) == 3
    storage = RDBStorage(db_url)
    try:
        assert sorted(s.study_name for s in storage.get_all_studies()) == ["s0", "s1", "s2"]
    finally:
        storage.engine.dispose()


def test_plain_mysql_url_uses_an_installed_driver(mariadb_url: str) -> None:
    plain = mariadb_url.replace("mysql+pymysql://", "mysql://")
    store = Store(plain)
    try:
        study_id = store.create_new_study([1], "plain-url")
        assert store.get_study_name_from_id(study_id) == "plain-url"
    finally:
        store.close()
    assert optuna.load_study(study_name="plain-url", storage=mariadb_url).direction.name == (
        "MAXIMIZE")


def test_in_memory_sqlite_is_refused() -> None:
    with pytest.raises(ValueError, match="database file"):
        Store("sqlite://")
