"""Whether a group-commit batch committed, when the reply to its COMMIT was lost.

A batch leaves a `Witness`: rows only its own commit can have produced. The
committer asks `witness_present` on a fresh connection before it runs the batch
again, so that a write that did commit is not applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from shardproxy.store.schema import trials


@dataclass
class Witness:
    """Rows only this batch's commit can have produced (see `witness_present`)."""

    created_ids: list[int]
    # trial id -> state name this batch set (the state differs from the one it found)
    state_changes: dict[int, str]

    def is_empty(self) -> bool:
        return not self.created_ids and not self.state_changes


def witness_present(conn: Connection, witness: Witness) -> bool:
    """Whether the rows only a batch's commit can have produced are in the database.

    A new trial id is never handed out twice, so one created trial settles it. A
    state the batch set is the next best sign: the batch held the trial's lock
    and found it in another state.
    """
    if witness.created_ids:
        query = select(trials.c.trial_id).where(trials.c.trial_id == witness.created_ids[0])
        return conn.execute(query).first() is not None
    trial_id, state = next(iter(witness.state_changes.items()))
    query = select(trials.c.state).where(trials.c.trial_id == trial_id)
    return conn.execute(query).scalar() == state
