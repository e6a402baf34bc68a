"""The forwarding channel between workers: framing, server, client pool."""

from __future__ import annotations

import multiprocessing
import os
import random
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from shardproxy.forwarding import STATUS_INTERNAL, ForwardClient, ForwardError, ForwardServer


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
        # A fixed text: what the error said goes to the log, not to the client.
        assert details == b"SetStudyUserAttribute failed"
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
