"""Numbers for new trials, under the study lock, reading only the trials added since last time.

A trial's number is the count of its study's earlier trials, as RDBStorage
assigns it: under the lock of the study's row, which every writer of trials
(RDBStorage, this store, other proxies) takes, so that within a study trial ids
and numbers grow together in commit order.

Counting every trial of the study for each batch would cost O(study size). The
store remembers instead, per study, the number and id of the last trial it
created there (`Counted`), learned from its own committed INSERT. Under the lock,
the count is then that number + 1 plus the trials of the study with a greater id
(the ones other writers added since), which is O(delta) (see `newer`). That is
exactly the full count as long as the remembered trial is still there with its
number, which the same statement checks by its primary key: a study deleted (and
its id handed out again) or rewritten by hand makes the check fail, the count is
NULL, and the batch raises `StaleCount` and is run again with full counts.

On a Galera cluster the study lock holds on one node only; the numbering
transaction there also writes a row of each study that certification compares
across nodes (`cluster`), so that the lock's guarantees hold cluster-wide.

The remembered values are taken out of `TrialCounts` for the length of a batch
and given back only once it committed, so a batch that rolls back leaves its
studies to be counted in full next time. A study read whole (the cache's first
load) gives its count too, so that even its first batch reads only the delta: a
trial of the study committed with a smaller id than the last one read would have
held the study's lock before that one was written, and so was committed (and
read) before it.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    DateTime,
    Integer,
    and_,
    bindparam,
    case,
    exists,
    func,
    insert,
    literal_column,
    null,
    or_,
    select,
    union_all,
    update,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import ColumnElement

from shardproxy.rows import RUNNING, STATE_NAMES, TrialRow
from shardproxy.store import cluster
from shardproxy.store.newer import trial_ids_of_study
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import studies, trials
from shardproxy.store.shapes import statement_size

# Bounds on the statements built per shape (each is compiled and kept): larger
# batches take the plain way, whose extra statement they share.
NUMBERED_INSERT_MAX_ROWS = 64


@dataclass(frozen=True)
class Counted:
    """A study as the store last numbered it: its trial numbered `trials - 1` has
    id `last_id`, so the study had `trials` trials then."""

    trials: int
    last_id: int


class StaleCount(Exception):
    """A remembered count no longer matches the study: count it again in full."""


class Numbered:
    """What `TrialCounts.learn` needs of a study's trials, seen one at a time by id."""

    __slots__ = ("count", "in_order", "newest_id")

    def __init__(self) -> None:
        self.count = 0
        self.in_order = True  # numbered 0, 1, 2, ... so far
        self.newest_id = 0

    def see(self, row: TrialRow) -> None:
        self.in_order = self.in_order and row.number == self.count
        self.count += 1
        self.newest_id = row.trial_id


class TrialCounts:
    """The `Counted` of each study this store created trials in; thread-safe."""

    def __init__(self) -> None:
        self._counted: dict[int, Counted] = {}
        self._lock = threading.Lock()

    def take(self, study_ids: Iterable[int]) -> dict[int, Counted]:
        """Removes and returns what is known of these studies, for one batch."""
        with self._lock:
            return {s: c for s in study_ids if (c := self._counted.pop(s, None)) is not None}

    def remember(self, counted: Mapping[int, Counted]) -> None:
        with self._lock:
            self._counted.update(counted)

    def learn(self, study_id: int, numbered: Numbered) -> None:
        """From every trial of the study as one snapshot saw them, by id: their count,
        if nothing is known of the study yet and their numbers were 0, 1, 2, ... (so
        the count is exactly what COUNT(*) would have said then)."""
        if not numbered.count or not numbered.in_order:
            return
        with self._lock:
            self._counted.setdefault(study_id, Counted(numbered.count, numbered.newest_id))

    def forget(self, study_id: int) -> None:
        with self._lock:
            self._counted.pop(study_id, None)


def lock_studies(conn: Connection, study_ids: list[int], certify: bool = False) -> set[int]:
    """Locks the studies' rows, as RDBStorage does; the ids of those that exist.

    The lock makes "number = trials so far" safe: every trial of these studies
    committed before it was granted, and none can be added until this commits.
    Whatever counts the trials must therefore start after the lock is granted
    (a statement of its own: a subquery of the locking SELECT may read a
    snapshot taken before it waited).

    `certify` (Galera, where the lock holds on one node only): also make the
    write that certification orders across nodes (`cluster.certify_numbering`),
    so that of two nodes numbering a study at once, one is aborted and retried.
    """
    existing = set(_LOCK_STUDIES.execute(conn, {"ids": study_ids}).scalars())
    if certify:
        cluster.certify_numbering(conn, sorted(existing))
    return existing


