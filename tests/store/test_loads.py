"""A study's sync beside other writers: its newer trials are found however their ids
interleave with other studies' and whenever their transactions commit.

The store reads "the study's trials with id > X" without reading the study (and
on PostgreSQL skips id ranges it learned hold none of the study's trials); these
tests sync a study as the cache does (X = the newest id it has) while Optuna's
RDBStorage writes to it and to other studies, and while a writer holds a new trial
of the study uncommitted.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.study import StudyDirection
from sqlalchemy.engine import make_url

from shardproxy.rows import TrialRow
from shardproxy.store import Store
from shardproxy.store.schema import studies, trials
from tests.store.faults import kill_store_connections
from tests.store.test_concurrency import FLOAT


@pytest.fixture
def rdb(db_url: str) -> Iterator[RDBStorage]:
    storage = RDBStorage(db_url)
    yield storage
    storage.engine.dispose()


class _Synced:
    """A study as the cache follows it: every trial seen, synced from the newest."""

    def __init__(self, store: Store, study_id: int) -> None:
        self.store = store
        self.study_id = study_id
        self.seen: dict[int, TrialRow] = {}

    def sync(self) -> list[int]:
        newest = max(self.seen, default=-1)
        rows = self.store.load_trials(self.study_id, id_greater_than=newest)
        for row in rows:
            self.seen[row.trial_id] = row
        return [row.trial_id for row in rows]


def _trial_ids(rdb: RDBStorage, study_id: int) -> list[int]:
    return sorted(t._trial_id for t in rdb.get_all_trials(study_id, deepcopy=False))


def test_syncs_find_every_trial_among_other_studies_writes(
    db_url: str, rdb: RDBStorage
) -> None:
    quiet, busy = (rdb.create_new_study([StudyDirection.MINIMIZE], name)
                   for name in ("quiet", "busy"))
    rng = random.Random(7)
    store = Store(db_url)
    try:
        synced = _Synced(store, quiet)
        for _ in range(60):
            action = rng.choices(["busy", "quiet", "ours", "sync"], [5, 1, 1, 3])[0]
            if action == "busy":
                for _ in range(rng.randrange(1, 20)):
                    rdb.create_new_trial(busy)
            elif action == "quiet":
                rdb.create_new_trial(quiet)
            elif action == "ours":
                store.create_new_trial(quiet, None)
            else:
                synced.sync()
                # Another caller, from an older trial: all the newer ones, whatever the
                # store learned from the syncs.
                older = rng.choice([-1, *synced.seen])
                rows = store.load_trials(quiet, id_greater_than=older)
                assert [r.trial_id for r in rows] == [
                    t for t in _trial_ids(rdb, quiet) if t > older]
        synced.sync()
        assert sorted(synced.seen) == _trial_ids(rdb, quiet)
        assert all(row.number == i for i, row in enumerate(
            synced.seen[t] for t in sorted(synced.seen)))
    finally:
        store.close()


def test_a_trial_committed_after_newer_ids_were_seen_is_found(
    db_url: str, rdb: RDBStorage
) -> None:
    """A writer locks the study and takes a trial id, other studies' trials take
    newer ids and commit, syncs see those, and only then the writer commits."""
    if db_url.startswith("sqlite"):
        pytest.skip("SQLite lets one writer at a time: no trial is uncommitted meanwhile")
    quiet, busy = (rdb.create_new_study([StudyDirection.MINIMIZE], name)
                   for name in ("quiet", "busy"))
    store = Store(db_url)
    writer = sqlalchemy.create_engine(db_url, poolclass=sqlalchemy.pool.NullPool)
    try:
        synced = _Synced(store, quiet)
        store.create_new_trial(quiet, None)
        assert len(synced.sync()) == 1
        with writer.connect() as conn:
            transaction = conn.begin()
            # As RDBStorage creates a trial: the study's row locked, then the INSERT.
            conn.execute(sqlalchemy.select(studies.c.study_id)
                         .where(studies.c.study_id == quiet).with_for_update())
            late = conn.execute(sqlalchemy.insert(trials).values(
                study_id=quiet, number=1, state="RUNNING")).inserted_primary_key[0]
            for _ in range(4):
                assert max(rdb.create_new_trial(busy) for _ in range(5)) > late
                assert synced.sync() == []
            transaction.commit()
        for _ in range(3):
            rdb.create_new_trial(busy)
            synced.sync()
        assert late in synced.seen
        assert sorted(synced.seen) == _trial_ids(rdb, quiet)
        newest = rdb.create_new_trial(quiet)
        assert synced.sync() == [newest]
    finally:
        writer.dispose()
        store.close()


def test_a_large_read_leaves_no_rows_with_mysqls_driver(mariadb_url: str) -> None:
    from bench.databases import create_studies, prefill
    from shardproxy.store import loads

    study_id = create_studies(mariadb_url, ["large"])[0]
    prefill(mariadb_url, study_id, loads.LARGE_LOAD, ["x"])
    engine = sqlalchemy.create_engine(mariadb_url, poolclass=sqlalchemy.pool.StaticPool)
    try:
        with engine.connect() as conn:
            rows, _ = loads.load_trials(conn, study_id, -1, ())
            assert len(rows) == loads.LARGE_LOAD
            # PyMySQL's connection holds its last result set: one row, not the read's.
            held = conn.connection.dbapi_connection._result  # type: ignore[union-attr]
            assert held is not None and len(held.rows) == 1
    finally:
        engine.dispose()


# -- a first read streamed (Store.stream_study) ------------------------------------------


_FLOAT = ('{"name": "FloatDistribution", "attributes": '
          '{"low": 0, "high": 1e6, "step": null, "log": false}}')


def _fill(rdb: RDBStorage, count: int) -> int:
    """A study of `count` finished trials of one param and one value, and one
    running trial after them."""
    study_id = rdb.create_new_study([StudyDirection.MINIMIZE], "streamed")
    with rdb.engine.begin() as conn:
        conn.execute(trials.insert(), [
            {"number": n, "study_id": study_id, "state": "COMPLETE"} for n in range(count)])
        ids = conn.execute(sqlalchemy.text(
            "SELECT trial_id, number FROM trials WHERE study_id = :s"), {"s": study_id}).all()
        conn.execute(sqlalchemy.text(
            "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json)"
            " VALUES (:t, 'x', :v, :d)"), [{"t": t, "v": n / 7, "d": _FLOAT} for t, n in ids])
        conn.execute(sqlalchemy.text(
            "INSERT INTO trial_values (trial_id, objective, value, value_type)"
            " VALUES (:t, 0, :v, 'FINITE')"), [{"t": t, "v": n * 0.5} for t, n in ids])
    rdb.create_new_trial(study_id)
    return study_id


def test_a_streamed_study_is_the_listed_one_and_its_connection_serves_on(
    db_url: str, rdb: RDBStorage
) -> None:
    study_id = _fill(rdb, 3000)  # more result rows than one fetch of the stream
    store = Store(db_url, pool_size=1)  # every read on one connection
    try:
        listed = store.load_trials(study_id, id_greater_than=-1)
        assert list(store.stream_study(study_id)) == listed
        assert len(listed) == 3001 and listed[-1].params == []
        abandoned = store.stream_study(study_id)  # left after its first trial
        assert next(abandoned) == listed[0]
        abandoned.close()
        assert store.load_trials(study_id, id_greater_than=-1) == listed
        with pytest.raises(KeyError):
            next(store.stream_study(study_id + 1000))  # no such study: nothing, then KeyError
        trial_id = rdb.create_new_trial(study_id)  # written on through the same pool
        assert [r.trial_id for r in store.stream_study(study_id)][-1] == trial_id
    finally:
        store.close()


@pytest.mark.parametrize("backend", ["mariadb", "mariadb-mysqlclient", "postgres"])
def test_a_stream_cut_by_a_killed_connection_reads_on_after_the_last_trial_taken(
    backend: str, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    url = request.getfixturevalue(backend.replace("-", "_") + "_url")
    database = make_url(url).database
    assert database is not None
    rdb = RDBStorage(url)
    store = Store(url, retry_deadline=30)
    try:
        # Far more rows than a socket's buffers hold: the server is still sending
        # when its connection is killed.
        study_id = _fill(rdb, 20000)
        listed = store.load_trials(study_id, id_greater_than=-1)
        stream = store.stream_study(study_id)
        taken = [next(stream)]
        assert kill_store_connections(url, database) >= 1
        taken.extend(stream)
        assert taken == listed  # every trial once, in order
        if backend == "postgres":  # a FETCH per few thousand rows: it surely met the kill
            assert "reading on" in caplog.text
    finally:
        store.close()
        rdb.engine.dispose()


def _add_finished_trials(conn: sqlalchemy.Connection, study_id: int, count: int) -> None:
    """`count` COMPLETE trials of one param and one value each, in three statements."""
    conn.execute(sqlalchemy.text(
        "INSERT INTO trials (number, study_id, state, datetime_start, datetime_complete) "
        "SELECT (SELECT COUNT(*) FROM trials WHERE study_id = :s) + g - 1, :s, 'COMPLETE', "
        "now(), now() FROM generate_series(1, :n) AS g"), {"s": study_id, "n": count})
    conn.execute(sqlalchemy.text(
        "INSERT INTO trial_params (trial_id, param_name, param_value, distribution_json) "
        "SELECT trial_id, 'x', 0.5, :d FROM trials "
        "WHERE trial_id NOT IN (SELECT trial_id FROM trial_params)"), {"d": FLOAT})
    conn.execute(sqlalchemy.text(
        "INSERT INTO trial_values (trial_id, objective, value, value_type) "
        "SELECT trial_id, 0, 0.25, 'FINITE' FROM trials "
        "WHERE trial_id NOT IN (SELECT trial_id FROM trial_values)"))


def _reads_sent(store: Store) -> list[tuple[str, object]]:
    """The (statement, parameters) the store's reading pool sends from now on."""
    sent: list[tuple[str, object]] = []
    sqlalchemy.event.listen(
        store._reader, "before_cursor_execute",  # noqa: SLF001
        lambda conn, cursor, statement, params, *_: sent.append((statement, params)))
    return sent


