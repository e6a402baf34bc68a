"""A worker's gRPC handlers, for Optuna's service and shardproxy's own: raw bytes in and out.

No generated message classes: each method's handler hands the request bytes to the
front and answers its reply, or the status of the error it raised.

A GetTrials reply may be large: where the worker has a `ReplyRoom`, it is served
within one (`reply_room`), and the room its reply took is given back once gRPC has
sent it.

Observers see each RPC once it is answered: its method, request, status code and
duration. With none (the default) a handler does not even read the clock. At
DEBUG the access log is one (logger `shardproxy.access`): one line per RPC with
the method, the study, the status code, the duration, and whether it was served
here or forwarded to the study's owner. Which observers run is decided once, when
the handlers are built, never per call.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence

import grpc

from shardproxy.errors import StatusError
from shardproxy.extension_wire import ALL_METHODS, EXTENSION_INDEX
from shardproxy.front import Front
from shardproxy.metrics import Metrics
from shardproxy.reply_room import LARGE_REPLY_METHODS, ReplyRoom
from shardproxy.wire import METHODS

_logger = logging.getLogger(__name__)
access_logger = logging.getLogger("shardproxy.access")

RawHandler = Callable[[bytes, grpc.ServicerContext], bytes]
# (method index, request bytes, status code, seconds it took)
Observer = Callable[[int, bytes, grpc.StatusCode, float], None]


def method_handlers(
    front: Front, metrics: Metrics, room: ReplyRoom | None = None
) -> dict[str, grpc.RpcMethodHandler]:
    """One unary handler per method name of Optuna's service, for a generic handler."""
    return _handlers(front, metrics, range(len(METHODS)), room)


def extension_handlers(front: Front, metrics: Metrics) -> dict[str, grpc.RpcMethodHandler]:
    """The handlers of shardproxy's own service (`extension_wire`), by method name:
    none of its replies is large."""
    return _handlers(front, metrics, EXTENSION_INDEX.values(), None)


def _handlers(
    front: Front, metrics: Metrics, indices: Iterable[int], room: ReplyRoom | None
) -> dict[str, grpc.RpcMethodHandler]:
    """The handlers of these methods (indices into ALL_METHODS), counted and timed
    where the metrics are exported, and logged where the access log is on."""
    observers: list[Observer] = []
    if metrics.exported:
        observers.append(metrics.observe)
    if access_logger.isEnabledFor(logging.DEBUG):
        observers.append(AccessLog(front).observe)
    handlers = {}
    for index in indices:
        if room is not None and index in LARGE_REPLY_METHODS:
            rpc = _rpc_in_room(front, index, metrics, room)
        else:
            rpc = _rpc(front, index, metrics)
        if observers:
            rpc = _observed(rpc, index, observers)
        handlers[ALL_METHODS[index]] = grpc.unary_unary_rpc_method_handler(rpc)
    return handlers


def _rpc(front: Front, method_index: int, metrics: Metrics) -> RawHandler:
    handle = front.handle
    name = ALL_METHODS[method_index]
    counter = f"received.{name}"

    def rpc(request: bytes, context: grpc.ServicerContext) -> bytes:
        metrics.add(counter)
        try:
            return handle(method_index, request)
        except StatusError as exc:
            context.abort(exc.code, exc.details)
        except Exception:
            _logger.exception("%s failed", name)
            context.abort(grpc.StatusCode.INTERNAL, f"{name} failed")
        raise AssertionError("unreachable")  # context.abort always raises

    return rpc


def _rpc_in_room(front: Front, method_index: int, metrics: Metrics, room: ReplyRoom) -> RawHandler:
    """`_rpc` served within `room`: the room its reply took is given back once sent."""
    rpc = _rpc(front, method_index, metrics)

    def rpc_in_room(request: bytes, context: grpc.ServicerContext) -> bytes:
        reply, give_back = room.serve(rpc, request, context)
        # Called once the RPC has ended, its reply sent; False if it ended already.
        if give_back is not None and not context.add_callback(give_back):
            give_back()
        return reply

    return rpc_in_room


def _observed(rpc: RawHandler, method_index: int, observers: Sequence[Observer]) -> RawHandler:
    """`rpc`, then each observer with the status it ended with and its duration."""

    def observed(request: bytes, context: grpc.ServicerContext) -> bytes:
        started = time.perf_counter()
        code = grpc.StatusCode.OK
        try:
            return rpc(request, context)
        except Exception:
            # context.abort raised, having set the status.
            code = context.code() or grpc.StatusCode.UNKNOWN  # type: ignore[attr-defined]
            raise
        finally:
            seconds = time.perf_counter() - started
            for observe in observers:
                observe(method_index, request, code, seconds)

    return observed


class AccessLog:
    """Writes one DEBUG line per RPC a client sent to this worker's front."""

    def __init__(self, front: Front) -> None:
        self._front = front

    def observe(
        self, method_index: int, request: bytes, code: grpc.StatusCode, seconds: float
    ) -> None:
        try:
            study, owner = self._front.whereabouts(method_index, request)
        except Exception:  # a malformed request: it was answered INVALID_ARGUMENT
            study, owner = None, None
        method = ALL_METHODS[method_index]
        duration_ms = seconds * 1000.0
        access_logger.debug(
            "%s study %s: %s in %.2f ms, %s",
            method,
            "-" if study is None else study,
            code.name,
            duration_ms,
            "served here" if owner is None else f"forwarded to worker {owner}",
            extra={
                "method": method,
                "study": study,
                "code": code.name,
                "duration_ms": round(duration_ms, 3),
                "route": "here" if owner is None else "forwarded",
                "owner": owner,
            },
        )
