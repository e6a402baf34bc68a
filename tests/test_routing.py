from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator

import pytest

from shardproxy.routing import (
    STATUS_INTERNAL,
    ForwardClient,
    ForwardError,
    ForwardServer,
    TrialStudyMap,
    owner_of,
)

# -- owner_of ------------------------------------------------------------------------


def test_owner_of_has_fixed_values() -> None:
    # Pinned: every worker of every run must agree, so these may never change.
    first_sixteen = [0, 1, 2, 3, 1, 2, 3, 0, 2, 3, 0, 1, 0, 1, 2, 3]
    assert [owner_of(i, 4) for i in range(1, 17)] == first_sixteen
    scattered = [2, 0, 1, 2, 1, 2, 0, 2]
    assert [owner_of(i, 3) for i in (0, 1, 2, 3, 1000, 2**31 - 1, 2**40, -5)] == scattered
    assert [owner_of(i, 7) for i in range(100, 114)] == [6, 0, 1, 2, 3, 4, 1, 2, 3, 4, 5, 6, 0, 0]


def test_owner_of_agrees_across_processes_with_other_hash_seeds() -> None:
    code = "from shardproxy.routing import owner_of; print([owner_of(i, 5) for i in range(50)])"
    outputs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        for seed in ("1", "2")
    }
    assert outputs == {str([owner_of(i, 5) for i in range(50)]) + "\n"}


@pytest.mark.parametrize("shard_count", [1, 2, 3, 4, 7, 16])
def test_first_studies_land_on_distinct_shards(shard_count: int) -> None:
    assert {owner_of(i, shard_count) for i in range(1, shard_count + 1)} == set(range(shard_count))


@pytest.mark.parametrize("shard_count", [2, 3, 4, 8])
@pytest.mark.parametrize("first", [1, 2, 1000])
def test_any_consecutive_ids_spread_within_one_of_even(shard_count: int, first: int) -> None:
    for count in (shard_count * 3, shard_count * 5 + 1):
        per_shard = Counter(owner_of(i, shard_count) for i in range(first, first + count))
        sizes = [per_shard[shard] for shard in range(shard_count)]
        assert max(sizes) - min(sizes) <= 2, sizes


@pytest.mark.parametrize("shard_count", [2, 3, 4, 8])
@pytest.mark.parametrize("stride", [2, 3, 4, 8])
def test_strided_ids_spread_evenly(shard_count: int, stride: int) -> None:
    ids = range(1, 1 + stride * 8000, stride)
    per_shard = Counter(owner_of(i, shard_count) for i in ids)
    mean = len(ids) / shard_count
    assert set(per_shard) == set(range(shard_count))
    assert all(abs(n - mean) < 0.1 * mean for n in per_shard.values()), per_shard


def test_owner_of_refuses_zero_shards() -> None:
    with pytest.raises(ValueError, match="shard_count"):
        owner_of(1, 0)


# -- TrialStudyMap -----------------------------------------------------------------


def study_of(trial_id: int) -> int:
    return trial_id // 7 + 1


def test_map_answers_none_for_unknown_trials() -> None:
    trial_studies = TrialStudyMap()
    assert trial_studies.get(1) is None
    trial_studies.learn(1, 10)
    assert trial_studies.get(1) == 10
    assert trial_studies.get(2) is None
    assert len(trial_studies) == 1


@pytest.mark.parametrize("order", ["ascending", "shuffled", "descending"])
def test_map_keeps_every_entry_across_flushes_and_merges(order: str) -> None:
    trial_ids = list(range(1, 5001))
    if order == "shuffled":
        random.Random(7).shuffle(trial_ids)
    elif order == "descending":
        trial_ids.reverse()
    trial_studies = TrialStudyMap(buffer_size=16)
    for start in range(0, len(trial_ids), 100):
        trial_studies.learn_many((t, study_of(t)) for t in trial_ids[start : start + 100])
    assert all(trial_studies.get(t) == study_of(t) for t in trial_ids)
    assert trial_studies.get(0) is None and trial_studies.get(5001) is None
    assert len(trial_studies) == 5000
    # Runs shrink geometrically, so there are only a handful of them.
    assert len(trial_studies._runs) <= 10


