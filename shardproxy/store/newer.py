"""The trials of one study newer than a known id (or listed), read in O(delta).

Optuna's schema indexes `trials` by its primary key and by `study_id` alone, and
the store may not add an index. "Trials of study S with id > X" is then answered
from one of the two:

- MySQL/MariaDB (InnoDB) and SQLite: a secondary index holds the primary key
  after its own columns, so `ix_trials_study_id` is in effect (study_id, trial_id)
  and `study_id = S AND trial_id > X` is one short range of it: the plain WHERE.
  With listed ids beside it, SQLite's planner reads the OR of the two through the
  study's whole range of that index (4 ms a sync of 8 listed trials at 10 000
  trials, 40 ms at 100 000, `bench/results/sqlite-sync.md`), so there the two go
  apart into a UNION, each a short range of the index. MariaDB reads the OR as
  two ranges already, and a UNION inside an IN would make it scan the child
  tables instead.
- PostgreSQL: `ix_trials_study_id` is only (study_id); the study's index finds
  the newer trials by reading every trial of S, and only the primary key gives
  "id > X" directly, as the trials of every study with id > X: the trials written
  to the database since X. The planner picks between the two by its statistics,
  and without them (a table never analyzed, as after a bulk load with autovacuum
  off) it takes the study's index: it estimates a range at a third of the table,
  an equality at 0.5 % of it. So the store chooses itself, in the statement:
  when fewer ids were handed out after X than the study has trials (`size`), the
  id condition goes alone into a subquery that the planner may not merge into the
  outer query (`OFFSET 0`), closed from above by the largest INTEGER so that even
  without statistics it is estimated as a narrow range, and the study is checked
  on the rows it returns; otherwise the study's index is read. Both branches are
  in the statement, and the one not taken is not run (a one-time filter).
  The cost is O(min(trials written since X, the study's size)): O(delta) while
  the study is being written to, and never more than reading the study.

"Newer than X" finds every trial added since X because, within one study, trial
ids grow in commit order. On a Galera cluster ids from different nodes
interleave (each node takes ids of its own, `auto_increment_offset`), but not
within a study: numbering there is certified across nodes (`cluster`), so a
node adds a trial to a study only after it has applied the study's earlier
trials, and applying a row moves the node's auto-increment past its id.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    func,
    literal_column,
    or_,
    select,
    union,
    union_all,
)

from shardproxy.store.schema import trials

# Optuna's trial_id is an INTEGER: 32 bits on every backend's DDL of its schema.
MAX_TRIAL_ID = 2**31 - 1


def trial_ids_of_study(
    study_id: Any, after: Any, dialect: str, *, listed: Any = None, size: Any = None
) -> Select:
    """SELECT trial_id of the trials of `study_id` with id > `after` or, with
    `listed`, in that (expanding) list. `size`: about how many trials the study has
    (PostgreSQL: a larger gap since `after` reads the study's index instead)."""
    newer = and_(trials.c.trial_id > after,
                 trials.c.trial_id <= literal_column(str(MAX_TRIAL_ID)))
    picked: ColumnElement[bool] = newer if listed is None else or_(
        newer, trials.c.trial_id.in_(listed))
    if dialect == "sqlite" and listed is not None:
        # UNION, not UNION ALL: a listed id > `after` is in both. (Bounding the list
        # by `after` instead makes SQLite read the study's range up to `after`.)
        return select(union(
            select(trials.c.trial_id).where(trials.c.study_id == study_id, newer),
            select(trials.c.trial_id).where(trials.c.study_id == study_id,
                                            trials.c.trial_id.in_(listed)),
        ).subquery("picked").c.trial_id)
    if dialect != "postgresql":
        return select(trials.c.trial_id).where(picked, trials.c.study_id == study_id)
    fenced = (
        select(trials.c.trial_id, trials.c.study_id)
        .where(picked)
        .offset(literal_column("0"))
        .subquery("recent")
    )
    newest = select(func.max(trials.c.trial_id)).scalar_subquery()
    few_since = func.coalesce(newest, 0) - after <= size
    by_id = select(fenced.c.trial_id).where(fenced.c.study_id == study_id, few_since)
    in_study = trials.c.trial_id > after if listed is None else or_(
        trials.c.trial_id > after, trials.c.trial_id.in_(listed))
    by_study = select(trials.c.trial_id).where(
        trials.c.study_id == study_id, in_study, ~few_since)
    return select(union_all(by_id, by_study).subquery("picked").c.trial_id)
