"""A store opens its pools' connections once: bursts past them wait instead of
connecting and disconnecting per statement."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import sqlalchemy
from sqlalchemy.engine import Engine

from shardproxy.store import Store
from tests.store.lockstep import in_lockstep

SERVER_URLS = ("mariadb_url", "postgres_url")
POOL_SIZE = 3
THREADS = 24
ROUNDS = 15


def _count_connects(engine: Engine) -> list[int]:
    opened = [0]

    @sqlalchemy.event.listens_for(engine, "connect")
    def _connected(*_: object) -> None:
        opened[0] += 1

    return opened


def _burst(work: Callable[[int], None]) -> list[BaseException]:
    """Runs work(i) ROUNDS times on each of THREADS threads released together; the
    errors."""
    outcomes = in_lockstep(THREADS, lambda i: [work(i) for _ in range(ROUNDS)])
    return [outcome for outcome in outcomes if isinstance(outcome, BaseException)]


@pytest.fixture(params=SERVER_URLS)
def store(request: pytest.FixtureRequest) -> Iterator[Store]:
    """A store with small pools on each database server."""
    store = Store(request.getfixturevalue(request.param), pool_size=POOL_SIZE)
    try:
        yield store
    finally:
        store.close()


def test_reads_past_the_pool_wait_for_its_connections(store: Store) -> None:
    study_id = store.create_new_study([0], "pooled")
    for _ in range(20):
        store.create_new_trial(study_id, None)
    opened = _count_connects(store._reader)

    def read(_: int) -> None:
        assert len(store.load_trials(study_id, id_greater_than=-1)) == 20

    assert _burst(read) == []
    # 24 threads, 360 reads: never more connections than the pool holds.
    assert 1 <= opened[0] <= POOL_SIZE


def test_study_writes_beside_the_group_commit_keep_to_the_pool(store: Store) -> None:
    study_id = store.create_new_study([0], "pooled-writes")
    opened = _count_connects(store._writer)

    def write(i: int) -> None:
        if i % 2:
            store.create_new_trial(study_id, None)
        else:
            store.set_study_user_attr(study_id, f"key-{i}", '"value"')

    assert _burst(write) == []
    assert len(store.load_trials(study_id, id_greater_than=-1)) == THREADS // 2 * ROUNDS
    # The committer's own connection and the pool's for the study writes.
    assert opened[0] <= POOL_SIZE + 1
