"""A TCP relay between the proxy and its database that can cut every connection at once.

The proxy is given the relay's address instead of the database's; each connection
it opens is relayed to the real server by two pump threads. `cut_all` resets every
connection that is open at that moment, in whatever state it is (a query sent, a
COMMIT whose reply is on its way): both sides see the connection die, as they
would when a firewall, a load balancer or a network failure drops it.
"""

from __future__ import annotations

import contextlib
import functools
import random
import socket
import struct
import threading
import time
from collections.abc import Iterator

import sqlalchemy


class Relay:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._closed = False
        self.cuts = 0  # connections cut
        self._acceptor = threading.Thread(target=self._accept, daemon=True, name="relay")
        self._acceptor.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pairs.append((client, server))
            ended = threading.Barrier(2, action=functools.partial(self._close, client, server))
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, sink, ended),
                                 daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket,
              ended: threading.Barrier) -> None:
        """Copies one direction; the second of a pair's pumps to end closes both sockets."""
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        with contextlib.suppress(OSError):
            sink.shutdown(socket.SHUT_WR)
        with contextlib.suppress(threading.BrokenBarrierError):
            ended.wait(timeout=600)

    def _close(self, a: socket.socket, b: socket.socket) -> None:
        with self._lock:
            self._pairs = [p for p in self._pairs if a not in p]
        a.close()
        b.close()

    def open_connections(self) -> int:
        with self._lock:
            return len(self._pairs)

    def cut_all(self) -> int:
        """Resets every open connection (RST both ways); how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for pair in pairs:
            for sock in pair:
                with contextlib.suppress(OSError):
                    # Linger 0: the close that follows sends RST, not FIN; the
                    # shutdown wakes the pumps, which close the sockets.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    sock.shutdown(socket.SHUT_RDWR)
        self.cuts += len(pairs)
        return len(pairs)

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        self.cut_all()


def relayed_url(url: str, relay: Relay) -> str:
    """`url` with the relay's address in place of the database server's."""
    return sqlalchemy.engine.make_url(url).set(host="127.0.0.1", port=relay.port) \
        .render_as_string(hide_password=False)


@contextlib.contextmanager
def relay_for(url: str) -> Iterator[Relay]:
    """A relay to the server of database `url`; closed (every connection cut) after."""
    target = sqlalchemy.engine.make_url(url)
    default_port = 5432 if target.get_backend_name() == "postgresql" else 3306
    relay = Relay(target.host or "127.0.0.1", target.port or default_port)
    try:
        yield relay
    finally:
        relay.close()


@contextlib.contextmanager
def cutting(relay: Relay, seed: int, min_gap: float = 0.1, max_gap: float = 1.0
            ) -> Iterator[list[float]]:
    """Cuts every connection at random moments (gaps uniform in [min_gap, max_gap]) while
    the block runs; yields the list of moments (monotonic) it cut at least one."""
    moments: list[float] = []
    done = threading.Event()
    chance = random.Random(seed)

    def cut() -> None:
        while not done.wait(chance.uniform(min_gap, max_gap)):
            if relay.cut_all():
                moments.append(time.monotonic())

    cutter = threading.Thread(target=cut, daemon=True, name="cutter")
    cutter.start()
    try:
        yield moments
    finally:
        done.set()
        cutter.join()
