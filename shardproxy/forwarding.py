"""The channel between workers: request bytes to a study's owner, reply bytes back.

`ForwardServer` / `ForwardClient` carry a request over a Unix domain socket to the
worker that owns its study (see `routing`). A forwarded RPC must cost far less than
a second gRPC call, so the channel is a bare framed byte stream served by blocking
threads: a call is one `sendall` and one `recv_into` on each side, with no thread
hand-off.

Frames are a fixed header and a payload::

    uint32 payload length | uint32 request id | int32 method index (request) / status (reply)

Status 0 means OK with the reply bytes as payload; any other value is a gRPC status
code with UTF-8 details as payload. A connection carries one call at a time; the
client keeps a pool of connections per peer, so concurrent calls never queue behind
a slow one, and the server runs one thread per connection.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import select
import socket
import stat
import struct
import threading
import time
from collections.abc import Callable

from shardproxy.extension_wire import ALL_METHODS
from shardproxy.reply_room import LARGE_REPLY_METHODS, ReplyRoom

_logger = logging.getLogger(__name__)

STATUS_OK = 0
STATUS_INTERNAL = 13  # gRPC's INTERNAL: the handler raised
# The most a frame's uint32 length can say, as much as gRPC's own 4-byte message
# length can: replies are no more limited here than on the client's connection (a
# GetTrials reply of a huge study is large). Requests are limited to what the
# worker's gRPC server accepts (`max_request_size`, from --max-request-bytes), so
# a request the front took is never refused by the owner.
DEFAULT_MAX_MESSAGE_SIZE = (1 << 32) - 1

_HEADER = struct.Struct("<IIi")  # payload length, request id, method index / status
_TIMEVAL = struct.Struct("@ll")  # struct timeval, for SO_RCVTIMEO
_RECV_BUFFER_SIZE = 64 * 1024
_COALESCE_LIMIT = 64 * 1024  # below this, header and payload go out in one write
_RECONNECT_PAUSE = 0.02


class ForwardError(ConnectionError):
    """The peer could not be reached or broke the protocol; the caller answers UNAVAILABLE."""


class _Channel:
    """One stream socket carrying whole frames in both directions.

    The socket stays in blocking mode: a Python socket timeout would cost a mode
    switch and a poll before every send and receive (measured: a third more CPU per
    call). A deadline is one SO_RCVTIMEO per receive instead, and a small frame is
    sent without any, because a connection carries one call at a time and so meets
    an empty socket buffer.
    """

    __slots__ = ("sock", "_buffer", "_view", "_receive_limited")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = bytearray(_RECV_BUFFER_SIZE)
        self._view = memoryview(self._buffer)
        self._receive_limited = False  # an SO_RCVTIMEO is set

    def send_frame(
        self, request_id: int, code: int, payload: bytes, deadline: float | None = None
    ) -> None:
        header = _HEADER.pack(len(payload), request_id, code)
        if len(payload) <= _COALESCE_LIMIT:
            self.sock.sendall(header + payload)
            return
        # A large payload may wait for the peer to read: bound that by the deadline.
        # Two writes spare a copy of the payload just to prepend twelve bytes.
        if deadline is not None:
            self.sock.settimeout(_remaining(deadline))
        try:
            self.sock.sendall(header)
            self.sock.sendall(payload)
        finally:
            self.sock.settimeout(None)

    def recv_frame(
        self, max_size: int, deadline: float | None = None
    ) -> tuple[int, int, bytes] | None:
        """(request id, code, payload), or None when the peer closed between frames."""
        received = 0
        while received < _HEADER.size:
            count = self._recv_into(self._view[received:], deadline)
            if count == 0:
                if received == 0:
                    return None
                raise ForwardError("connection closed inside a frame header")
            received += count
        length, request_id, code = _HEADER.unpack_from(self._buffer)
        if length > max_size:
            raise ForwardError(f"frame of {length} bytes exceeds the limit of {max_size}")
        end = _HEADER.size + length
        if end > len(self._buffer):
            return request_id, code, self._recv_large(length, received, deadline)
        while received < end:
            count = self._recv_into(self._view[received:end], deadline)
            if count == 0:
                raise ForwardError("connection closed inside a frame")
            received += count
        if received > end:  # one call at a time per connection: nothing may follow
            raise ForwardError("peer sent data beyond the frame")
        return request_id, code, bytes(self._view[_HEADER.size : end])

    def _recv_large(self, length: int, received: int, deadline: float | None) -> bytes:
        payload = bytearray(length)
        start = received - _HEADER.size
        payload[:start] = self._view[_HEADER.size : received]
        view = memoryview(payload)
        position = start
        while position < length:
            count = self._recv_into(view[position:], deadline)
            if count == 0:
                raise ForwardError("connection closed inside a frame")
            position += count
        return bytes(payload)

    def _recv_into(self, view: memoryview, deadline: float | None) -> int:
        if deadline is None:
            if self._receive_limited:
                self._limit_receive(0, 0)  # all zero: no limit
                self._receive_limited = False
            return self.sock.recv_into(view)
        remaining = _remaining(deadline)
        seconds = int(remaining)
        self._limit_receive(seconds, max(1, int((remaining - seconds) * 1e6)))
        self._receive_limited = True
        try:
            return self.sock.recv_into(view)
        except BlockingIOError:  # SO_RCVTIMEO expired
            raise TimeoutError("no reply from the peer in time") from None

    def _limit_receive(self, seconds: int, microseconds: int) -> None:
        timeval = _TIMEVAL.pack(seconds, microseconds)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)

    def close(self) -> None:
        self.sock.close()


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise TimeoutError("no reply from the peer in time")
    return remaining


Handler = Callable[[int, bytes], tuple[int, bytes]]


class ForwardServer:
    """Serves `handler(method_index, request) -> (status, payload)` on a Unix socket.

    Requests are at most `max_request_size` bytes (default `max_message_size`),
    replies at most `max_message_size`. Listens as soon as it is constructed. One
    thread per connection: a client holds a connection for one call at a time, so
    the threads never outnumber the calls the peers make concurrently. A handler
    exception is answered with status INTERNAL. `close()` stops accepting, lets calls
    in flight finish and reply, then closes every connection.

    With a `room`, a call whose reply may be large is served within it, and the room
    the reply took is given back once its frame is written (`reply_room`).
    """

    def __init__(
        self,
        path: str,
        handler: Handler,
        *,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_request_size: int | None = None,
        room: ReplyRoom | None = None,
    ) -> None:
        self.path = path
        self._handler = handler
        self._room = room
        self._max_message_size = max_message_size
        self._max_request_size = max_message_size if max_request_size is None else max_request_size
        self._listener = _listen_unix(path)
        self._inode = os.stat(path).st_ino
        self._wake_r, self._wake_w = os.pipe()
        self._channels: dict[_Channel, threading.Thread] = {}
        self._lock = threading.Lock()
        self._closing = False
        self._accept_thread = threading.Thread(
            target=self._accept_loop, name=f"forward-accept {path}", daemon=True
        )
        self._accept_thread.start()

    def close(self, timeout: float | None = None) -> None:
        """Stops accepting and waits (up to `timeout`) for calls in flight to be answered."""
        with self._lock:
            if self._closing:
                return
            self._closing = True
        os.write(self._wake_w, b"\0")
        self._accept_thread.join()
        with self._lock:
            threads = list(self._channels.values())
            for channel in self._channels:
                # Wakes idle connections with EOF; a busy one still sends its reply,
                # then reads EOF. A peer writing from now on gets EPIPE at once.
                with contextlib.suppress(OSError):
                    channel.sock.shutdown(socket.SHUT_RD)
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        os.close(self._wake_r)
        os.close(self._wake_w)

    def _accept_loop(self) -> None:
        poll = select.poll()
        poll.register(self._listener, select.POLLIN)
        poll.register(self._wake_r, select.POLLIN)
        try:
            while True:
                if any(fd == self._wake_r for fd, _ in poll.poll()):
                    return
                try:
                    sock, _ = self._listener.accept()
                except OSError:
                    continue
                self._start_connection(sock)
        finally:
            self._listener.close()
            with contextlib.suppress(OSError):
                if os.stat(self.path).st_ino == self._inode:
                    os.unlink(self.path)

    def _start_connection(self, sock: socket.socket) -> None:
        channel = _Channel(sock)
        thread = threading.Thread(
            target=self._serve_connection, args=(channel,), name="forward-conn", daemon=True
        )
        with self._lock:
            self._channels[channel] = thread
        thread.start()

    def _serve_connection(self, channel: _Channel) -> None:
        try:
            while True:
                frame = channel.recv_frame(self._max_request_size)
                if frame is None:
                    return
                request_id, method_index, request = frame
                give_back = None
                if self._room is None or method_index not in LARGE_REPLY_METHODS:
                    status, payload = self._answer(method_index, request)
                else:
                    (status, payload), give_back = self._room.serve(
                        self._answer, method_index, request
                    )
                try:
                    channel.send_frame(request_id, status, payload)
                finally:
                    if give_back is not None:
                        give_back()
        except (OSError, ForwardError) as exc:
            _logger.debug("forwarding connection on %s ended: %s", self.path, exc)
        finally:
            with self._lock:
                del self._channels[channel]
            channel.close()

    def _answer(self, method_index: int, request: bytes) -> tuple[int, bytes]:
        try:
            status, payload = self._handler(method_index, request)
        except Exception:
            # The details go to the log only: an unexpected error's text may hold
            # anything (SQL, values of other requests), and the client needs none of it.
            name = _method_name(method_index)
            _logger.exception("forwarded %s failed", name)
            return STATUS_INTERNAL, f"{name} failed".encode()
        if len(payload) > self._max_message_size:
            details = f"reply of {len(payload)} bytes exceeds the forwarding limit"
            return STATUS_INTERNAL, details.encode()
        return status, payload


def _method_name(method_index: int) -> str:
    """The RPC's name, as the gRPC handlers say it (`rpc.py`: "<name> failed")."""
    if 0 <= method_index < len(ALL_METHODS):
        return ALL_METHODS[method_index]
    return f"method {method_index}"


