"""Trials with all their child rows, in one statement: the cache's syncs and GetTrial's reads.

`load_trials` is the hottest query of the proxy (every read of a study syncs its
cache with it), so it is a single UNION ALL over the trial table and its five
child tables, ordered so that one pass assembles the rows. One round trip, one
snapshot, whatever the number of trials, and O(trials returned) rows read (see
`newer`).

On PostgreSQL the row that says the study exists also carries the newest trial id
in the database and the statement's snapshot bounds (`SyncMark`), from which the
store learns id ranges where no trial of the study can appear any more
(`settled`).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Generator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

from sqlalchemy import (
    Float,
    Integer,
    Select,
    String,
    Text,
    any_,
    bindparam,
    cast,
    func,
    literal,
    literal_column,
    null,
    select,
    true,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.functions import FunctionElement

from shardproxy.rows import STATE_BY_NAME, TrialRow, local_zone_is_utc, wire_datetime_of_text
from shardproxy.store.errors import NOT_FOUND
from shardproxy.store.newer import MAX_TRIAL_ID, trial_ids_of_study
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import (
    studies,
    trial_intermediate_values,
    trial_params,
    trial_system_attributes,
    trial_user_attributes,
    trial_values,
    trials,
)
from shardproxy.store.shapes import chunks

# Ids per IN-list of a trial load. The list appears once per table of the UNION,
# so this keeps every statement far below SQLite's 32 766 parameters.
MAX_IN_LIST = 1000

_TRIAL, _PARAM, _VALUE, _INTERMEDIATE, _USER_ATTR, _SYSTEM_ATTR, _STUDY = range(7)

_INF = {"FINITE": None, "INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


class SyncMark(NamedTuple):
    """What a PostgreSQL load saw: the newest trial id in the database, and its
    snapshot's xmin (every older transaction had ended) and xmax (every later one
    began after it)."""

    newest_id: int
    xmin: int
    xmax: int


# Trials from which a read counts as large (a first read of a study, mostly).
LARGE_LOAD = 4096


class Loaded(NamedTuple):
    rows: list[TrialRow]
    mark: SyncMark | None


def load_trials(
    conn: Connection, study_id: int, id_greater_than: int, ids: Collection[int], size: int = 0
) -> Loaded:
    """Trials of the study with id > `id_greater_than` or in `ids`, sorted by id.

    One statement, or one more per MAX_IN_LIST further ids. KeyError when the study
    does not exist. `size`: about how many trials the study has, 0 if not known
    (on PostgreSQL it picks the cheaper way to find the newer ones, see `newer`).
    """
    postgresql = conn.dialect.name == "postgresql"
    loads = _loads_of(conn)
    older = sorted(i for i in set(ids) if i <= id_greater_than)
    parts = chunks(older, MAX_IN_LIST) or [[]]
    params: dict[str, Any] = {"sid": study_id, "gt": id_greater_than}
    if postgresql:
        params["size"] = size
    if parts[0]:
        result = loads.delta_and_ids.execute(conn, {**params, "ids": list(parts[0])})
    elif id_greater_than < 0:
        result = loads.whole_study.execute(conn, {"sid": study_id})
    else:
        result = loads.delta.execute(conn, params)
    rows, found, mark = _assemble(result)
    if not found:
        raise KeyError(NOT_FOUND)
    for part in parts[1:]:
        rows.extend(_assemble(loads.ids.execute(conn, {"sid": study_id, "ids": list(part)}))[0])
    if len(parts) > 1:
        rows.sort(key=lambda row: row.trial_id)
    if len(rows) >= LARGE_LOAD and conn.dialect.name in ("mysql", "mariadb"):
        # PyMySQL keeps a connection's last result set (here every row of a large
        # read, a kilobyte per trial) until the connection's next query, which may
        # be minutes away for a pooled connection: one trivial query lets it go now.
        conn.exec_driver_sql("SELECT 1")
    return Loaded(rows, mark)


# Result rows a streamed load takes from the driver at a time (a trial is one row,
# and one per param, value, intermediate value and attribute).
STREAM_FETCH = 2000


class StudyStream:
    """Every trial of a study, by id, assembled as the driver delivers the rows
    (`Prepared.stream`): one statement and one snapshot, as `load_trials`, but
    the rows of a fetch at a time rather than the whole study's at once.

    `found` and `mark` are those of `load_trials`, known once `rows` has run out.
    `close` it before the connection goes back to its pool.
    """

    def __init__(self, conn: Connection, study_id: int) -> None:
        self._assembly = _Assembly()
        whole_study = _loads_of(conn).whole_study
        self._fetched = whole_study.stream(conn, {"sid": study_id}, STREAM_FETCH)
        self.rows = self._assembly.rows(self._fetched)

    def close(self) -> None:
        """Lets the cursor go, also when the rows have not run out: before its
        connection serves anything else."""
        self.rows.close()
        self._fetched.close()

    @property
    def found(self) -> bool:
        return self._assembly.found

    @property
    def mark(self) -> SyncMark | None:
        return self._assembly.mark


def load_trials_by_id(conn: Connection, ids: Sequence[int]) -> list[TrialRow]:
    """The trials with these ids (of any studies) that exist, sorted by id.

    One statement per MAX_IN_LIST ids.
    """
    rows: list[TrialRow] = []
    for part in chunks(sorted(set(ids)), MAX_IN_LIST):
        rows.extend(_assemble(_loads_of(conn).by_id.execute(
            conn, {"ids": list(part)}))[0])
    return rows


_COLUMNS = ("kind", "trial_id", "ordinal", "text", "number", "json", "start", "complete")


class _WireText(FunctionElement[str]):
    """A stored datetime (naive UTC) as text in the wire's format with a four-digit
    year, made by the database: the driver then returns a string, not a datetime
    object to be formatted again (`wire_datetime_of_text`)."""

    type = String()
    inherit_cache = True


@compiles(_WireText, "postgresql")
def _wire_text_postgresql(element: _WireText, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    text = func.to_char(column, literal("YYYY-MM-DD HH24:MI:SS.US"))
    return str(compiler.process(text, **kw))


@compiles(_WireText, "mysql")
@compiles(_WireText, "mariadb")
def _wire_text_mysql(element: _WireText, compiler: Any, **kw: Any) -> str:
    (column,) = element.clauses
    text = func.date_format(column, literal("%Y-%m-%d %H:%i:%s.%f"))
    return str(compiler.process(text, **kw))


@compiles(_WireText)
def _wire_text_stored(element: _WireText, compiler: Any, **kw: Any) -> str:
    # SQLite: SQLAlchemy stores a datetime as that very text.
    (column,) = element.clauses
    return str(compiler.process(cast(column, Text), **kw))


# How a load's parts find the rows of its wanted trials (see `_union`).
Lookup = Literal["in", "array", "lateral"]


def _columns(*values: Any) -> list[Any]:
    """Labelled, so that equal expressions in one SELECT stay separate columns."""
    return [value.label(name) for value, name in zip(values, _COLUMNS, strict=True)]


def _union(wanted: Select, with_study: bool, lookup: Lookup) -> Any:
    """One SELECT per table, in the columns of `_COLUMNS`, so that the rows of every
    table fit one UNION ALL; ordered for `_assemble`.

    `wanted` selects the trial ids. Each table takes its rows of those trials from
    its trial_id index, as `lookup` says:

    - "in": `IN (subquery)`, which MySQL/MariaDB and SQLite join by the index.
    - PostgreSQL may plan that semi-join as a hash join over the whole child table;
      there the ids are read once, as a CTE the parts share, and looked up
      - "array": through `= ANY(ARRAY(subquery))`, for many ids (a whole study):
        the planner picks an index scan or a sequential scan by the table's size
        against an array of unknown length;
      - "lateral": id by id, in a LATERAL subquery the planner may not merge into
        the join (`OFFSET 0`), for the few ids of a sync or a GetTrial. Through an
        array, such a read ran a sequential scan of trial_params on every sync of
        a benchmark's study of a few thousand trials (its statistics lagging the
        table's growth); one index lookup per id does not depend on them.
    """
    no_float = cast(null(), Float)
    no_text = cast(null(), Text)
    no_time = cast(null(), String)  # the datetimes are read as text (`_WireText`)
    postgresql = lookup != "in"  # the other two are PostgreSQL's
    if lookup == "lateral":
        cte = wanted.cte("wanted")

        def select_of(table: Any, *values: Any) -> Select:
            found = (
                select(*_columns(*values))
                .where(table.c.trial_id == cte.c.trial_id)
                .offset(literal_column("0"))
                .lateral(f"of_{table.name}")
            )
            return select(*found.c).select_from(cte.join(found, true()))
    elif lookup == "array":
        ids: Any = func.array(select(wanted.cte("wanted").c.trial_id).scalar_subquery())

        def select_of(table: Any, *values: Any) -> Select:
            return select(*_columns(*values)).where(table.c.trial_id == any_(ids))
    else:
        subquery = wanted.scalar_subquery()
        # The trial rows themselves are the wanted ones' own, where `wanted` is one
        # SELECT of trials: no self-join (on SQLite it can be a UNION, `newer`).
        wanted_where = wanted.whereclause if wanted.get_final_froms() == [trials] else None

        def select_of(table: Any, *values: Any) -> Select:
            found = (wanted_where if table is trials and wanted_where is not None
                     else table.c.trial_id.in_(subquery))
            return select(*_columns(*values)).where(found)

    def child(kind: int, table: Any, order: Any, text: Any, number: Any, json: Any) -> Select:
        return select_of(table, literal(kind, Integer), table.c.trial_id, order,
                         cast(text, String), number, cast(json, Text), no_time, no_time)

    parts: list[Select] = [
        select_of(
            trials, literal(_TRIAL, Integer), trials.c.trial_id, trials.c.number,
            cast(trials.c.state, String), no_float, no_text,
            _WireText(trials.c.datetime_start), _WireText(trials.c.datetime_complete),
        ),
        child(_PARAM, trial_params, trial_params.c.param_id, trial_params.c.param_name,
              trial_params.c.param_value, trial_params.c.distribution_json),
        child(_VALUE, trial_values, trial_values.c.objective, trial_values.c.value_type,
              trial_values.c.value, no_text),
        child(_INTERMEDIATE, trial_intermediate_values, trial_intermediate_values.c.step,
              trial_intermediate_values.c.intermediate_value_type,
              trial_intermediate_values.c.intermediate_value, no_text),
        child(_USER_ATTR, trial_user_attributes,
              trial_user_attributes.c.trial_user_attribute_id, trial_user_attributes.c.key,
              no_float, trial_user_attributes.c.value_json),
        child(_SYSTEM_ATTR, trial_system_attributes,
              trial_system_attributes.c.trial_system_attribute_id,
              trial_system_attributes.c.key, no_float, trial_system_attributes.c.value_json),
    ]
    if with_study:
        # A row that says the study exists, so an empty result is not ambiguous;
        # on PostgreSQL with the statement's `SyncMark`.
        newest: Any
        snapshot: Any
        if postgresql:
            newest = func.coalesce(select(func.max(trials.c.trial_id)).scalar_subquery(), 0)
            snapshot = literal_column(
                "pg_snapshot_xmin(pg_current_snapshot())::text || ':' || "
                "pg_snapshot_xmax(pg_current_snapshot())::text"
            )
        else:
            newest, snapshot = literal(0, Integer), no_text
        parts.append(select(*_columns(
            literal(_STUDY, Integer), studies.c.study_id, newest,
            cast(snapshot, String), no_float, no_text, no_time, no_time,
        )).where(studies.c.study_id == bindparam("sid")))
    union = union_all(*parts).subquery()
    return select(union).order_by(union.c.trial_id, union.c.kind, union.c.ordinal)


class _Assembly:
    """Trial rows assembled from a load's result rows, in the order they come.

    `found` and `mark` (the study's row: it exists, and on PostgreSQL the load's
    `SyncMark`) are known once `rows` has run to its end.
    """

    def __init__(self) -> None:
        self.found = False
        self.mark: SyncMark | None = None

    def rows(self, result: Iterable[Sequence[Any]]) -> Generator[TrialRow, None, None]:
        current: TrialRow | None = None
        utc = local_zone_is_utc()
        for kind, trial_id, order, text, number, json, start, complete in result:
            if kind == _TRIAL:
                if current is not None:
                    yield current
                current = TrialRow(
                    trial_id, order, STATE_BY_NAME[text], [], wire_datetime_of_text(start, utc),
                    wire_datetime_of_text(complete, utc), [], [], [], [],
                )
            elif kind == _STUDY:
                self.found = True
                if text:
                    xmin, _, xmax = text.partition(":")
                    self.mark = SyncMark(int(order), int(xmin), int(xmax))
            elif current is None or current.trial_id != trial_id:
                continue  # a child row of a trial committed after the snapshot of its parent
            elif kind == _PARAM:
                current.params.append((text, number, json))
            elif kind == _VALUE:
                special = _INF[text]
                current.values.append(number if special is None else special)
            elif kind == _INTERMEDIATE:
                special = _INF[text]
                current.intermediate_values.append((order, number if special is None else special))
            elif kind == _USER_ATTR:
                current.user_attrs.append((text, json))
            else:
                current.system_attrs.append((text, json))
        if current is not None:
            yield current


def _assemble(
    result: Iterable[Sequence[Any]],
) -> tuple[list[TrialRow], bool, SyncMark | None]:
    assembly = _Assembly()
    rows = list(assembly.rows(result))
    return rows, assembly.found, assembly.mark


# The trial loads, built once per backend family: each is one statement, whatever
# the number of trials, and reads O(trials returned) rows (see `newer`), except the
# whole study's, which reads the study from its index.
@dataclass(frozen=True)
class _Loads:
    whole_study: Prepared
    delta: Prepared
    delta_and_ids: Prepared
    ids: Prepared
    by_id: Prepared  # trials of any study, by id


def _loads(dialect: str) -> _Loads:
    """The loads of a family of backends: "postgresql", "sqlite" or "default"
    (MySQL/MariaDB), which differ in how they find a study's newer trials (`newer`)."""
    postgresql = dialect == "postgresql"
    study: Any = bindparam("sid")
    gt: Any = bindparam("gt")
    listed: Any = bindparam("ids", expanding=True)
    size: Any = bindparam("size") if postgresql else None

    def union(wanted: Select, with_study: bool = True) -> Any:
        return _union(wanted, with_study, "lateral" if postgresql else "in")

    # Prepared: every read of a trial runs one of these, and deriving the cache key of
    # a six-part UNION costs SQLAlchemy more than the database needs to answer it.
    return _Loads(
        whole_study=Prepared(_union(select(trials.c.trial_id).where(trials.c.study_id == study),
                                    True, "array" if postgresql else "in")),
        delta=Prepared(union(trial_ids_of_study(study, gt, dialect, size=size))),
        delta_and_ids=Prepared(
            union(trial_ids_of_study(study, gt, dialect, listed=listed, size=size)),
            expanding=["ids"],
        ),
        # Nothing is newer than the largest id: the listed trials only.
        ids=Prepared(
            union(trial_ids_of_study(study, literal(MAX_TRIAL_ID, Integer), dialect,
                                     listed=listed, size=literal(0, Integer)),
                  with_study=False),
            expanding=["ids"],
        ),
        by_id=Prepared(
            union(select(trials.c.trial_id).where(trials.c.trial_id.in_(listed)),
                  with_study=False),
            expanding=["ids"],
        ),
    )


_LOADS = {dialect: _loads(dialect) for dialect in ("postgresql", "sqlite", "default")}


def _loads_of(conn: Connection) -> _Loads:
    name = conn.dialect.name
    return _LOADS[name if name in _LOADS else "default"]
