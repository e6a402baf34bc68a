"""The reference servers shardproxy is measured against, each run as its own process.

    python -m bench.references stock --storage URL --port P
        Optuna's own proxy: run_grpc_proxy_server(get_storage(URL)).
    python -m bench.references echo --port P [--workers N] [--threads K]
        The echo floor: the generic-handler, raw-bytes gRPC stack shardproxy serves
        on, answering every RPC with a canned, valid reply and doing no other work.
        N processes share the port through SO_REUSEPORT, as shardproxy's workers do.

The third reference, direct RDBStorage workers, needs no server.
"""

from __future__ import annotations

import argparse
import itertools
import multiprocessing
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc

from bench.loadgen.wire import varint
from shardproxy.wire import (
    ID_REPLY_ID_TAG,
    ID_REQUEST_ID_TAG,
    SERVICE,
    TRIAL_DATETIME_START_TAG,
    TRIAL_ID_TAG,
    TRIAL_NUMBER_TAG,
    TRIAL_REPLY_TRIAL_TAG,
)
from shardproxy.worker import QUEUE_EVERY_CALL

DEFAULT_ECHO_THREADS = 64  # shardproxy's default gRPC handler threads per worker
# A started trial as the echo floor describes it: RUNNING, with a start time.
_CANNED_DATETIME = "2025-01-01 00:00:00.000000"
# The tags the echo handlers write, as bytes.
_ID_REPLY_ID = bytes((ID_REPLY_ID_TAG,))
_TRIAL_ID = bytes((TRIAL_ID_TAG,))
_TRIAL_NUMBER = bytes((TRIAL_NUMBER_TAG,))
_TRIAL_REPLY_TRIAL = bytes((TRIAL_REPLY_TRIAL_TAG,))


def run_stock(storage_url: str, host: str, port: int) -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # It is the reference, experimental or not: a run keeps only what it logs of note.
    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
    storage = optuna.storages.get_storage(storage_url)
    optuna.storages.run_grpc_proxy_server(storage, host=host, port=port)


# -- echo floor ------------------------------------------------------------------


def _first_varint(request: bytes) -> int:
    """Field 1 of a request whose only field is an int64 (GetTrialRequest)."""
    if not request or request[0] != ID_REQUEST_ID_TAG:
        return 0
    value = shift = 0
    for byte in request[1:]:
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            break
        shift += 7
    return value


def canned_replies() -> dict[str, bytes]:
    """Valid reply bytes for every method, built once with Optuna's message classes."""
    from optuna.storages._grpc.auto_generated import api_pb2

    study = api_pb2.Study(study_id=1, study_name="echo", directions=[api_pb2.MINIMIZE])
    canned: dict[str, Any] = {
        "CreateNewStudy": api_pb2.CreateNewStudyReply(study_id=1),
        "GetStudyIdFromName": api_pb2.GetStudyIdFromNameReply(study_id=1),
        "GetStudyNameFromId": api_pb2.GetStudyNameFromIdReply(study_name="echo"),
        "GetStudyDirections": api_pb2.GetStudyDirectionsReply(directions=[api_pb2.MINIMIZE]),
        "GetAllStudies": api_pb2.GetAllStudiesReply(studies=[study]),
        "GetTrialIdFromStudyIdTrialNumber": api_pb2.GetTrialIdFromStudyIdTrialNumberReply(
            trial_id=1
        ),
        "SetTrialStateValues": api_pb2.SetTrialStateValuesReply(trial_updated=True),
    }
    service = api_pb2.DESCRIPTOR.services_by_name["StorageService"]
    return {
        method.name: canned[method.name].SerializeToString() if method.name in canned else b""
        for method in service.methods
    }


class EchoHandlers:
    """Per-method raw-bytes handlers; the only per-call work is an id or two."""

    def __init__(self) -> None:
        self._replies = canned_replies()
        self._trial_ids = itertools.count(1)
        self._trial_tail = (
            bytes((TRIAL_DATETIME_START_TAG,))
            + varint(len(_CANNED_DATETIME))
            + _CANNED_DATETIME.encode()
        )

    def create_new_trial(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return _ID_REPLY_ID + varint(next(self._trial_ids))

    def get_trial(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        trial_id = varint(_first_varint(request))
        trial = _TRIAL_ID + trial_id + _TRIAL_NUMBER + trial_id + self._trial_tail
        return _TRIAL_REPLY_TRIAL + varint(len(trial)) + trial

    def canned(self, name: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        reply = self._replies[name]
        return lambda request, context: reply

    def table(self) -> dict[str, grpc.RpcMethodHandler]:
        special = {"CreateNewTrial": self.create_new_trial, "GetTrial": self.get_trial}
        return {
            name: grpc.unary_unary_rpc_method_handler(special.get(name) or self.canned(name))
            for name in self._replies
        }


def make_echo_server(host: str, port: int, threads: int) -> grpc.Server:
    """shardproxy's stack: sync server, thread pool, SO_REUSEPORT, generic raw handlers,
    and every call queued rather than dropped (`shardproxy.worker.QUEUE_EVERY_CALL`)."""
    server = grpc.server(
        ThreadPoolExecutor(max_workers=threads),
        handlers=[grpc.method_handlers_generic_handler(SERVICE, EchoHandlers().table())],
        options=[
            ("grpc.so_reuseport", 1),
            ("grpc.max_receive_message_length", -1),
            ("grpc.max_send_message_length", -1),
            *QUEUE_EVERY_CALL,
        ],
    )
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return server


def _serve_echo(host: str, port: int, threads: int, parent: int) -> None:
    server = make_echo_server(host, port, threads)
    server.start()
    # Ends with its parent, whatever way the parent ends.
    while os.getppid() == parent:
        timed_out = server.wait_for_termination(timeout=1.0)
        if not timed_out:
            return
    server.stop(grace=None)


def run_echo(host: str, port: int, workers: int, threads: int) -> None:
    stopping = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stopping.set())
    context = multiprocessing.get_context("spawn")
    children = [
        context.Process(target=_serve_echo, args=(host, port, threads, os.getpid()))
        for _ in range(workers)
    ]
    for child in children:
        child.start()
    while not stopping.is_set() and all(child.is_alive() for child in children):
        time.sleep(0.2)
    for child in children:
        child.terminate()
    for child in children:
        child.join(timeout=10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.references", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stock = commands.add_parser("stock", help="Optuna's run_grpc_proxy_server")
    stock.add_argument("--storage", required=True, help="database URL")
    echo = commands.add_parser("echo", help="the canned-reply echo floor")
    echo.add_argument("--workers", type=int, default=1, help="processes sharing the port")
    echo.add_argument("--threads", type=int, default=DEFAULT_ECHO_THREADS,
                      help="gRPC handler threads per process")
    for command in (stock, echo):
        command.add_argument("--host", default="127.0.0.1")
        command.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    if args.command == "stock":
        run_stock(args.storage, args.host, args.port)
    else:
        run_echo(args.host, args.port, args.workers, args.threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
