"""Run a shardproxy instance: one worker in this process, or a supervisor and N workers."""

from __future__ import annotations

import functools
import logging
import resource
import sys
from typing import TYPE_CHECKING

from shardproxy.config import Config

if TYPE_CHECKING:
    from shardproxy.store import Store
    from shardproxy.supervisor import WorkerSpec

_logger = logging.getLogger(__name__)


LOG_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"


def run(config: Config) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
    raise_open_file_limit()
    if config.workers == 1:
        # One worker needs no routing and no supervisor: serve right here.
        from shardproxy.supervisor import ensure_port_free
        from shardproxy.worker import Worker

        port = ensure_port_free(config.host, config.port)
        Worker(config.replace(port=port)).run_until_signalled()
        return 0
    # The supervisor never imports grpc: workers are spawned fresh and start gRPC
    # themselves, as gRPC must not be initialised in a process before it forks.
    from shardproxy.supervisor import Supervisor

    supervisor = Supervisor(
        functools.partial(_run_worker, config),
        workers=config.workers,
        host=config.host,
        port=config.port,
        drain_timeout=config.drain_timeout,
        prepare=functools.partial(_prepare_worker, config),
        standbys=config.standbys,
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


def _prepare_worker(config: Config) -> Store:
    """Runs first in each spawned process (a standby's wait comes after it)."""
    # A spawned process starts without the parent's logging set-up.
    logging.basicConfig(level=config.log_level.upper(), format=LOG_FORMAT, stream=sys.stderr)
    # Only here, in the spawned process, are grpc and the worker imported.
    from shardproxy.worker import open_store

    return open_store(config)


def _run_worker(config: Config, spec: WorkerSpec) -> None:
    """The worker for `spec`'s shard, on the store `_prepare_worker` opened."""
    from shardproxy.worker import run_worker

    run_worker(config, spec)