def _sequential_scans(conn: sqlalchemy.Connection, statement: str, params: object) -> set[str]:
    """The tables the plan of `statement` reads by a sequential scan."""
    plan = conn.exec_driver_sql("EXPLAIN (FORMAT JSON) " + statement, params).scalar_one()
    scanned: set[str] = set()
    nodes = [plan[0]["Plan"]]
    while nodes:
        node = nodes.pop()
        if node["Node Type"] == "Seq Scan":
            scanned.add(node["Relation Name"])
        nodes.extend(node.get("Plans", []))
    return scanned


@pytest.mark.parametrize("statistics", ["never gathered", "gathered when small"])
def test_a_postgresql_sync_finds_its_trials_rows_by_index_whatever_the_statistics(
    postgres_url: str, statistics: str
) -> None:
    """A sync reads the newer trials' rows of each table from its trial_id index: a
    sequential scan would read every trial of the database, on every sync. The
    planner's statistics lag a table's growth (autovacuum gathers them again after
    a tenth of it), and missing or stale they must not turn the lookups into scans:
    with the rows looked up through an array, they did (trial_params with none,
    trial_values with those of a smaller table)."""
    store = Store(postgres_url)
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    try:
        study_id = store.create_new_study([0], "grown")
        with admin.connect() as conn:
            for table in ("trials", "trial_params", "trial_values"):
                conn.exec_driver_sql(f"ALTER TABLE {table} SET (autovacuum_enabled = false)")
            if statistics == "gathered when small":
                _add_finished_trials(conn, study_id, 50)
                conn.exec_driver_sql("ANALYZE")
            _add_finished_trials(conn, study_id, 3000)
            newest = conn.execute(
                sqlalchemy.select(sqlalchemy.func.max(trials.c.trial_id))).scalar_one()
        sent = _reads_sent(store)
        rows = store.load_trials(study_id, id_greater_than=newest - 3)
        assert [row.trial_id for row in rows] == [newest - 2, newest - 1, newest]
        assert all(len(row.params) == 1 and len(row.values) == 1 for row in rows)
        (statement, params), = sent
        with admin.connect() as conn:
            scanned = _sequential_scans(conn, statement, params)
        assert not scanned & {"trials", "trial_params", "trial_values"}, scanned
    finally:
        store.close()
        admin.dispose()


