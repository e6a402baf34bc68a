"""The counters a run reads before and after its measured window.

CPU time of process trees from /proc (user+sys, including reaped children, so a
tree's total stays consistent when a member exits), and the database server's own
counters of statements and of rows read: MariaDB/MySQL `SHOW GLOBAL STATUS`
(`Innodb_rows_read`, or `Rows_read` where the server no longer has it), PostgreSQL
`pg_stat_database` for the run's database (`tup_returned`, `tup_fetched`).
MariaDB's counters are server-wide, so the runner also samples the process list for
sessions of other databases that were busy during the window and reports them
beside the figures.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import sqlalchemy

_TICKS = os.sysconf("SC_CLK_TCK")
MARIADB_STATUS = ("Questions", "Com_select", "Com_insert", "Com_update", "Com_delete",
                  "Com_commit", "Com_rollback", "Innodb_rows_read", "Rows_read")
# tup_returned: live rows read by sequential scans plus index entries returned by
# index scans; tup_fetched: live rows fetched from tables by index scans.
POSTGRES_STATS = ("xact_commit", "xact_rollback", "tup_returned", "tup_fetched",
                  "tup_inserted", "tup_updated", "tup_deleted")
# What "rows read" is on each backend: the first of these counters the server has.
# MySQL counts InnoDB's rows read; MariaDB 10.11 no longer has that counter, and its
# Rows_read (row read requests, all engines, temporary tables excluded) takes its
# place. The runner's own monitoring queries read no rows by either.
ROWS_READ = {"mariadb": ("Innodb_rows_read", "Rows_read"), "postgres": ("tup_returned",)}
DB_SERVER_NAMES = frozenset(("mariadbd", "mysqld", "postgres"))


def _processes() -> dict[int, tuple[int, str, float]]:
    """pid -> (parent pid, command name, CPU seconds of itself and its reaped children)."""
    table = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        # fields[0] is state (field 3): utime, stime, cutime, cstime are fields 14-17.
        ticks = sum(int(v) for v in fields[11:15])
        table[int(entry.name)] = (int(fields[1]), name, ticks / _TICKS)
    return table


def tree_names(root: int) -> dict[int, str]:
    """pid -> command name of `root` and its descendants."""
    table = _processes()
    found, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if pid in table and pid not in found:
            found[pid] = table[pid][1]
            todo.extend(p for p, (parent, _, _) in table.items() if parent == pid)
    return found


def tree_cpu_seconds(roots: Iterable[int]) -> float:
    """User+sys CPU seconds of `roots` and all their descendants."""
    table = _processes()
    children: dict[int, list[int]] = {}
    for pid, (parent, _, _) in table.items():
        children.setdefault(parent, []).append(pid)
    total, todo, seen = 0.0, [p for p in roots if p in table], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][2]
        todo.extend(children.get(pid, ()))
    return total


def db_server_cpu_seconds() -> float:
    """CPU seconds of the local database server processes (all of their databases)."""
    return sum(cpu for _, name, cpu in _processes().values() if name in DB_SERVER_NAMES)


class DbCounters:
    """Reads a backend's statement and row counters over short-lived admin connections."""

    def __init__(self, backend: str, admin_url: str, database: str) -> None:
        self.backend = backend
        self.database = database
        self._engine = (
            sqlalchemy.create_engine(admin_url, poolclass=sqlalchemy.pool.NullPool)
            if backend in ("mariadb", "postgres")
            else None
        )

    def read(self) -> dict[str, float]:
        if self._engine is None:
            return {}
        # A new connection each time: PostgreSQL caches statistics per transaction.
        with self._engine.connect() as conn:
            if self.backend == "mariadb":
                names = ", ".join(f"'{n}'" for n in MARIADB_STATUS)
                rows = conn.execute(sqlalchemy.text(
                    f"SHOW GLOBAL STATUS WHERE Variable_name IN ({names})"
                ))
                return {name: float(value) for name, value in rows}
            columns = ", ".join(POSTGRES_STATS)
            row = conn.execute(
                sqlalchemy.text(f"SELECT {columns} FROM pg_stat_database WHERE datname = :d"),
                {"d": self.database},
            ).one()
            return {name: float(value) for name, value in zip(POSTGRES_STATS, row, strict=True)}

    def foreign_busy_sessions(self) -> int:
        """Sessions of other databases running a statement right now (MariaDB only)."""
        if self._engine is None or self.backend != "mariadb":
            return 0
        with self._engine.connect() as conn:
            return int(conn.execute(sqlalchemy.text(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE COMMAND <> 'Sleep' "
                "AND ID <> CONNECTION_ID() AND (DB IS NULL OR DB <> :d) AND USER <> 'system user'"
            ), {"d": self.database}).scalar_one())

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()


def rows_read_counter(backend: str, figures: dict[str, float]) -> str | None:
    """The counter that stands for rows read among `figures`, None if there is none."""
    return next((name for name in ROWS_READ.get(backend, ()) if name in figures), None)


def deltas(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before[name] for name in after if name in before}