def trials_so_far(
    conn: Connection, study_ids: Iterable[int], counted: Mapping[int, Counted]
) -> dict[int, int]:
    """Each study's trial count, in one statement; StaleCount if a remembered one is off."""
    ordered = sorted(study_ids)
    if not ordered:
        return {}
    shape = statement_size(len(ordered))
    statement = _trials_so_far(shape, conn.dialect.name)
    rows = statement.execute(conn, _count_params(ordered, counted, shape)).all()
    found = {int(study_id): count for study_id, count in rows if study_id is not None}
    if any(count is None for count in found.values()):
        raise StaleCount("a study's remembered trial count no longer holds")
    return {study_id: int(count) for study_id, count in found.items()}


def insert_numbered(
    conn: Connection, places: list[tuple[int, int]], counted: Mapping[int, Counted], now: Any
) -> dict[tuple[int, int], int]:
    """Inserts RUNNING trials, (study_id, place) each, numbered by the INSERT itself.

    Returns the new ids by (study_id, number); StaleCount if a remembered count is off.
    """
    ordered = sorted({study_id for study_id, _ in places})
    studies_shape, rows_shape = statement_size(len(ordered)), statement_size(len(places))
    params = _count_params(ordered, counted, studies_shape)
    params["now"] = now
    for i in range(rows_shape):
        # Rows past the batch's have no study: they join no count, and insert nothing.
        study_id, place = places[i] if i < len(places) else (None, 0)
        params[f"study_{i}"] = study_id
        params[f"place_{i}"] = place
    statement = _numbered_insert(rows_shape, studies_shape, conn.dialect.name)
    created = statement.execute(conn, params).all()
    if any(number is None for _, _, number in created):
        raise StaleCount("a study's remembered trial count no longer holds")
    return ids_in_number_order(conn, created)


def insert_trials(
    conn: Connection, rows: list[dict[str, Any]], counted: Mapping[int, Counted]
) -> dict[tuple[int, int], int]:
    """Inserts numbered trial rows; the new ids by (study_id, number)."""
    if conn.dialect.insert_returning:
        return ids_in_number_order(conn, conn.execute(_INSERT_TRIALS_RETURNING, rows).all())
    # MySQL proper: find them by number, under the study locks, after the last
    # trial known of the study (all new ones are newer: O(delta) in its index).
    conn.execute(insert(trials), rows)
    first: dict[int, int] = {}
    for row in rows:
        first.setdefault(row["study_id"], row["number"])
    found = select(trials.c.trial_id, trials.c.study_id, trials.c.number).where(or_(*(
        and_(trials.c.study_id == study_id, trials.c.number >= number,
             trials.c.trial_id > (counted[study_id].last_id if study_id in counted else 0))
        for study_id, number in first.items()
    )))
    return ids_in_number_order(conn, conn.execute(found).all())


def ids_in_number_order(
    conn: Connection, created: Sequence[Sequence[Any]]
) -> dict[tuple[int, int], int]:
    """The new ids by (study_id, number), from (trial_id, study_id, number) rows.

    Renumbers, should the database have handed out ids out of row order.

    Within a study trial id order must equal number order (readers rely on it);
    every backend assigns the ids of one multi-row INSERT in row order, so this
    finds nothing to do unless that ever changes.
    """
    ids = {(study_id, number): trial_id for trial_id, study_id, number in created}
    by_study: dict[int, list[tuple[int, int]]] = {}
    for (study_id, number), trial_id in ids.items():
        by_study.setdefault(study_id, []).append((number, trial_id))
    for study_id, pairs in by_study.items():
        numbers = sorted(number for number, _ in pairs)
        in_id_order = sorted(trial_id for _, trial_id in pairs)
        if [t for _, t in sorted(pairs)] == in_id_order:
            continue
        for number, trial_id in zip(numbers, in_id_order, strict=True):
            conn.execute(
                update(trials).where(trials.c.trial_id == trial_id).values(number=number)
            )
            ids[(study_id, number)] = trial_id
    return ids


def counted_after(new_ids: Mapping[tuple[int, int], int]) -> dict[int, Counted]:
    """What to remember of each study once the trials `new_ids` committed."""
    last: dict[int, tuple[int, int]] = {}
    for (study_id, number), trial_id in new_ids.items():
        if number >= last.get(study_id, (-1, 0))[0]:
            last[study_id] = (number, trial_id)
    return {study_id: Counted(number + 1, trial_id)
            for study_id, (number, trial_id) in last.items()}


