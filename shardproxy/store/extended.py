"""The writes `shardproxy.client` adds, inside a group commit: heartbeats and keyed calls.

A batch may carry, beside Optuna's plain trial writes, heartbeats (`heartbeats`)
and calls applied at most once (`Keyed`, see `request_keys`). `apply_extended`
takes them out, has the plain batch apply the rest, and writes what they add in
the same transaction: one upsert for all the batch's heartbeats, one INSERT for
its request keys, and, when one of its calls is a repeat, one SELECT for the
answers of the keys already committed. A batch without them costs nothing more.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from shardproxy.store import request_keys
from shardproxy.store.committer import Applied
from shardproxy.store.heartbeats import RecordHeartbeat, write_heartbeats
from shardproxy.store.operations import CreateTrial, SetStateValues
from shardproxy.store.witness import Witness


@dataclass
class Keyed:
    """A trial creation or state change that a repeat with the same key must not apply again."""

    operation: CreateTrial | SetStateValues
    key: str
    # The client sent it before and did not learn the outcome.
    repeated: bool


ApplyPlain = Callable[[Connection, list[Any]], Applied]


def is_extended(operation: object) -> bool:
    return isinstance(operation, RecordHeartbeat | Keyed)


def apply_extended(conn: Connection, operations: list[Any], apply_plain: ApplyPlain) -> Applied:
    """Each operation's result, as the committer expects from a plain batch."""
    results: list[Any] = [None] * len(operations)
    beats: list[int] = []
    keyed: dict[int, Keyed] = {}
    for index, op in enumerate(operations):
        if isinstance(op, RecordHeartbeat):
            beats.append(op.trial_id)
        elif isinstance(op, Keyed):
            keyed[index] = op
    repeats = {op.key for op in keyed.values() if op.repeated}
    settled = request_keys.answers(conn, repeats) if repeats else {}
    plain: list[tuple[int, Any]] = []
    for index, op in enumerate(operations):
        if isinstance(op, RecordHeartbeat):
            continue
        if isinstance(op, Keyed):
            if op.key in settled:  # it committed before: answered as it was then
                results[index] = _answer(op, settled[op.key])
                continue
            op = op.operation
        plain.append((index, op))
    if plain:
        applied = apply_plain(conn, [op for _, op in plain])
        for (index, _), result in zip(plain, applied.results, strict=True):
            results[index] = result
    else:
        applied = Applied([], Witness([], {}), lambda: None)
    rows = []
    for index, op in keyed.items():
        result = results[index]
        if op.key in settled or isinstance(result, BaseException):
            continue  # a call that failed wrote nothing: its repeat runs it again
        if isinstance(op.operation, CreateTrial):
            rows.append((op.key, int(result), int(result)))
        else:
            rows.append((op.key, op.operation.trial_id, int(bool(result))))
    if rows:
        request_keys.record(conn, rows)
    if beats:
        write_heartbeats(conn, beats)
    return Applied(results, applied.witness, applied.on_commit)


def _answer(op: Keyed, outcome: int) -> Any:
    return outcome if isinstance(op.operation, CreateTrial) else bool(outcome)
