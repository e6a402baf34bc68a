"""Run a shardproxy instance: one worker in this process, or a supervisor and N workers."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING

from shardproxy.config import Config

if TYPE_CHECKING:
    from shardproxy.supervisor import WorkerSpec

_logger = logging.getLogger(__name__)


def run(config: Config) -> int:
    """Serves until SIGTERM/SIGINT; returns the process exit code."""
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
    )
    return supervisor.run()


def _run_worker(config: Config, spec: WorkerSpec) -> None:
    """Runs in the spawned worker process: only there are grpc and the worker imported."""
    from shardproxy.worker import run_worker

    run_worker(config, spec)
