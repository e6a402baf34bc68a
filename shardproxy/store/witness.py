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
    # (study_id, number) the batch gave its first created trial, where known
    first_created_as: tuple[int, int] | None = None

    def is_empty(self) -> bool:
        return not self.created_ids and not self.state_changes


def witness_present(conn: Connection, witness: Witness) -> bool:
    """Whether the rows only a batch's commit can have produced are in the database.

    A new trial id is never handed out twice by one server, so one created trial
    settles it; it must also be in the study with the number the batch gave it.
    On a Galera cluster each node hands out ids of its own (auto_increment_offset)
    only while the membership stays the same: after a node leaves, another may
    hand out an id that a transaction which failed certification had taken, to
    another trial. A state the batch set is the next best sign: the batch held
    the trial's lock and found it in another state.

    On Galera the connection reads causally (`cluster`), so a COMMIT that another
    node applied before the check is seen, whichever node answers.
    """
    if witness.created_ids:
        query = select(trials.c.study_id, trials.c.number).where(
            trials.c.trial_id == witness.created_ids[0])
        found = conn.execute(query).first()
        if found is None:
            return False
        return witness.first_created_as is None or tuple(found) == witness.first_created_as
    trial_id, state = next(iter(witness.state_changes.items()))
    query = select(trials.c.state).where(trials.c.trial_id == trial_id)
    return conn.execute(query).scalar() == state