def test_map_ignores_entries_it_already_holds() -> None:
    trial_studies = TrialStudyMap(buffer_size=4)
    for _ in range(3):
        trial_studies.learn_many((t, study_of(t)) for t in range(100))
    assert len(trial_studies) == 100


def test_map_newest_study_wins_for_a_relearned_id() -> None:
    trial_studies = TrialStudyMap(buffer_size=4)
    trial_studies.learn_many((t, 1) for t in range(1, 41))
    trial_studies.learn(40, 2)  # the highest rowid reused after a delete (SQLite)
    assert trial_studies.get(40) == 2
    trial_studies.learn_many((t, 3) for t in range(41, 81))  # merges the runs
    assert trial_studies.get(40) == 2
    assert trial_studies.get(39) == 1
    assert trial_studies.get(80) == 3


def test_map_forgets_a_deleted_study_only() -> None:
    trial_studies = TrialStudyMap(buffer_size=8)
    trial_studies.learn_many((t, study_of(t)) for t in range(1, 200))
    trial_studies.forget_study(study_of(50))
    for t in range(1, 200):
        expected = None if study_of(t) == study_of(50) else study_of(t)
        assert trial_studies.get(t) == expected
    assert len(trial_studies) == 199 - 7


def test_map_readers_never_see_a_wrong_study_while_writers_learn() -> None:
    trial_studies = TrialStudyMap(buffer_size=32)
    errors: list[str] = []
    done = threading.Event()

    def write(offset: int) -> None:
        for start in range(offset, 20000, 400):
            trial_studies.learn_many((t, study_of(t)) for t in range(start, start + 100))

    def read() -> None:
        rng = random.Random(threading.get_ident())
        while not done.is_set():
            t = rng.randrange(20000)
            found = trial_studies.get(t)
            if found is not None and found != study_of(t):
                errors.append(f"trial {t}: {found}")

    writers = [threading.Thread(target=write, args=(i * 100,)) for i in range(4)]
    readers = [threading.Thread(target=read) for _ in range(2)]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(60)
    done.set()
    for thread in readers:
        thread.join(60)
    assert errors == []
    assert all(trial_studies.get(t) == study_of(t) for t in range(20000))


# -- forwarding channel ----------------------------------------------------------------


