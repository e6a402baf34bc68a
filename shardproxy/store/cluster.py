"""Multi-primary clusters: what the store runs on, and what numbering needs there.

On one server every writer of trials locks the study's row (`SELECT ... FOR
UPDATE`) before it counts the study's trials, which serialises numbering. On a
multi-primary cluster that lock is local to one node: two nodes may number the
same study at once and both commit the same number. Galera (MariaDB Galera,
Percona XtraDB Cluster) orders conflicting transactions by certification
instead, and certification sees only rows a transaction changed. So on Galera a
transaction that numbers a study's trials also changes a row of that study, one
that every numbering transaction changes: its rows in `study_directions`, each
objective flipped to `-1 - objective` and at once flipped back (no objective is
negative, so the flip collides with no other row; the committed rows are
unchanged and no reader ever sees the flip, which is never committed alone). Two
real changes ship two row events, so two nodes numbering the same study at once
conflict: the one certified second gets error 1213 at COMMIT, or is aborted by
the first one's write set when it is applied on its node, and the batch is run
again like any deadlock, counting the trials again. (An UPDATE that changes
nothing, or the FOR UPDATE lock, ships nothing to certify.) The proxies' trials
are then numbered in one order across the cluster, and since a node that applies
another node's trial moves its own auto-increment past it, trial ids grow with
numbers within a study on every node, which the delta reads rely on.

Reads on Galera wait until the node has applied what the cluster committed
before they started (`wsrep_sync_wait = 1`): a sync through one node sees the
trials another node's proxy has acknowledged.

MySQL Group Replication in multi-primary mode certifies write sets too, but this
is untested there: `shardproxy serve` refuses it (see `startup`) unless the
operator asserts that a single node takes every proxy's writes.

None of this runs on a single server: detection is one query when the store
opens, and the numbering write is made only where it found Galera.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import sqlalchemy
from sqlalchemy import bindparam, update
from sqlalchemy.engine import Connection, Engine

from shardproxy.store.prepared import Prepared
from shardproxy.store.schema import study_directions

_logger = logging.getLogger(__name__)

SINGLE = "single server"
GALERA = "Galera"
GROUP_REPLICATION = "Group Replication (multi-primary)"

# wsrep_sync_wait bit 1: SELECT, SHOW and BEGIN wait for causality.
SYNC_WAIT_READS = 1


@dataclass(frozen=True)
class Topology:
    """What the store's database is: a single server, or a cluster of `members` nodes."""

    kind: str = SINGLE
    members: int = 1

    @property
    def galera(self) -> bool:
        return self.kind == GALERA

    @property
    def multi_primary(self) -> bool:
        """Whether writes sent to different nodes may both commit."""
        return self.kind != SINGLE and self.members > 1

    @property
    def certifies_numbering(self) -> bool:
        """Whether numbering makes the write that Galera's certification orders.

        On every Galera node, of any size: a cluster that starts as one bootstrapped
        node is joined by the others while the store runs.
        """
        return self.galera

    def describe(self) -> str:
        if self.kind == SINGLE:
            return SINGLE
        return f"{self.kind} cluster of {self.members} node{'s' if self.members != 1 else ''}"


def detect(conn: Connection) -> Topology:
    """The topology of the database behind `conn`: two short queries on MySQL/MariaDB."""
    if conn.dialect.name != "mysql":
        return Topology()
    variables: dict[str, str] = dict(conn.exec_driver_sql(
        "SHOW VARIABLES WHERE Variable_name IN "
        "('wsrep_on', 'group_replication_single_primary_mode')"
    ).all())
    if str(variables.get("wsrep_on", "OFF")).upper() == "ON":
        row = conn.exec_driver_sql("SHOW STATUS LIKE 'wsrep_cluster_size'").first()
        return Topology(GALERA, int(row[1]) if row is not None and row[1] else 1)
    if str(variables.get("group_replication_single_primary_mode", "ON")).upper() == "OFF":
        members = conn.exec_driver_sql(
            "SELECT COUNT(*) FROM performance_schema.replication_group_members "
            "WHERE MEMBER_STATE = 'ONLINE'"
        ).scalar()
        return Topology(GROUP_REPLICATION, int(members or 0))
    return Topology()


def detect_engine(engine: Engine) -> Topology:
    with engine.connect() as conn:
        return detect(conn)


def log_topology(topology: Topology, shown_url: str, level: int = logging.INFO) -> None:
    """Says what the database is, if it is a cluster (`shardproxy serve` once, at start;
    each store at `level`)."""
    if topology.galera:
        _logger.log(
            level,
            "%s is a %s: trial numbering is certified across nodes, reads wait for "
            "the cluster's earlier commits (wsrep_sync_wait)", shown_url, topology.describe()
        )
    elif topology.multi_primary:
        _logger.log(level, "%s is a %s", shown_url, topology.describe())


def wait_for_causality(engine: Engine) -> None:
    """Makes every connection the engine opens from now on read causally (Galera).

    Call before the engine's first connection; its pool is emptied to be sure.
    """

    @sqlalchemy.event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET SESSION wsrep_sync_wait = {SYNC_WAIT_READS}")
        cursor.close()

    engine.dispose()


def certify_numbering(conn: Connection, study_ids: list[int]) -> None:
    """Changes a row of each study and changes it back, inside the numbering transaction.

    Two statements: the first flips each objective of the studies' directions to
    `-1 - objective`, the second flips it back. Each is a real change, so each
    ships a row event that Galera's certification checks against every other
    node's transactions; the X locks they take also make the node abort this
    transaction when another node's earlier write of the same rows is applied.
    """
    if study_ids:
        _FLIP_OBJECTIVES.execute(conn, {"ids": study_ids})
        _FLIP_OBJECTIVES.execute(conn, {"ids": study_ids})


_FLIP_OBJECTIVES = Prepared(
    update(study_directions)
    .where(study_directions.c.study_id.in_(bindparam("ids", expanding=True)))
    .values(objective=-1 - study_directions.c.objective),
    expanding=["ids"],
)
