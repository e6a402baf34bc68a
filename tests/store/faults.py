"""Real faults for the retry tests: killed connections and a lost reply."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections.abc import Iterator

import sqlalchemy
from sqlalchemy.engine import make_url


def kill_store_connections(admin_url: str, database: str) -> int:
    """Kills every connection to `database` but this one; returns how many."""
    engine = sqlalchemy.create_engine(
        admin_url, isolation_level="AUTOCOMMIT", poolclass=sqlalchemy.pool.NullPool
    )
    try:
        with engine.connect() as conn:
            if engine.dialect.name == "postgresql":
                return len(conn.execute(sqlalchemy.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :db AND pid <> pg_backend_pid()"
                ), {"db": database}).all())
            ids = conn.execute(sqlalchemy.text(
                "SELECT id FROM information_schema.processlist "
                "WHERE db = :db AND id <> CONNECTION_ID()"
            ), {"db": database}).scalars().all()
            for connection_id in ids:
                with contextlib.suppress(sqlalchemy.exc.DBAPIError):  # already gone
                    conn.execute(sqlalchemy.text(f"KILL CONNECTION {int(connection_id)}"))
            return len(ids)
    finally:
        engine.dispose()


class ReplyDropper:
    """A TCP relay in front of a database server that can lose one statement's reply.

    Armed, it forwards the next client packet that carries the marker (`COMMIT`, say)
    to the server, waits for the server's answer (so the statement was applied), and
    then closes both sides instead of relaying it: the client sees its connection
    die, not knowing the outcome. For `refuse_for` seconds after that, it closes
    every new connection at once, as a database that has gone away.

    Armed with `late`, it closes the client's side as soon as the marked packet
    arrives and hands the packet to the server only `late` seconds later: the
    statement reaches the server after the client gave up on it, as a packet held
    up in the network would, and meanwhile its transaction holds its locks.
    """

    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._marker = b"COMMIT"
        self._late = 0.0
        self._refuse_for = 0.0
        self._refusing_until = 0.0
        self.refused = 0
        self._armed = threading.Event()
        self.dropped = 0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def arm(self, marker: bytes = b"COMMIT", refuse_for: float = 0.0, late: float = 0.0) -> None:
        self._marker = marker
        self._refuse_for = refuse_for
        self._late = late
        self._armed.set()

    def close(self) -> None:
        self._stopping.set()
        self._listener.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if time.monotonic() < self._refusing_until:
                self.refused += 1
                client.close()
                continue
            server = socket.create_connection(self._target)
            threading.Thread(target=self._relay, args=(client, server), daemon=True).start()

    def _relay(self, client: socket.socket, server: socket.socket) -> None:
        with client, server:
            while not self._stopping.is_set():
                readable, _, _ = select.select([client, server], [], [], 0.2)
                for source in readable:
                    data = source.recv(65536)
                    if not data:
                        return
                    target = server if source is client else client
                    if source is client and self._marker in data and self._armed.is_set():
                        self._armed.clear()
                        if self._late:
                            client.close()  # the client gives up; the server waits
                            time.sleep(self._late)
                        server.sendall(data)
                        server.recv(65536)  # the server's answer: applied
                        self._refusing_until = time.monotonic() + self._refuse_for
                        self.dropped += 1
                        return
                    target.sendall(data)


@contextlib.contextmanager
def reply_dropper(url: str) -> Iterator[tuple[ReplyDropper, str]]:
    """A dropper in front of the server of `url`, and the URL that goes through it."""
    parsed = make_url(url)
    dropper = ReplyDropper(parsed.host or "127.0.0.1", parsed.port or 0)
    try:
        relayed = parsed.set(host="127.0.0.1", port=dropper.port)
        yield dropper, relayed.render_as_string(hide_password=False)
    finally:
        dropper.close()
