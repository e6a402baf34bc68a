"""Large replies take room in the cache bound until they are sent (`reply_room`)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Collection

import optuna
import pytest
from optuna.storages._grpc.auto_generated import api_pb2

from bench.databases import prefill
from shardproxy.reply_room import COPIES, LARGE_REPLY, ReplyRoom
from shardproxy.routing import owner_of
from shardproxy.rows import COMPLETE, TrialRow
from shardproxy.study_caches import StudyCaches
from shardproxy.wire import METHOD_INDEX
from tests.proxies import proxy_client, running_workers

_GET_TRIALS = METHOD_INDEX["GetTrials"]


def _load(study_id: int, greater_than: int, ids: Collection[int]) -> list[TrialRow]:
    """Four finished trials per study, ids study_id * 10 + 0..3."""
    return [
        TrialRow(trial_id, trial_id % 10, COMPLETE, [0.0], "2026-12-06 10:00:00.000000",
                 "2026-12-06 10:00:01.000000", [], [], [], [])
        for trial_id in range(study_id * 10, study_id * 10 + 4)
        if trial_id > greater_than or trial_id in ids
    ]


def test_room_taken_for_a_reply_evicts_other_studies_until_it_is_given_back() -> None:
    per_study = StudyCaches(_load, max_trials=100).synced(1).memory_bytes
    caches = StudyCaches(_load, max_trials=100, max_bytes=3 * per_study)
    for study_id in (1, 2, 3):
        caches.synced(study_id)
    assert all(caches.holds(s) for s in (1, 2, 3))

    # A reply from study 1 that needs a study's worth of room: the least recently
    # used other study goes, the one the reply is read from stays.
    caches.reserve(per_study, keep=1)
    assert caches.reserved_bytes == per_study
    assert caches.holds(1) and not caches.holds(2) and caches.holds(3)
    caches.synced(2)  # no room for a third study beside the reply: the oldest goes
    assert caches.holds(2) and caches.holds(3) and not caches.holds(1)

    caches.unreserve(per_study)
    assert caches.reserved_bytes == 0
    caches.synced(1)  # the room is back: all three fit again
    assert all(caches.holds(s) for s in (1, 2, 3))


def test_a_reply_that_does_not_fit_beside_those_in_flight_waits_for_one_to_be_sent() -> None:
    caches = StudyCaches(_load, max_trials=100, max_bytes=1000)
    caches.reserve(600)
    taken = threading.Event()

    def take() -> None:
        caches.reserve(600, wait=30.0)
        taken.set()

    second = threading.Thread(target=take)
    second.start()
    try:
        assert not taken.wait(0.3), "took room that replies in flight hold"
        caches.unreserve(600)
        assert taken.wait(5.0)
        assert caches.reserved_bytes == 600
    finally:
        caches.unreserve(600)
        second.join()


def test_a_reply_waits_for_room_no_longer_than_its_wait_and_alone_any_size_goes() -> None:
    caches = StudyCaches(_load, max_trials=100, max_bytes=1000)
    started = time.monotonic()
    caches.reserve(10_000, wait=30.0)  # nothing else in flight: goes at once
    assert time.monotonic() - started < 1.0
    caches.reserve(600, wait=0.2)  # a client that stops reading stalls no one for long
    assert time.monotonic() - started >= 0.2
    assert caches.reserved_bytes == 10_600


def test_room_is_held_for_the_call_and_given_back_once_or_on_failure() -> None:
    caches = StudyCaches(_load, max_trials=100, max_bytes=100 * LARGE_REPLY)
    room = ReplyRoom(caches)
    room.hold(10 * LARGE_REPLY)  # outside a call nobody would give it back: not taken
    assert caches.reserved_bytes == 0

    def build(size: int) -> bytes:
        room.hold(size)
        return b"x"

    reply, give_back = room.serve(build, LARGE_REPLY - 1)  # small replies are not counted
    assert reply == b"x" and give_back is None and caches.reserved_bytes == 0
    reply, give_back = room.serve(build, LARGE_REPLY)
    assert caches.reserved_bytes == COPIES * LARGE_REPLY
    assert give_back is not None
    give_back()
    assert caches.reserved_bytes == 0

    def fail() -> bytes:
        room.hold(LARGE_REPLY)
        raise KeyError("study gone")

    with pytest.raises(KeyError):
        room.serve(fail)
    assert caches.reserved_bytes == 0


def test_a_reply_that_waited_for_room_is_told_with_how_long() -> None:
    caches = StudyCaches(_load, max_trials=100, max_bytes=3 * LARGE_REPLY)
    waits: list[float] = []
    room = ReplyRoom(caches, wait=0.2, on_waited=waits.append)

    def build() -> bytes:
        room.hold(LARGE_REPLY)
        return b"x"

    _, first = room.serve(build)
    assert waits == []  # alone: no wait
    _, second = room.serve(build)  # beside the first it does not fit: waits it out
    assert len(waits) == 1 and waits[0] >= 0.2
    assert first is not None and second is not None
    first()
    second()
    assert caches.reserved_bytes == 0


def test_a_relayed_full_read_takes_room_before_it_is_forwarded_once_its_size_is_known() -> None:
    caches = StudyCaches(_load, max_trials=100, max_bytes=100 * LARGE_REPLY)
    room = ReplyRoom(caches)
    reply = b"x" * LARGE_REPLY
    during: list[int] = []  # room taken while the owner is asked

    def fetch() -> bytes:
        during.append(caches.reserved_bytes)
        return reply

    for full_read in (True, True, False):  # a delta read's size is not foretold
        relayed, give_back = room.serve(room.relay, 7, full_read, fetch)
        assert relayed == reply and give_back is not None
        assert caches.reserved_bytes == COPIES * len(reply)  # counted once, however taken
        give_back()
    assert during == [0, COPIES * len(reply), 0]
    assert caches.reserved_bytes == 0


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_full_reads_through_the_proxy_take_room_in_owner_and_relay_and_give_it_back(
    mariadb_url: str,
) -> None:
    """A worker's bound holds three studies, or two and a full read's reply (twice
    its size) but not three and the reply: the third study's full read evicts the
    first, in the owner (whether the call came by gRPC or forwarded) and in the
    worker that relays the reply. Once the replies are sent, no room stays taken."""
    trials = 3000  # a full read is a reply of about 0.6 MB, a "large" one
    storage = optuna.storages.RDBStorage(mariadb_url)
    study_ids: list[int] = []
    while len(study_ids) < 3:  # three studies of worker 0's, for one bound to hold
        study = optuna.create_study(storage=storage)
        if owner_of(study._study_id, 2) == 0:
            study_ids.append(study._study_id)
            prefill(mariadb_url, study._study_id, trials, ["x"])
    storage.engine.dispose()
    first, second, third = study_ids

    def full_read(study_id: int) -> bytes:
        return api_pb2.GetTrialsRequest(study_id=study_id, included_trial_ids=[],
                                        trial_id_greater_than=-1).SerializeToString()

    with running_workers(mariadb_url, workers=2) as workers:  # the default, roomy bound
        reply_bytes = len(workers[0].front.handle(_GET_TRIALS, full_read(first)))
        study_bytes = workers[0].caches.memory_bytes
    assert reply_bytes >= LARGE_REPLY
    share = 2 * study_bytes + COPIES * reply_bytes + study_bytes // 2
    assert 3 * study_bytes <= share, "three studies alone must fit, or the test shows nothing"
    with running_workers(mariadb_url, workers=2, cache_memory=2 * share) as workers:
        owner, relay = workers
        with proxy_client(owner.port) as client:
            for study_id in study_ids:
                assert len(client.get_all_trials(study_id)) == trials
        assert _wait_for(lambda: owner.caches.reserved_bytes == 0)
        assert not owner.caches.holds(first)
        assert owner.caches.holds(second) and owner.caches.holds(third)

        # The relay's own cache gives way to the relayed reply while its call lasts.
        for study_id in study_ids:
            relay.caches.synced(study_id)  # (the relay's own studies would do the same)
        assert all(relay.caches.holds(s) for s in study_ids)
        reply, give_back = relay.room.serve(relay.front.handle, _GET_TRIALS, full_read(first))
        assert len(reply) == reply_bytes and give_back is not None
        assert relay.caches.reserved_bytes == COPIES * reply_bytes
        assert not relay.caches.holds(first)
        give_back()
        assert relay.caches.reserved_bytes == 0
        # ... and the owner gave back what the forwarded call took once it was sent.
        assert _wait_for(lambda: owner.caches.reserved_bytes == 0)
