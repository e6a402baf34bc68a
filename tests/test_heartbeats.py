"""Heartbeats and keyed writes through shardproxy's own service, against the real databases.

The server side of `shardproxy.client`: beats land in Optuna's `trial_heartbeats`
by the database's clock, so RDBStorage on the same database agrees on which trials
are stale; all the beats of a group commit are one statement; a keyed write
repeated with its key is answered from its first commit and applied once; bad
input is refused with the status Optuna's client maps and changes nothing; and a
database only unmodified clients use gets no table of shardproxy's.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import grpc
import optuna
import pytest
import sqlalchemy
from optuna.storages import RDBStorage
from optuna.storages._grpc.auto_generated import api_pb2
from optuna.trial import TrialState

from shardproxy import extension
from shardproxy.extension_wire import (
    decode_stale_reply,
    encode_heartbeat_request,
    encode_once_request,
    encode_stale_request,
    extension_path,
)
from shardproxy.store import Store
from shardproxy.store.extended import Keyed, apply_extended
from shardproxy.store.heartbeats import RecordHeartbeat
from shardproxy.store.operations import CreateTrial
from shardproxy.store.pending import utc_now
from shardproxy.store.request_keys import KEEP, prune, request_keys
from tests.databases import fresh_database
from tests.proxies import proxy_client, running_workers

BACKENDS = ("sqlite", "mariadb", "postgres")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with fresh_database(request.param, tmp_path) as database:
        yield database


@pytest.fixture
def server(url: str) -> Iterator[int]:
    with running_workers(url, workers=2) as workers:
        yield workers[0].port


@pytest.fixture
def channel(server: int) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(f"127.0.0.1:{server}") as chan:
        yield chan


def call(channel: grpc.Channel, method: str, request: bytes) -> bytes:
    return channel.unary_unary(extension_path(method))(request, timeout=30)


def status_of(channel: grpc.Channel, method: str, request: bytes) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call(channel, method, request)
    return info.value.code()


def heartbeats(url: str) -> dict[int, object]:
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.exec_driver_sql("SELECT trial_id, heartbeat FROM trial_heartbeats")
            return {int(trial_id): beat for trial_id, beat in rows}
    finally:
        engine.dispose()


def new_studies(server: int, count: int) -> list[tuple[int, list[int]]]:
    """`count` studies (on both workers' shards), each with two RUNNING trials."""
    made = []
    with proxy_client(server) as client:
        for index in range(count):
            study = optuna.create_study(storage=client, study_name=f"s{index}")
            trials = [client.create_new_trial(study._study_id) for _ in range(2)]
            made.append((study._study_id, trials))
    return made


def test_beats_use_the_database_clock_and_rdbstorage_agrees_on_staleness(
    url: str, server: int, channel: grpc.Channel
) -> None:
    studies = new_studies(server, 3)
    for _, trials in studies:
        call(channel, "RecordHeartbeat", encode_heartbeat_request(trials[0]))
    beaten = heartbeats(url)
    assert sorted(beaten) == sorted(trials[0] for _, trials in studies)
    # Seconds: well above the one-second steps of DATETIME columns and of SQLite's
    # CURRENT_TIMESTAMP, so that a beat just written is never stale.
    grace = 4
    rdb = RDBStorage(url, heartbeat_interval=1, grace_period=grace)

    def proxy_stale(study_id: int) -> list[int]:
        return decode_stale_reply(
            call(channel, "GetStaleTrialIds", encode_stale_request(study_id, float(grace)))
        )

    try:
        for study_id, _ in studies:
            assert proxy_stale(study_id) == []
            assert rdb._get_stale_trial_ids(study_id) == []
        time.sleep(grace + 1.5)  # past the grace period, by any clock with a one-second step
        for study_id, trials in studies:
            # The trial that never beat is not stale, as in RDBStorage.
            assert proxy_stale(study_id) == [trials[0]]
            assert rdb._get_stale_trial_ids(study_id) == [trials[0]]
            # A beat written by RDBStorage counts for the proxy, and the other way round.
            rdb.record_heartbeat(trials[0])
            assert proxy_stale(study_id) == []
        # A later beat moves the row's time on, by the database's clock.
        call(channel, "RecordHeartbeat", encode_heartbeat_request(studies[0][1][0]))
        assert heartbeats(url)[studies[0][1][0]] >= beaten[studies[0][1][0]]  # type: ignore[operator]
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def test_a_finished_trial_is_not_stale(url: str, server: int, channel: grpc.Channel) -> None:
    ((study_id, trials),) = new_studies(server, 1)
    call(channel, "RecordHeartbeat", encode_heartbeat_request(trials[0]))
    with proxy_client(server) as client:
        client.set_trial_state_values(trials[0], TrialState.COMPLETE, [1.0])
    time.sleep(2.2)
    assert decode_stale_reply(
        call(channel, "GetStaleTrialIds", encode_stale_request(study_id, 1.0))
    ) == []


@pytest.mark.parametrize("read_whole_below", [0, extension.READ_WHOLE_BELOW],
                         ids=["among-the-synced-unfinished", "reading-the-study"])
def test_trials_written_since_the_owners_last_sync_are_found_stale_and_no_others(
    url: str, server: int, channel: grpc.Channel, read_whole_below: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A large study's owner looks among the unfinished trials its sync finds (here
    every study counts as large, or none does): a trial another writer created
    after the owner last synced the study, and one the owner saw RUNNING that
    another writer finished, are judged as RDBStorage judges them."""
    monkeypatch.setattr(extension, "READ_WHOLE_BELOW", read_whole_below)
    ((study_id, trials),) = new_studies(server, 1)
    with proxy_client(server) as client:  # the owner caches the study
        assert len(client.get_all_trials(study_id)) == 2
    grace = 1.0

    def proxy_stale() -> list[int]:
        return decode_stale_reply(
            call(channel, "GetStaleTrialIds", encode_stale_request(study_id, grace)))

    for trial_id in trials:
        call(channel, "RecordHeartbeat", encode_heartbeat_request(trial_id))
    assert proxy_stale() == []  # the owner has synced the study
    rdb = RDBStorage(url, heartbeat_interval=1, grace_period=int(grace))
    try:
        unseen = rdb.create_new_trial(study_id)
        rdb.record_heartbeat(unseen)
        rdb.set_trial_state_values(trials[1], TrialState.FAIL)
        time.sleep(grace + 1.5)  # past the grace period, by any clock with a one-second step
        assert proxy_stale() == sorted([trials[0], unseen])
        assert sorted(rdb._get_stale_trial_ids(study_id)) == proxy_stale()
    finally:
        rdb.remove_session()
        rdb.engine.dispose()


def test_the_stale_trials_are_looked_up_by_id_not_read_from_the_study(sqlite_url: str) -> None:
    """Among the listed trials the read costs O(those trials): on SQLite's plan, each
    looked up by its id, not a search of the study's index by the study alone
    (O(study): 7.7 ms at 100 000 trials). Listed trials that are finished, or of
    another study, are not stale."""
    store = Store(sqlite_url)
    try:
        study_id = store.create_new_study([1], "stale")
        other_id = store.create_new_study([1], "other")
        running = [store.create_new_trial(study_id, None) for _ in range(3)]
        other = store.create_new_trial(other_id, None)
        store.set_trial_state_values(running[2], 1, [1.0])  # COMPLETE
        engine = sqlalchemy.create_engine(sqlite_url, poolclass=sqlalchemy.pool.NullPool)
        try:
            with engine.begin() as conn:
                conn.exec_driver_sql(
                    "INSERT INTO trial_heartbeats (trial_id, heartbeat) SELECT trial_id, "
                    "'2000-01-01 00:00:00' FROM trials")
        finally:
            engine.dispose()
        sent: list[tuple[str, object]] = []
        sqlalchemy.event.listen(
            store._reader, "before_cursor_execute",  # noqa: SLF001
            lambda conn, cursor, statement, params, *_: sent.append((statement, params)))
        assert store.stale_trial_ids(study_id, 60.0, among=[*running, other]) == running[:2]
        assert store.stale_trial_ids(study_id, 60.0) == running[:2]
        (listed, listed_params), _whole = sent
        with store._reader.connect() as conn:  # noqa: SLF001
            plan = [row[-1] for row in conn.exec_driver_sql(
                "EXPLAIN QUERY PLAN " + listed, listed_params)]
        trial_steps = [step for step in plan if " trials " in f" {step} "]
        assert trial_steps and all("rowid=" in step for step in trial_steps), plan
        sent.clear()
        assert store.stale_trial_ids(study_id, 60.0, among=[]) == []
        assert sent == []  # nothing listed: no statement
    finally:
        store.close()


def test_bad_input_is_refused_and_changes_nothing(
    url: str, server: int, channel: grpc.Channel
) -> None:
    ((study_id, trials),) = new_studies(server, 1)
    assert status_of(channel, "RecordHeartbeat", encode_heartbeat_request(10**9)) == (
        grpc.StatusCode.NOT_FOUND
    )
    assert status_of(channel, "RecordHeartbeat", b"\x0a\x05ab") == grpc.StatusCode.INVALID_ARGUMENT
    for grace in (0.0, -1.0, float("nan"), float("inf")):
        request = encode_stale_request(study_id, grace)
        assert status_of(channel, "GetStaleTrialIds", request) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    inner = api_pb2.CreateNewTrialRequest(study_id=study_id, template_trial_is_none=True)
    for key in ("", "x" * 65, "ключ"):
        request = encode_once_request(key, False, inner.SerializeToString())
        assert status_of(channel, "CreateNewTrialOnce", request) == (
            grpc.StatusCode.INVALID_ARGUMENT
        )
    missing = api_pb2.CreateNewTrialRequest(study_id=10**9, template_trial_is_none=True)
    request = encode_once_request("k-missing", False, missing.SerializeToString())
    assert status_of(channel, "CreateNewTrialOnce", request) == grpc.StatusCode.NOT_FOUND
    bad_state = api_pb2.SetTrialStateValuesRequest(trial_id=trials[0], state=9)
    request = encode_once_request("k-state", False, bad_state.SerializeToString())
    assert status_of(channel, "SetTrialStateValuesOnce", request) == (
        grpc.StatusCode.INVALID_ARGUMENT
    )
    assert heartbeats(url) == {}
    with proxy_client(server) as client:
        assert [t.state for t in client.get_all_trials(study_id)] == [TrialState.RUNNING] * 2


def test_a_repeated_keyed_write_is_answered_from_its_first_commit(
    url: str, server: int, channel: grpc.Channel
) -> None:
    ((study_id, _),) = new_studies(server, 1)
    create = api_pb2.CreateNewTrialRequest(
        study_id=study_id, template_trial_is_none=True
    ).SerializeToString()

    def create_once(key: str, repeated: bool) -> int:
        reply = call(channel, "CreateNewTrialOnce", encode_once_request(key, repeated, create))
        return api_pb2.CreateNewTrialReply.FromString(reply).trial_id

    first = create_once("k1", False)
    assert create_once("k1", True) == first
    finish = api_pb2.SetTrialStateValuesRequest(
        trial_id=first, state=api_pb2.COMPLETE, values=[2.0]
    ).SerializeToString()
    for repeated in (False, True, True):
        request = encode_once_request("k2", repeated, finish)
        reply = call(channel, "SetTrialStateValuesOnce", request)
        assert api_pb2.SetTrialStateValuesReply.FromString(reply).trial_updated
    # A new key is a new call: the trial is finished now.
    with pytest.raises(grpc.RpcError) as info:
        call(channel, "SetTrialStateValuesOnce", encode_once_request("k3", True, finish))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with proxy_client(server) as client:
        trials = client.get_all_trials(study_id)
    assert len(trials) == 3  # two from new_studies, one keyed
    assert [t.values for t in trials if t._trial_id == first] == [[2.0]]


def test_unmodified_clients_leave_no_table_of_shardproxys(url: str, server: int) -> None:
    new_studies(server, 1)
    engine = sqlalchemy.create_engine(url, poolclass=sqlalchemy.pool.NullPool)
    try:
        with engine.connect() as conn:
            assert not sqlalchemy.inspect(conn).has_table(request_keys.name)
    finally:
        engine.dispose()


def test_a_batch_writes_all_its_beats_with_one_statement(url: str) -> None:
    store = Store(url)
    try:
        study_id = store.create_new_study([1], "beats")
        trial_ids = [store.create_new_trial(study_id, None) for _ in range(50)]
        store.create_new_trial_once(study_id, None, "prepare-the-table", False)
        engine = store._writer
        statements: list[str] = []

        def count(conn: object, cursor: object, statement: str, *args: object) -> None:
            statements.append(statement)

        sqlalchemy.event.listen(engine, "before_cursor_execute", count)
        try:
            with engine.begin() as conn:
                beats = [RecordHeartbeat(t) for t in trial_ids]
                applied = apply_extended(conn, beats, lambda c, plain: pytest.fail("no plain"))
        finally:
            sqlalchemy.event.remove(engine, "before_cursor_execute", count)
        assert applied.results == [None] * 50
        # SQLite's engine begins with BEGIN IMMEDIATE, a statement of its own.
        assert len([s for s in statements if not s.startswith("BEGIN")]) == 1, statements
        assert sorted(heartbeats(url)) == trial_ids

        # Beside other writes: the plain batch, then one INSERT of keys, one upsert.
        statements.clear()
        sqlalchemy.event.listen(engine, "before_cursor_execute", count)
        try:
            with engine.begin() as conn:
                create = Keyed(CreateTrial(study_id, None), "m", False)
                mixed = [RecordHeartbeat(trial_ids[0]), create]
                applied = apply_extended(
                    conn, mixed, lambda c, plain: store._apply_plain(c, plain, False)
                )
        finally:
            sqlalchemy.event.remove(engine, "before_cursor_execute", count)
        assert applied.results[0] is None and isinstance(applied.results[1], int)
        assert sum("trial_heartbeats" in s for s in statements) == 1
        assert sum("shardproxy_request_keys" in s for s in statements) == 1
    finally:
        store.close()


def test_keys_past_their_keeping_are_pruned(sqlite_url: str) -> None:
    store = Store(sqlite_url)
    try:
        study_id = store.create_new_study([1], "keys")
        store.create_new_trial_once(study_id, None, "recent", False)
        store.create_new_trial_once(study_id, None, "old", False)
        with store._writer.begin() as conn:
            conn.execute(request_keys.update().where(request_keys.c.request_key == "old")
                         .values(created_at=utc_now() - KEEP - timedelta(minutes=1)))
        prune(store._writer)
        with store._writer.connect() as conn:
            left = [r[0] for r in conn.execute(sqlalchemy.select(request_keys.c.request_key))]
        assert left == ["recent"]
    finally:
        store.close()