def _compiled(conn: sqlalchemy.Connection, statement: str, params: object) -> bool:
    """Whether running `statement` compiled it to machine code (EXPLAIN ANALYZE says JIT)."""
    plan = conn.exec_driver_sql("EXPLAIN (ANALYZE, FORMAT JSON) " + statement,
                                params).scalar_one()
    return "JIT" in plan[0]


def test_the_stores_postgresql_connections_never_compile_a_statement(postgres_url: str) -> None:
    """PostgreSQL compiles a statement whose estimated cost passes `jit_above_cost`,
    on every run of it, and the estimates of a sync grow with tables whose
    statistics are missing (16 ms a sync against 0.8 ms at 100 000 trials). Here
    the threshold is lowered to nothing on each connection, so that any statement
    would compile where JIT is on: the server's default does, the store's
    connections, reading and writing, do not."""
    store = Store(postgres_url)
    admin = sqlalchemy.create_engine(postgres_url, isolation_level="AUTOCOMMIT",
                                     poolclass=sqlalchemy.pool.NullPool)
    try:
        study_id = store.create_new_study([0], "compiled")
        trial_ids = [store.create_new_trial(study_id, None) for _ in range(3)]
        sent = _reads_sent(store)
        store.load_trials(study_id, id_greater_than=trial_ids[0], ids=trial_ids[:1])
        (statement, params), = sent
        with admin.connect() as conn:
            conn.exec_driver_sql("SET jit_above_cost = 0")
            server_default_compiles = _compiled(conn, statement, params)
        for engine in (store._reader, store._writer):  # noqa: SLF001
            with engine.connect() as conn:
                assert conn.exec_driver_sql("SHOW jit").scalar_one() == "off"
                conn.exec_driver_sql("SET jit_above_cost = 0")
                assert not _compiled(conn, statement, params)
                conn.rollback()
        # Where the server can compile at all (it was built with LLVM), it did here.
        with admin.connect() as conn:
            can_compile = conn.exec_driver_sql(
                "SELECT pg_jit_available()").scalar_one()
        assert server_default_compiles == can_compile
    finally:
        store.close()
        admin.dispose()


def test_a_sqlite_sync_with_listed_trials_reads_no_more_of_the_study_than_it_returns(
    sqlite_url: str,
) -> None:
    """A sync reads the study's trials newer than the last one seen and the listed
    unfinished ones. With the two in one OR, SQLite's planner read the study's whole
    range of `ix_trials_study_id` and filtered it (40 ms a sync at 100 000 trials):
    each search of that index in the plan must be bounded by the trial id too."""
    store = Store(sqlite_url)
    try:
        study_id = store.create_new_study([0], "listed")
        trial_ids = [store.create_new_trial(study_id, None) for _ in range(6)]
        sent = _reads_sent(store)
        rows = store.load_trials(study_id, id_greater_than=trial_ids[3], ids=trial_ids[:2])
        assert [row.trial_id for row in rows] == trial_ids[:2] + trial_ids[4:]
        (statement, params), = sent
        with store._reader.connect() as conn:  # noqa: SLF001
            plan = [row[-1] for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + statement, params)]
        searches = [step for step in plan if "ix_trials_study_id" in step]
        assert searches, plan
        assert all("rowid>" in step or "rowid=" in step for step in searches), searches
    finally:
        store.close()
