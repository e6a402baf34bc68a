"""Which statements a benchmark sends to MariaDB, by shape, per finished trial.

    python -m bench.statement_log [--top 20] -- --scenario seed --loads real \\
        --systems shardproxy --workers 1 --duration 20

Runs `python -m bench.run --db mariadb <the arguments after -->` with the server's
general query log written to its `mysql.general_log` table, then reads that log:
every statement of the connections to the benchmark's databases (`bench_*`), with
its numbers and IN-lists folded into one shape, counted and divided by the trials
the log shows finished (the COMPLETE states its UPDATEs set, warm-up included);
then the transactions, by the statements they hold. The log costs the server
time, so the run's own figures are not the benchmark's: read the shares, not the
speed. Bench code only: the log is switched off and emptied again on exit.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections import Counter

import sqlalchemy

SERVER = "mysql+pymysql://root@127.0.0.1:3306/mysql"
_NUMBER = re.compile(r"\b\d+(\.\d+)?(e[-+]?\d+)?\b", re.IGNORECASE)
_IN_LIST = re.compile(r"IN \((?:N, )*N\)")


def shape(statement: str, length: int = 90) -> str:
    """The statement with its numbers and IN-lists folded, cut to `length`; the
    store's trial reads (one long UNION each) by what they read."""
    folded = _IN_LIST.sub("IN (N…)", _NUMBER.sub("N", " ".join(statement.split())))
    if folded.startswith("SELECT anon_"):
        if "trials.trial_id > N" in folded:
            return "trial read: a study's delta (a sync)"
        if "WHERE trials.trial_id IN" in folded:
            return "trial read: listed trials (GetTrial of unfinished ones)"
        return "trial read: a whole study"
    return folded[:length]


def main() -> None:
    argv = sys.argv[1:]
    own, run_args = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv \
        else (argv, [])
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=20, help="statement shapes to list")
    args = parser.parse_args(own)
    engine = sqlalchemy.create_engine(SERVER, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.exec_driver_sql("SET GLOBAL general_log = 0")
        conn.exec_driver_sql("TRUNCATE mysql.general_log")
        conn.exec_driver_sql("SET GLOBAL log_output = 'TABLE'")
        conn.exec_driver_sql("SET GLOBAL general_log = 1")
    try:
        subprocess.run([sys.executable, "-m", "bench.run", "--db", "mariadb", *run_args],
                       check=True, stdout=subprocess.DEVNULL)
        with engine.connect() as conn:
            conn.exec_driver_sql("SET GLOBAL general_log = 0")
            rows = conn.exec_driver_sql(
                "SELECT thread_id, command_type, CONVERT(argument USING utf8mb4) "
                "FROM mysql.general_log ORDER BY event_time").all()
    finally:
        with engine.connect() as conn:
            conn.exec_driver_sql("SET GLOBAL general_log = 0")
            conn.exec_driver_sql("TRUNCATE mysql.general_log")
        engine.dispose()
    report(rows, args.top)


def report(rows: list[tuple[int, str, str]], top: int) -> None:
    bench_threads = {thread for thread, kind, text in rows
                     if kind == "Connect" and " on bench_" in text}
    statements = [(thread, text) for thread, kind, text in rows
                  if kind == "Query" and thread in bench_threads]
    finished = sum(text.count("THEN 'COMPLETE'") + text.count("state='COMPLETE'")
                   for _, text in statements if text.startswith("UPDATE trials"))
    if not finished:
        sys.exit("no finished trial in the log")
    shapes = Counter(shape(text) for _, text in statements)
    print(f"{len(statements)} statements, {finished} trials finished: "
          f"{len(statements) / finished:.2f} per trial\n")
    print("| per trial | statement |\n|---:|---|")
    for text, count in shapes.most_common(top):
        print(f"| {count / finished:.3f} | `{text}` |")
    transactions: Counter[tuple[str, ...]] = Counter()
    open_: dict[int, list[str]] = {}
    for thread, text in statements:
        if text.startswith(("COMMIT", "ROLLBACK")):
            transactions[tuple(open_.pop(thread, []))] += 1
        elif not text.startswith(("SELECT anon_", "SET ", "SELECT 1")):
            open_.setdefault(thread, []).append(shape(text, 30))
    print("\n| transactions per trial | statements before the COMMIT |\n|---:|---|")
    for held, count in transactions.most_common(top):
        if held and count / finished >= 0.005:
            print(f"| {count / finished:.3f} | {' · '.join(f'`{s}`' for s in held)} |")


if __name__ == "__main__":
    main()
