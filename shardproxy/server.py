"""Run a shardproxy instance from its Config: a supervisor and its worker processes."""

from __future__ import annotations

import logging
import resource

from shardproxy.child import Entry
from shardproxy.config import Config
from shardproxy.handover import handover_timeout
from shardproxy.startup import StartupError, check_address, check_database
from shardproxy.supervisor import Supervisor

_logger = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code.

    One worker or many, the same way: the supervisor starts them, restarts one that
    crashes, and drains them on SIGTERM. It never imports gRPC or a database driver
    (`Entry` names the worker's functions, imported only in the worker processes),
    as gRPC must not be initialised in a process before it forks.

    First, once: the host and port, then the database (see `startup`). A problem
    there is logged as one line and ends the start with its own exit code, before
    any worker would fail on it.
    """
    try:
        check_address(config.host, config.port)
        if config.insecure_port:  # plaintext beside TLS: its port must be free too
            check_address(config.host, config.insecure_port, "--insecure-port")
        check_database(config)
    except StartupError as exc:
        exc.log(_logger)
        return exc.exit_code
    raise_open_file_limit()
    supervisor = Supervisor(
        Entry("shardproxy.worker", "serve", (config,)),
        workers=config.workers,
        host=config.host,
        port=config.port,
        drain_timeout=config.drain_timeout,
        prepare=Entry("shardproxy.worker", "prepare", (config,)),
        standbys=config.standbys,
        heartbeat_timeout=config.watchdog_timeout or None,
        admin_host=config.admin_host,
        admin_port=config.admin_port,
        handover_timeout=handover_timeout(config),
    )
    return supervisor.run()


def raise_open_file_limit() -> None:
    """Lifts the soft limit on open files to the hard one (workers inherit it).

    Every idle client connection is a file; at a common soft limit of 1024 a
    worker stops accepting connections, and opening database connections, at
    about a thousand clients.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard and (hard == resource.RLIM_INFINITY or soft < hard):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as exc:
            _logger.warning("cannot raise the open-file limit above %d: %s", soft, exc)
    _logger.info("open-file limit %s", "unlimited" if soft == resource.RLIM_INFINITY else soft)
