"""Whether a group-commit batch committed, when the reply to its COMMIT was lost.

A batch leaves a `Witness`: rows only its own commit can have produced. The
committer asks `witness_present` on a fresh connection before it runs the batch
again, so that a write that did commit is not applied twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.engine import Connection

from shardproxy.store.schema import studies, trials


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
    _wait_for_the_batch(conn, witness)
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


def _wait_for_the_batch(conn: Connection, witness: Witness) -> None:
    """Waits until the batch's own transaction has ended, committed or rolled back.

    The database may not have finished the COMMIT whose reply was lost (the server
    still writes it, or has not noticed yet that the connection died): the rows
    would then appear only after a check on another connection found them missing,
    and the batch would be applied twice. The batch held a lock until its end (the
    row of the study it added trials to, the row of a trial whose state it set),
    so taking that lock waits for it; the connection reads in autocommit, so the
    lock is let go at once.
    """
    if witness.first_created_as is not None:
        held = select(studies.c.study_id).where(
            studies.c.study_id == witness.first_created_as[0])
    elif witness.state_changes:
        held = select(trials.c.trial_id).where(
            trials.c.trial_id == next(iter(witness.state_changes)))
    else:
        return
    conn.execute(held.with_for_update())