# -- statements ------------------------------------------------------------------------


def _count_params(
    study_ids: list[int], counted: Mapping[int, Counted], shape: int
) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for j in range(shape):
        # Past the studies: NULL, which counts nothing and matches no row.
        study_id = study_ids[j] if j < len(study_ids) else None
        known = counted.get(study_id) if study_id is not None else None
        params[f"sid_{j}"] = study_id
        # last_id 0 (no trial has it): not known, count the study in full.
        params[f"count_{j}"] = known.trials if known is not None else 0
        params[f"last_{j}"] = known.last_id if known is not None else 0
    return params


def _trials_before(j: int, dialect: str) -> ColumnElement[Any]:
    """The trial count of study `sid_j`: in full where nothing is known of it, else
    the remembered count plus the newer trials, NULL when the remembered trial is
    not there with its number."""
    study_id = bindparam(f"sid_{j}", type_=Integer)
    count = bindparam(f"count_{j}", type_=Integer)
    last_id = bindparam(f"last_{j}", type_=Integer)
    in_full = select(func.count(trials.c.trial_id)).where(trials.c.study_id == study_id)
    still_there = exists().where(
        trials.c.trial_id == last_id, trials.c.study_id == study_id,
        trials.c.number == count - 1,
    )
    newer = trial_ids_of_study(study_id, last_id, dialect, size=count).subquery("newer")
    added_since = select(func.count()).select_from(newer)
    return case(
        (last_id == 0, in_full.scalar_subquery()),
        (still_there, count + added_since.scalar_subquery()),
        else_=null(),
    )


def _counted(studies_count: int, dialect: str) -> Any:
    """(study_id, trials_so_far) of each study `sid_j`, as one SELECT per study."""
    return union_all(*(
        select(bindparam(f"sid_{j}", type_=Integer).label("study_id"),
               _trials_before(j, dialect).label("trials_so_far"))
        for j in range(studies_count)
    ))


@functools.cache  # one shape per number of studies and backend
def _trials_so_far(studies_count: int, dialect: str) -> Prepared:
    return Prepared(_counted(studies_count, dialect))


@functools.cache  # rows and studies each a power of two up to NUMBERED_INSERT_MAX_ROWS
def _numbered_insert(rows: int, studies_count: int, dialect: str) -> Prepared:
    """INSERT ... SELECT of `rows` RUNNING trials, numbered after their study's trials.

    Row i is (study_i, place_i); its number is its study's trial count (of study
    `sid_j`, counted once per study) plus its place. The count is read by the
    INSERT, a statement that starts after the study lock was granted. The rows go
    in (study, place) order, so ids follow numbers.

    The counts must not see the rows this statement inserts. A PostgreSQL
    statement never sees its own rows. On MySQL, MariaDB and SQLite the count
    subqueries are uncorrelated: each is evaluated once, and since they read the
    target table the SELECT is read whole into a temporary table before the first
    row goes in (MySQL documents this for INSERT ... SELECT from the same table).
    (A grouped count joined by study is no good there: MariaDB may evaluate it
    again for each row while it inserts, a "lateral derived" plan, and then counts
    its own new rows.)
    """
    added = union_all(*(
        select(bindparam(f"study_{i}", type_=Integer).label("study_id"),
               bindparam(f"place_{i}", type_=Integer).label("place"))
        for i in range(rows)
    )).subquery("added")
    counted = _counted(studies_count, dialect).subquery("counted")
    columns: list[Any] = [
        counted.c.trials_so_far + added.c.place,
        added.c.study_id,
        literal_column(f"'{STATE_NAMES[RUNNING]}'"),
        bindparam("now", type_=DateTime),
        null(),
    ]
    numbered = (
        select(*columns)
        .select_from(added.join(counted, counted.c.study_id == added.c.study_id))
        .order_by(added.c.study_id, added.c.place)
    )
    statement = (
        insert(trials)
        .from_select(["number", "study_id", "state", "datetime_start", "datetime_complete"],
                     numbered)
        .returning(trials.c.trial_id, trials.c.study_id, trials.c.number)
    )
    return Prepared(statement)


_LOCK_STUDIES = Prepared(
    select(studies.c.study_id)
    .where(studies.c.study_id.in_(bindparam("ids", expanding=True)))
    .with_for_update(),
    expanding=["ids"],
)
_INSERT_TRIALS_RETURNING = insert(trials).returning(
    trials.c.trial_id, trials.c.study_id, trials.c.number
)