@pytest.fixture
def socket_dir() -> Iterator[str]:
    # Short: a Unix socket path must fit in 108 bytes, pytest's tmp_path may not.
    path = tempfile.mkdtemp(prefix="sp-fwd-")
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def serve(socket_dir: str) -> Iterator[Callable[..., ForwardServer]]:
    servers: list[ForwardServer] = []

    def start(handler: Callable[[int, bytes], tuple[int, bytes]], **options: int) -> ForwardServer:
        server = ForwardServer(os.path.join(socket_dir, "peer.sock"), handler, **options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close(timeout=10)


def tagged_echo(method_index: int, request: bytes) -> tuple[int, bytes]:
    return 0, b"%d:" % method_index + request


def test_call_round_trips_method_and_payload(serve: Callable[..., ForwardServer]) -> None:
    server = serve(tagged_echo)
    client = ForwardClient(server.path)
    try:
        assert client.call(3, b"hello", timeout=10) == (0, b"3:hello")
        assert client.call(0, b"", timeout=None) == (0, b"0:")
    finally:
        client.close()


def test_call_relays_a_status_and_its_details(serve: Callable[..., ForwardServer]) -> None:
    server = serve(lambda method, request: (5, "trial 9 not found — ✓".encode()))
    client = ForwardClient(server.path)
    try:
        status, details = client.call(1, b"x", timeout=10)
    finally:
        client.close()
    assert (status, details.decode()) == (5, "trial 9 not found — ✓")


def test_handler_exception_becomes_internal_and_server_keeps_serving(
    serve: Callable[..., ForwardServer],
) -> None:
    def handler(method_index: int, request: bytes) -> tuple[int, bytes]:
        if request == b"boom":
            raise RuntimeError("cache exploded")
        return tagged_echo(method_index, request)

    server = serve(handler)
    client = ForwardClient(server.path)
    try:
        status, details = client.call(2, b"boom", timeout=10)
        assert status == STATUS_INTERNAL
        assert b"cache exploded" in details
        assert client.call(2, b"fine", timeout=10) == (0, b"2:fine")
    finally:
        client.close()


def test_large_payloads_travel_both_ways(serve: Callable[..., ForwardServer]) -> None:
    server = serve(lambda method, request: (0, request[::-1] + request))
    client = ForwardClient(server.path)
    payload = random.Random(3).randbytes(6_000_000)
    try:
        for timeout in (30.0, None):
            status, reply = client.call(1, payload, timeout=timeout)
            assert status == 0
            assert reply == payload[::-1] + payload
    finally:
        client.close()


def test_concurrent_calls_each_get_their_own_reply(serve: Callable[..., ForwardServer]) -> None:
    def handler(method_index: int, request: bytes) -> tuple[int, bytes]:
        if int(request.split(b"-")[1]) % 5 == 0:
            threading.Event().wait(0.002)  # some replies overtake others
        return tagged_echo(method_index, request)

    server = serve(handler)
    client = ForwardClient(server.path)
    mismatches: list[tuple[bytes, bytes]] = []

    def caller(number: int) -> None:
        for call in range(150):
            request = b"%d-%d" % (number, call)
            status, reply = client.call(number, request, timeout=30)
            if (status, reply) != (0, b"%d:" % number + request):
                mismatches.append((request, reply))

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    client.close()
    assert not any(thread.is_alive() for thread in threads)
    assert mismatches == []


def test_slow_call_does_not_hold_up_another(serve: Callable[..., ForwardServer]) -> None:
    release = threading.Event()

    def handler(method_index: int, request: bytes) -> tuple[int, bytes]:
        if request == b"slow":
            release.wait(30)
        return tagged_echo(method_index, request)

    server = serve(handler)
    client = ForwardClient(server.path)
    slow_reply: list[tuple[int, bytes]] = []
    slow = threading.Thread(target=lambda: slow_reply.append(client.call(1, b"slow", 30)))
    slow.start()
    try:
        assert client.call(2, b"fast", timeout=30) == (0, b"2:fast")
        assert slow.is_alive()  # the fast call was answered while the slow one waited
    finally:
        release.set()
        slow.join(30)
        client.close()
    assert slow_reply == [(0, b"1:slow")]


def test_call_times_out_then_the_client_keeps_working(
    serve: Callable[..., ForwardServer],
) -> None:
    def handler(method_index: int, request: bytes) -> tuple[int, bytes]:
        threading.Event().wait(float(request))
        return 0, request

    server = serve(handler)
    client = ForwardClient(server.path)
    try:
        with pytest.raises(TimeoutError):
            client.call(1, b"2.0", timeout=0.1)
        assert client.call(1, b"0", timeout=10) == (0, b"0")
        # A receive limit left by a timed call must not cut short an unlimited one.
        assert client.call(1, b"0", timeout=0.2) == (0, b"0")
        assert client.call(1, b"0.4", timeout=None) == (0, b"0.4")
    finally:
        client.close()


def test_server_close_finishes_calls_in_flight(serve: Callable[..., ForwardServer]) -> None:
    started = threading.Event()

    def handler(method_index: int, request: bytes) -> tuple[int, bytes]:
        started.set()
        threading.Event().wait(0.3)
        return 0, b"finished"

    server = serve(handler)
    client = ForwardClient(server.path, connect_timeout=0.2)
    replies: list[tuple[int, bytes]] = []
    caller = threading.Thread(target=lambda: replies.append(client.call(1, b"", timeout=30)))
    caller.start()
    assert started.wait(30)
    server.close(timeout=30)
    caller.join(30)
    assert replies == [(0, b"finished")]
    assert not os.path.exists(server.path)
    with pytest.raises(ForwardError, match="unavailable"):
        client.call(1, b"", timeout=30)
    client.close()


def test_peer_down_is_a_bounded_error_naming_it(socket_dir: str) -> None:
    missing = os.path.join(socket_dir, "gone.sock")
    client = ForwardClient(missing, connect_timeout=0.2)
    with pytest.raises(ForwardError, match="gone.sock"):
        client.call(1, b"x", timeout=30)
    client.close()


def test_client_reconnects_after_the_peer_restarts(serve: Callable[..., ForwardServer]) -> None:
    first = serve(lambda method, request: (0, b"first"))
    client = ForwardClient(first.path)
    try:
        assert client.call(1, b"", timeout=10) == (0, b"first")
        first.close()
        second = serve(lambda method, request: (0, b"second"))
        assert client.call(1, b"", timeout=10) == (0, b"second")
        assert second.path == first.path
    finally:
        client.close()


def serve_until_killed(path: str, ready: multiprocessing.synchronize.Event) -> None:
    ForwardServer(path, lambda method, request: (0, b"pid %d" % os.getpid()))
    ready.set()
    threading.Event().wait(120)


def test_client_reconnects_after_the_peer_was_killed(socket_dir: str) -> None:
    # A killed peer leaves its socket file behind; its successor replaces it.
    path = os.path.join(socket_dir, "peer.sock")
    context = multiprocessing.get_context("spawn")
    client = ForwardClient(path, connect_timeout=5)
    replies = []
    for _ in range(2):
        ready = context.Event()
        peer = context.Process(target=serve_until_killed, args=(path, ready))
        peer.start()
        try:
            assert ready.wait(60)
            replies.append(client.call(1, b"", timeout=30))
        finally:
            peer.kill()
            peer.join(30)
    client.close()
    assert replies[0] != replies[1]
    assert [status for status, _ in replies] == [0, 0]


def test_a_request_the_dying_peer_never_read_goes_to_its_replacement(
    serve: Callable[..., ForwardServer], socket_dir: str
) -> None:
    # The first peer accepts, reads nothing and goes away while the request (bigger
    # than the socket buffer) is being written: the send fails, nothing was
    # delivered, so even a write may go to the replacement that binds the path next.
    path = os.path.join(socket_dir, "peer.sock")
    dying = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dying.bind(path)
    dying.listen()
    seen: list[tuple[int, int]] = []

    def die_then_replace() -> None:
        conn, _ = dying.accept()
        time.sleep(0.2)  # the client is blocked in sendall by now
        conn.close()
        dying.close()
        os.unlink(path)
        serve(lambda method, request: (seen.append((method, len(request))), (0, b"ok"))[1])

    replacer = threading.Thread(target=die_then_replace)
    replacer.start()
    client = ForwardClient(path, connect_timeout=10)
    try:
        request = b"w" * (8 << 20)
        assert client.call(11, request, timeout=30) == (0, b"ok")
    finally:
        replacer.join(30)
        client.close()
    assert seen == [(11, len(request))]  # delivered once, whole


def test_oversized_messages_are_refused(serve: Callable[..., ForwardServer]) -> None:
    server = serve(lambda method, request: (0, b"r" * 2000), max_message_size=1000)
    client = ForwardClient(server.path, max_message_size=1000)
    try:
        with pytest.raises(ValueError, match="exceeds"):
            client.call(1, b"q" * 1001, timeout=10)
        status, details = client.call(1, b"q", timeout=10)  # the server refuses its reply
        assert status == STATUS_INTERNAL and b"exceeds" in details
    finally:
        client.close()
    lenient = ForwardClient(server.path)  # sends more than the server accepts
    try:
        with pytest.raises(ForwardError):
            lenient.call(1, b"q" * 5000, timeout=10)
    finally:
        lenient.close()


def test_closed_client_refuses_calls(serve: Callable[..., ForwardServer]) -> None:
    server = serve(tagged_echo)
    client = ForwardClient(server.path)
    assert client.call(1, b"", timeout=10) == (0, b"1:")
    client.close()
    with pytest.raises(ForwardError, match="closed"):
        client.call(1, b"", timeout=10)