def _listen_unix(path: str) -> socket.socket:
    # A socket file left by a predecessor that died would make bind fail; any other
    # kind of file at the path is not ours to remove.
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(socket.SOMAXCONN)
    except OSError:
        listener.close()
        raise
    return listener


# Failures of a new connection that prove the request was not delivered, so that it
# may be sent again: the peer is not listening (yet), or it accepted and died before
# it read (it acts only on whole frames), which makes even a write safe to resend.
_UNDELIVERED = (FileNotFoundError, ConnectionRefusedError, BrokenPipeError, ConnectionResetError)


def _undelivered_reason(exc: OSError) -> str:
    if isinstance(exc, (FileNotFoundError, ConnectionRefusedError)):
        return f"unavailable: {exc.strerror or exc}"
    return f"dropped the connection: {exc}"


class ForwardClient:
    """Calls a `ForwardServer` at `path`; thread-safe.

    Connects lazily and keeps up to `max_idle` idle connections. A connection whose
    peer has gone fails on write, before anything was delivered (a peer acts only on
    whole frames), and the call moves to a fresh connection; that is how a restarted
    peer is picked up. A call that fails after its request was sent is never retried
    here (the peer may have acted on it). While the peer is down, connecting (and
    sending on the new connection) is retried for up to `connect_timeout` seconds (a
    restarting worker is usually back within that), then `ForwardError` is raised.
    Limits as the server's: requests `max_request_size`, replies `max_message_size`.
    """

    def __init__(
        self,
        path: str,
        *,
        connect_timeout: float = 1.0,
        max_idle: int = 64,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        max_request_size: int | None = None,
    ) -> None:
        self.path = path
        self._connect_timeout = connect_timeout
        self._max_idle = max_idle
        self._max_message_size = max_message_size
        self._max_request_size = max_message_size if max_request_size is None else max_request_size
        self._idle: list[_Channel] = []
        self._lock = threading.Lock()
        self._closed = False
        self._request_ids = itertools.count(1)

    def call(
        self, method_index: int, request: bytes, timeout: float | None = None
    ) -> tuple[int, bytes]:
        """(0, reply bytes) or (gRPC status code, UTF-8 details) from the peer's handler.

        Raises ForwardError when the peer cannot be reached or breaks the protocol,
        TimeoutError when no reply arrives within `timeout` seconds.
        """
        if len(request) > self._max_request_size:
            raise ValueError(f"request of {len(request)} bytes exceeds the forwarding limit")
        deadline = None if timeout is None else time.monotonic() + timeout
        request_id = next(self._request_ids) & 0xFFFFFFFF
        channel = self._send(request_id, method_index, request, deadline)
        try:
            frame = channel.recv_frame(self._max_message_size, deadline)
            if frame is None:
                raise ForwardError(f"peer {self.path} closed the connection during a call")
            reply_id, status, payload = frame
            if reply_id != request_id:
                raise ForwardError(f"reply {reply_id} from {self.path} to request {request_id}")
        except ConnectionResetError as exc:
            channel.close()
            raise ForwardError(f"peer {self.path} dropped the connection: {exc}") from exc
        except BaseException:
            channel.close()  # its state is unknown: a late reply may still arrive
            raise
        self._check_in(channel)
        return status, payload

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for channel in idle:
            channel.close()

    def _send(
        self, request_id: int, method_index: int, request: bytes, deadline: float | None
    ) -> _Channel:
        """Sends the request on a pooled or new connection; returns the connection."""
        with self._lock:
            if self._closed:
                raise ForwardError(f"client for {self.path} is closed")
            channel = self._idle.pop() if self._idle else None
        if channel is not None:
            try:
                channel.send_frame(request_id, method_index, request, deadline)
                return channel
            except (BrokenPipeError, ConnectionResetError):
                channel.close()  # the peer went away while this connection was idle
            except BaseException:
                channel.close()
                raise
        give_up = time.monotonic() + self._connect_timeout
        if deadline is not None:
            give_up = min(give_up, deadline)
        while True:
            try:
                return self._open_and_send(request_id, method_index, request, deadline)
            except _UNDELIVERED as exc:
                remaining = give_up - time.monotonic()
                if remaining <= 0:
                    raise ForwardError(f"peer {self.path} {_undelivered_reason(exc)}") from exc
                time.sleep(min(_RECONNECT_PAUSE, remaining))

    def _open_and_send(
        self, request_id: int, method_index: int, request: bytes, deadline: float | None
    ) -> _Channel:
        """One attempt: a new connection carrying the request; closed if it fails."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            channel = _Channel(sock)
            channel.send_frame(request_id, method_index, request, deadline)
            return channel
        except BaseException:
            sock.close()
            raise

    def _check_in(self, channel: _Channel) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(channel)
                return
        channel.close()
