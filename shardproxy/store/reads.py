"""Reads: studies, and trials with all their child rows in one statement.

`load_trials` is the hottest query of the proxy (every read of a study syncs its
cache with it), so it is a single UNION ALL over the trial table and its five
child tables, ordered so that one pass assembles the rows. One round trip, one
snapshot, whatever the number of trials.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Float,
    Integer,
    Select,
    String,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    func,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection

from shardproxy.rows import (
    DIRECTION_BY_NAME,
    MAXIMIZE,
    STATE_BY_NAME,
    StudyRow,
    TrialRow,
    wire_datetime,
)
from shardproxy.store.errors import NOT_FOUND
from shardproxy.store.newer import MAX_TRIAL_ID, trial_ids_of_study
from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import (
    studies,
    study_directions,
    study_system_attributes,
    study_user_attributes,
    trial_intermediate_values,
    trial_params,
    trial_system_attributes,
    trial_user_attributes,
    trial_values,
    trials,
)
from shardproxy.store.sql import chunks as sql_chunks

# Ids per IN-list of a trial load. The list appears once per table of the UNION,
# so this keeps every statement far below SQLite's 32 766 parameters.
MAX_IN_LIST = 1000

_TRIAL, _PARAM, _VALUE, _INTERMEDIATE, _USER_ATTR, _SYSTEM_ATTR, _STUDY = range(7)

_INF = {"FINITE": None, "INF_POS": math.inf, "INF_NEG": -math.inf, "NAN": math.nan}


# -- studies -------------------------------------------------------------------------


def _direction(name: str) -> int:
    # Optuna's enum also has NOT_SET, which its servicer sends as MAXIMIZE.
    return DIRECTION_BY_NAME.get(name, MAXIMIZE)


def study_exists(conn: Connection, study_id: int) -> bool:
    query = select(studies.c.study_id).where(studies.c.study_id == study_id)
    return conn.execute(query).first() is not None


def require_study(conn: Connection, study_id: int) -> None:
    if not study_exists(conn, study_id):
        raise KeyError(NOT_FOUND)


def study_id_from_name(conn: Connection, name: str) -> int | None:
    """The id of the study of that name; None if there is none."""
    row = conn.execute(select(studies.c.study_id).where(studies.c.study_name == name)).first()
    return None if row is None else int(row[0])


def study_name_from_id(conn: Connection, study_id: int) -> str:
    query = select(studies.c.study_name).where(studies.c.study_id == study_id)
    row = conn.execute(query).first()
    if row is None:
        raise KeyError(NOT_FOUND)
    return str(row[0])


def study_directions_of(conn: Connection, study_id: int) -> list[int]:
    query = (
        select(study_directions.c.direction)
        .where(study_directions.c.study_id == study_id)
        .order_by(study_directions.c.objective)
    )
    directions = [_direction(d) for (d,) in conn.execute(query)]
    if not directions:
        require_study(conn, study_id)
    return directions


def study_attrs(conn: Connection, study_id: int, system: bool) -> dict[str, str]:
    table = study_system_attributes if system else study_user_attributes
    query = select(table.c.key, table.c.value_json).where(table.c.study_id == study_id)
    attrs = {key: value for key, value in conn.execute(query)}
    if not attrs:
        require_study(conn, study_id)
    return attrs


def all_studies(conn: Connection) -> list[StudyRow]:
    """Every study with its directions and attributes, from one statement (one snapshot:
    a study created or deleted meanwhile is seen whole or not at all)."""
    found: list[StudyRow] = []
    for kind, study_id, _, text, json in conn.execute(_ALL_STUDIES):
        if kind == 0:
            found.append(StudyRow(study_id, text, [], {}, {}))
        elif found and found[-1].study_id == study_id:
            study = found[-1]
            if kind == 1:
                study.directions.append(_direction(text))
            else:
                (study.user_attrs if kind == 2 else study.system_attrs)[text] = json
    return found


def _all_studies_statement() -> Any:
    no_text = cast(null(), Text)
    labels = ("kind", "study_id", "ordinal", "text", "json")

    def part(kind: int, *columns: Any) -> Select:
        return select(*(
            value.label(name)
            for value, name in zip((literal(kind, Integer), *columns), labels, strict=True)
        ))

    union = union_all(
        part(0, studies.c.study_id, literal(0, Integer), cast(studies.c.study_name, String),
             no_text),
        part(1, study_directions.c.study_id, study_directions.c.objective,
             cast(study_directions.c.direction, String), no_text),
        *(
            part(kind, table.c.study_id, table.c[f"{table.name[:-1]}_id"],
                 cast(table.c.key, String), cast(table.c.value_json, Text))
            for kind, table in ((2, study_user_attributes), (3, study_system_attributes))
        ),
    ).subquery()
    return select(union).order_by(union.c.study_id, union.c.kind, union.c.ordinal)


_ALL_STUDIES = _all_studies_statement()


# -- trials --------------------------------------------------------------------------


def study_id_of_trial(conn: Connection, trial_id: int) -> int:
    row = conn.execute(select(trials.c.study_id).where(trials.c.trial_id == trial_id)).first()
    if row is None:
        raise KeyError(NOT_FOUND)
    return int(row[0])


def trial_id_from_number(conn: Connection, study_id: int, number: int) -> int:
    query = select(trials.c.trial_id).where(
        and_(trials.c.study_id == study_id, trials.c.number == number)
    )
    row = conn.execute(query).first()
    if row is None:
        raise KeyError(
            f"No trial with trial number {number} exists in study with study_id {study_id}."
        )
    return int(row[0])


def load_trials(
    conn: Connection, study_id: int, id_greater_than: int, ids: Collection[int], size: int = 0
) -> list[TrialRow]:
    """Trials of the study with id > `id_greater_than` or in `ids`, sorted by id.

    One statement, or one more per MAX_IN_LIST further ids. KeyError when the study
    does not exist. `size`: about how many trials the study has, 0 if not known
    (on PostgreSQL it picks the cheaper way to find the newer ones, see `newer`).
    """
    postgresql = conn.dialect.name == "postgresql"
    loads = _LOADS[postgresql]
    older = sorted(i for i in set(ids) if i <= id_greater_than)
    parts = sql_chunks(older, MAX_IN_LIST) or [[]]
    params: dict[str, Any] = {"sid": study_id, "gt": id_greater_than}
    if postgresql:
        params["size"] = size
    if parts[0]:
        result = loads.delta_and_ids.execute(conn, {**params, "ids": list(parts[0])})
    elif id_greater_than < 0:
        result = loads.whole_study.execute(conn, {"sid": study_id})
    else:
        result = loads.delta.execute(conn, params)
    rows, found = _assemble(result)
    if not found:
        raise KeyError(NOT_FOUND)
    for part in parts[1:]:
        rows.extend(_assemble(loads.ids.execute(conn, {"sid": study_id, "ids": list(part)}))[0])
    if len(parts) > 1:
        rows.sort(key=lambda row: row.trial_id)
    return rows


def load_trial(conn: Connection, trial_id: int) -> TrialRow:
    rows, _ = _assemble(_ONE_TRIAL.execute(conn, {"trial_id": trial_id}))
    if not rows:
        raise KeyError(NOT_FOUND)
    return rows[0]


_COLUMNS = ("kind", "trial_id", "ordinal", "text", "number", "json", "start", "complete")


def _columns(*values: Any) -> list[Any]:
    """Labelled, so that equal expressions in one SELECT stay separate columns."""
    return [value.label(name) for value, name in zip(values, _COLUMNS, strict=True)]


def _union(wanted: Select, with_study: bool, by_array: bool) -> Any:
    """One SELECT per table, in the columns of `_COLUMNS`, so that the rows of every
    table fit one UNION ALL; ordered for `_assemble`.

    `wanted` selects the trial ids. Each table takes its rows of those trials from
    its trial_id index: through `IN (subquery)` where the planner joins that by the
    index (MySQL/MariaDB, SQLite), through `= ANY(ARRAY(subquery))` on PostgreSQL
    (`by_array`), where a semi-join may be planned as a hash join over the whole
    child table; an array parameter is always looked up in the index. There the
    ids are read once, as a CTE the parts share.
    """
    no_float = cast(null(), Float)
    no_text = cast(null(), Text)
    no_time = cast(null(), DateTime)
    if by_array:
        cte = wanted.cte("wanted")
        ids: Any = func.array(select(cte.c.trial_id).scalar_subquery())

        def of_wanted(column: Any) -> ColumnElement[bool]:
            return column == any_(ids)
    else:
        subquery = wanted.scalar_subquery()

        def of_wanted(column: Any) -> ColumnElement[bool]:
            if column is trials.c.trial_id:  # the trial rows themselves: no self-join
                assert wanted.whereclause is not None
                return wanted.whereclause
            return column.in_(subquery)

    def child(kind: int, table: Any, order: Any, text: Any, number: Any, json: Any) -> Select:
        return select(*_columns(
            literal(kind, Integer), table.c.trial_id, order, cast(text, String), number,
            cast(json, Text), no_time, no_time,
        )).where(of_wanted(table.c.trial_id))

    parts: list[Select] = [
        select(*_columns(
            literal(_TRIAL, Integer), trials.c.trial_id, trials.c.number,
            cast(trials.c.state, String), no_float, no_text,
            trials.c.datetime_start, trials.c.datetime_complete,
        )).where(of_wanted(trials.c.trial_id)),
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
        # A row that says the study exists, so an empty result is not ambiguous.
        parts.append(select(*_columns(
            literal(_STUDY, Integer), studies.c.study_id, literal(0, Integer),
            cast(no_text, String), no_float, no_text, no_time, no_time,
        )).where(studies.c.study_id == bindparam("sid")))
    union = union_all(*parts).subquery()
    return select(union).order_by(union.c.trial_id, union.c.kind, union.c.ordinal)


def _assemble(result: Iterable[Sequence[Any]]) -> tuple[list[TrialRow], bool]:
    rows: list[TrialRow] = []
    study_found = False
    current: TrialRow | None = None
    for kind, trial_id, order, text, number, json, start, complete in result:
        if kind == _TRIAL:
            current = TrialRow(
                trial_id, order, STATE_BY_NAME[text], [], wire_datetime(start),
                wire_datetime(complete), [], [], [], [],
            )
            rows.append(current)
        elif kind == _STUDY:
            study_found = True
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
    return rows, study_found


# The trial loads, built once per backend family: each is one statement, whatever
# the number of trials, and reads O(trials returned) rows (see `newer`), except the
# whole study's, which reads the study from its index.
@dataclass(frozen=True)
class _Loads:
    whole_study: Prepared
    delta: Prepared
    delta_and_ids: Prepared
    ids: Prepared


def _loads(postgresql: bool) -> _Loads:
    dialect = "postgresql" if postgresql else "default"
    study: Any = bindparam("sid")
    gt: Any = bindparam("gt")
    listed: Any = bindparam("ids", expanding=True)
    size: Any = bindparam("size") if postgresql else None

    def union(wanted: Select, with_study: bool = True) -> Any:
        return _union(wanted, with_study, by_array=postgresql)

    # Prepared: every read of a trial runs one of these, and deriving the cache key of
    # a six-part UNION costs SQLAlchemy more than the database needs to answer it.
    return _Loads(
        whole_study=Prepared(union(select(trials.c.trial_id).where(trials.c.study_id == study))),
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
    )


_LOADS = {False: _loads(postgresql=False), True: _loads(postgresql=True)}
_ONE_TRIAL = Prepared(_union(
    select(trials.c.trial_id).where(trials.c.trial_id == bindparam("trial_id")),
    with_study=False, by_array=False,
))
