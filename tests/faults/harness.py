"""What the fault tests share: running servers, raw calls, and a checksum of the tables.

The server itself is tests/servers.py's `serve` (`python -m shardproxy serve`
in a subprocess, returned once every worker answers); this module adds what a
fault test asks of it from outside: which worker processes it has, calls with
arbitrary request bytes over channels of their own, and a content hash of every
table of the database, to prove that a refused request changed nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import subprocess
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import NamedTuple

import grpc
import sqlalchemy
from sqlalchemy.engine import Engine

from shardproxy.wire import method_path
from tests.servers import children_by_name, serve, wait_until

__all__ = [
    "Outcome",
    "TableChecksum",
    "call_all",
    "changed_tables",
    "raw_channels",
    "serve",
    "wait_until",
    "worker_pids",
]


def worker_pids(process: subprocess.Popen) -> dict[str, int]:
    """The running server's worker processes: name (`shardproxy-wN`) -> pid."""
    return children_by_name(process.pid)


@contextlib.contextmanager
def raw_channels(port: int, count: int) -> Iterator[list[grpc.Channel]]:
    """`count` channels to the server, each on a connection of its own.

    gRPC shares one connection among a process's channels to the same address; a
    local subchannel pool gives each its own, so the kernel spreads them over the
    workers. Messages of any size go both ways.
    """
    options = [
        ("grpc.use_local_subchannel_pool", 1),
        ("grpc.max_send_message_length", -1),
        ("grpc.max_receive_message_length", -1),
    ]
    channels = [grpc.insecure_channel(f"127.0.0.1:{port}", options=options)
                for _ in range(count)]
    try:
        for channel in channels:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield channels
    finally:
        for channel in channels:
            channel.close()


class Outcome(NamedTuple):
    code: grpc.StatusCode
    details: str
    reply: bytes


def call_all(
    channels: Sequence[grpc.Channel], requests: Sequence[tuple[str, bytes]], timeout: float = 120
) -> list[Outcome]:
    """Sends every (method, request bytes) at once, spread over `channels`; their outcomes.

    The bytes go out as they are (no serializer), so a request may be anything.
    """
    futures: list[Future] = []
    for index, (method, request) in enumerate(requests):
        call = channels[index % len(channels)].unary_unary(method_path(method))
        futures.append(call.future(request, timeout=timeout))
    outcomes = []
    for future in futures:
        try:
            reply = future.result()
        except grpc.RpcError as exc:
            outcomes.append(Outcome(exc.code(), exc.details() or "", b""))
        else:
            outcomes.append(Outcome(grpc.StatusCode.OK, "", reply))
    return outcomes


class TableChecksum:
    """A content hash of every table in a database, rows read in primary-key order.

    Every table the database holds is read (Optuna's and alembic's), so any write
    at all shows. Text and floats are hashed through their repr, so NaN, -0.0 and
    a trailing space all count.
    """

    def __init__(self, url: str) -> None:
        self._engine: Engine = sqlalchemy.create_engine(url, pool_size=1, pool_pre_ping=True)
        metadata = sqlalchemy.MetaData()
        metadata.reflect(self._engine)
        assert "trials" in metadata.tables, "the server has not created Optuna's schema"
        self._queries = {
            name: sqlalchemy.select(table).order_by(*table.primary_key.columns)
            for name, table in sorted(metadata.tables.items())
        }
        assert all(table.primary_key.columns for table in metadata.tables.values())

    def __call__(self) -> dict[str, tuple[int, str]]:
        """Table name -> (row count, hash of its rows)."""
        # A read, safe to repeat: a connection lost to a server restart is retried.
        deadline = time.monotonic() + 120
        while True:
            try:
                return self._sums()
            except sqlalchemy.exc.DBAPIError as exc:
                if not exc.connection_invalidated or time.monotonic() > deadline:
                    raise
                time.sleep(1.0)

    def _sums(self) -> dict[str, tuple[int, str]]:
        sums = {}
        with self._engine.connect() as conn:
            for name, query in self._queries.items():
                digest = hashlib.sha256()
                count = 0
                for row in conn.execute(query):
                    digest.update(repr(tuple(row)).encode())
                    digest.update(b"\n")
                    count += 1
                sums[name] = (count, digest.hexdigest())
        return sums

    def close(self) -> None:
        self._engine.dispose()


def changed_tables(
    before: dict[str, tuple[int, str]], after: dict[str, tuple[int, str]]
) -> dict[str, tuple[int, int]]:
    """The tables whose content differs: name -> (rows before, rows after)."""
    return {name: (before[name][0], after[name][0])
            for name in before if before[name] != after.get(name)}
