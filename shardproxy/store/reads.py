"""Reads: studies with their directions and attributes, and a trial's study or id by number.

The trials themselves, with all their child rows, are read by `loads`.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    Integer,
    String,
    Text,
    and_,
    bindparam,
    cast,
    literal,
    null,
    select,
    union_all,
)
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select

from shardproxy.rows import DIRECTION_BY_NAME, MAXIMIZE, StudyRow
from shardproxy.store.errors import NOT_FOUND
from shardproxy.store.schema import (
    studies,
    study_directions,
    study_system_attributes,
    study_user_attributes,
    trials,
)

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


_STUDY_AND_NUMBER = select(trials.c.study_id, trials.c.number).where(
    trials.c.trial_id == bindparam("trial_id"))


def trial_id_from_number(
    conn: Connection, study_id: int, number: int, guess: int | None = None
) -> int:
    """The id of the study's trial of that number; KeyError if there is none.

    Optuna's schema has no index on the number: the study's trials are read to
    find it, O(study) (4.6–7.3 ms at 100 000 trials, `bench/results/by-number.md`).
    `guess`, an id the trial may have (`StudyCache.id_of_rank`), is tried first,
    by its primary key; the study and the number are compared here, so that no
    plan reads the study's index for it.
    """
    if guess is not None:
        row = conn.execute(_STUDY_AND_NUMBER, {"trial_id": guess}).first()
        if row is not None and (row[0], row[1]) == (study_id, number):
            return guess
    query = select(trials.c.trial_id).where(
        and_(trials.c.study_id == study_id, trials.c.number == number)
    )
    row = conn.execute(query).first()
    if row is None:
        raise KeyError(
            f"No trial with trial number {number} exists in study with study_id {study_id}."
        )
    return int(row[0])
