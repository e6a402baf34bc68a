"""Logs: JSON lines a shipper can parse, an access line per RPC at DEBUG, never a password."""

from __future__ import annotations

import datetime
import json
import logging
import signal
import subprocess
import sys
import tempfile

import optuna
import sqlalchemy

from shardproxy.logs import JsonFormatter, TextFormatter, scrub
from shardproxy.rpc import access_logger, method_handlers
from tests.proxies import free_port, proxy_client, running_workers

BOUND = 120.0  # every wait here ends; none of them is a speed claim
SECRET = "Sekr1t-pw"


def test_urls_lose_their_password_in_every_format() -> None:
    hidden = scrub("at mysql+pymysql://u:pa@ss@db:3306/x now")
    assert hidden == "at mysql+pymysql://u:***@db:3306/x now"
    assert scrub("postgresql://postgres@h/db") == "postgresql://postgres@h/db"
    record = logging.makeLogRecord({"msg": "url %s", "args": (f"mysql://root:{SECRET}@h/db",),
                                    "levelname": "INFO", "name": "x"})
    for formatter in (TextFormatter(), JsonFormatter()):
        assert SECRET not in formatter.format(record)
    entry = json.loads(JsonFormatter().format(record))
    assert entry["message"] == "url mysql://root:***@h/db"


def test_the_access_log_costs_nothing_unless_debug_is_on(sqlite_url: str) -> None:
    with running_workers(sqlite_url) as (worker,):
        previous = access_logger.level
        try:
            access_logger.setLevel(logging.INFO)
            plain = method_handlers(worker.front, worker.metrics)
            access_logger.setLevel(logging.DEBUG)
            logged = method_handlers(worker.front, worker.metrics)
        finally:
            access_logger.setLevel(previous)
    # Decided once, when the handlers are built: without DEBUG no clock is read
    # and nothing is formatted per call.
    assert {h.unary_unary.__name__ for h in plain.values()} == {"rpc"}
    assert {h.unary_unary.__name__ for h in logged.values()} == {"observed"}


def test_json_logs_at_debug_parse_and_hold_no_password(postgres_url: str) -> None:
    url = sqlalchemy.engine.make_url(postgres_url).set(password=SECRET)  # trusted: unchecked
    port = free_port()
    with tempfile.TemporaryFile(mode="w+") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "shardproxy", "serve", "--storage",
             url.render_as_string(hide_password=False), "--host", "127.0.0.1", "--port",
             str(port), "--workers", "2", "--standbys", "0", "--drain-delay", "0",
             "--log-format", "json", "--log-level", "DEBUG"],
            stderr=log, text=True,
        )
        try:
            with proxy_client(port) as client:
                for i in range(4):  # studies on both workers: some requests are forwarded
                    study = optuna.create_study(study_name=f"s{i}", storage=client)
                    study.optimize(lambda t: t.suggest_float("x", 0, 1) ** 2, n_trials=2)
                try:
                    client.get_study_id_from_name("no such study")
                except KeyError:
                    pass
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=BOUND) == 0
        log.seek(0)
        text = log.read()
    assert SECRET not in text
    entries = [json.loads(line) for line in text.splitlines()]
    for entry in entries:
        assert {"time", "level", "process", "worker", "logger", "message"} <= entry.keys()
        assert datetime.datetime.fromisoformat(entry["time"]).tzinfo is not None
    workers = {entry["worker"] for entry in entries if entry["logger"] == "shardproxy.worker"}
    assert workers == {0, 1}
    assert all(entry["worker"] is None for entry in entries
               if entry["logger"] == "shardproxy.supervisor")
    access = [entry for entry in entries if entry["logger"] == "shardproxy.access"]
    assert {entry["method"] for entry in access} >= {
        "CreateNewStudy", "CreateNewTrial", "SetTrialParameter", "SetTrialStateValues",
        "GetTrials", "GetStudyIdFromName",
    }
    for entry in access:
        assert entry["level"] == "DEBUG" and entry["duration_ms"] >= 0
        assert entry["route"] in ("here", "forwarded") and entry["worker"] in (0, 1)
    assert {entry["route"] for entry in access} == {"here", "forwarded"}
    trial_writes = [e for e in access if e["method"] == "SetTrialStateValues"]
    assert all(isinstance(e["study"], int) and e["code"] == "OK" for e in trial_writes)
    missing = [e for e in access if e["method"] == "GetStudyIdFromName" and e["code"] != "OK"]
    assert [e["code"] for e in missing] == ["NOT_FOUND"]
