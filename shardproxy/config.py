"""All settings of a shardproxy instance, in one dataclass.

The CLI fills it from flags, each of which falls back to a `SHARDPROXY_<NAME>`
environment variable and then to the default here. Nothing deeper in the package
reads the environment.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

DEFAULT_STORAGE_URL = "sqlite:///shardproxy.db"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
LOG_FORMATS = ("text", "json")
# gRPC takes a message size limit as a C int.
MAX_REQUEST_BYTES = (1 << 31) - 1


def machine_memory() -> int:
    """Bytes of memory this process may use: the machine's, or its cgroup's limit if lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max") as limit:  # cgroup v2; "max": none
            text = limit.read().strip()
        if text.isdigit():
            total = min(total, int(text))
    except OSError:
        pass  # no cgroup v2 limit to read
    return total


def usable_cores() -> int:
    """Cores this process may run on (honours taskset/cgroup affinity)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class Config:
    storage_url: str = DEFAULT_STORAGE_URL
    host: str = "localhost"
    port: int = 13000
    workers: int = field(default_factory=usable_cores)
    # gRPC handler threads per worker. A write holds its thread until the group
    # commit it joined has committed, so this bounds the writes in flight.
    threads: int = 64
    db_pool_size: int = 16
    max_batch: int = 256
    # Seconds a group commit, or a study's sync, waits for more requests to join it
    # when the previous one had company; a lone client never waits. With a few
    # clients per study this turns one statement per request into one per window.
    commit_window: float = 0.005
    sync_window: float = 0.005
    # How long a transient database error (restart, failover, deadlock) is retried
    # inside the proxy before the client sees UNAVAILABLE.
    retry_deadline: float = 60.0
    # Cached trials per worker, summed over its studies, and the cache's bytes for the
    # whole instance, split evenly over the workers (0: a quarter of the machine's
    # memory); whole least-recently-used studies are evicted beyond either.
    cache_max_trials: int = 2_000_000
    cache_memory: int = 0
    # Seconds a stopping worker answers, and reports NOT_SERVING to health checks,
    # before it closes its port: load balancers stop sending first. Counted within
    # drain_timeout.
    drain_delay: float = 1.0
    drain_timeout: float = 30.0
    # Each worker checks its database every db_check_interval seconds; after
    # db_down_after seconds without an answer it reports NOT_SERVING.
    db_check_interval: float = 1.0
    db_down_after: float = 3.0
    # Connections. The server pings a connection idle for keepalive_time seconds
    # (0: never) and drops it when no answer comes within keepalive_timeout: a dead
    # client's connection does not linger. Clients may ping as often as every
    # min_ping_interval seconds, with or without calls in flight.
    keepalive_time: float = 60.0
    keepalive_timeout: float = 20.0
    min_ping_interval: float = 10.0
    # A connection older than this (0: no limit) is asked to go away (GOAWAY; the
    # client reconnects), so that connections spread over all workers again after a
    # worker restarts; calls in flight get max_connection_age_grace to finish.
    max_connection_age: float = 300.0
    # Above retry_deadline: a call waiting out a database restart must not be cut.
    max_connection_age_grace: float = 90.0
    # The largest request accepted (larger ones get RESOURCE_EXHAUSTED); replies are
    # not limited.
    max_request_bytes: int = 64 << 20
    # Booted, idle worker processes that replace a crashed worker at once; without
    # one a replacement first spends most of a second importing.
    standbys: int = 1
    # The supervisor's admin endpoint (/healthz, /readyz, /metrics): its port, 0 for
    # none (and then no metrics are collected), and the address it binds.
    admin_port: int = 0
    admin_host: str = "127.0.0.1"
    # A worker whose request handlers began no call and answered no watchdog beat
    # for this many seconds is killed and replaced (0: no watchdog).
    watchdog_timeout: float = 30.0
    # TLS on the proxy's port (both files, PEM), and mutual TLS when a client CA is
    # given; insecure_port (0: none) serves plaintext too, beside TLS (see `tls`).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    insecure_port: int = 0
    # Tests only, from SHARDPROXY_TEST_FAULT_HOOKS=1 (never a flag): SIGUSR2 blocks
    # every request handler thread of a worker, a stuck pool for the watchdog.
    fault_hooks: bool = False
    # The operator's word that every proxy's writes reach one node of a multi-primary
    # cluster (a single writer endpoint): lifts the refusal of MySQL Group
    # Replication in multi-primary mode (Galera needs no such word).
    single_writer: bool = False
    log_level: str = "INFO"
    log_format: str = "text"

    def __post_init__(self) -> None:
        """Refuses settings no proxy could run with, naming the setting."""
        at_least = {
            "workers": 1, "threads": 1, "db_pool_size": 1, "max_batch": 1,
            "port": 0, "standbys": 0, "cache_max_trials": 0, "cache_memory": 0,
            "commit_window": 0.0,
            "sync_window": 0.0, "retry_deadline": 0.0, "drain_timeout": 0.0,
            "admin_port": 0, "watchdog_timeout": 0.0,
            "drain_delay": 0.0, "db_check_interval": 0.01, "db_down_after": 0.0,
            "keepalive_time": 0.0, "keepalive_timeout": 0.001, "min_ping_interval": 0.0,
            "max_connection_age": 0.0, "max_connection_age_grace": 0.0,
            "max_request_bytes": 1024, "insecure_port": 0,
        }  # fmt: skip
        for name, least in at_least.items():
            value = getattr(self, name)
            if not value >= least:  # also refuses NaN
                raise ValueError(f"{name.replace('_', '-')} must be at least {least}, got {value}")
        if self.port > 65535:
            raise ValueError(f"port must be at most 65535, got {self.port}")
        if self.admin_port > 65535:
            raise ValueError(f"admin-port must be at most 65535, got {self.admin_port}")
        if self.max_request_bytes > MAX_REQUEST_BYTES:
            raise ValueError(
                f"max-request-bytes must be at most {MAX_REQUEST_BYTES}, "
                f"got {self.max_request_bytes}"
            )
        self._check_tls()
        if self.log_level.upper() not in LOG_LEVELS:
            raise ValueError(
                f"log-level must be one of {', '.join(LOG_LEVELS)}, got {self.log_level!r}"
            )
        if self.log_format not in LOG_FORMATS:
            raise ValueError(
                f"log-format must be one of {', '.join(LOG_FORMATS)}, got {self.log_format!r}"
            )

    @property
    def cache_bytes_per_worker(self) -> int:
        total = self.cache_memory or machine_memory() // 4
        return total // self.workers

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def _check_tls(self) -> None:
        from shardproxy.tls import check_readable

        if bool(self.tls_cert) != bool(self.tls_key):
            raise ValueError("tls-cert and tls-key go together")
        if self.tls_client_ca and not self.tls_cert:
            raise ValueError("tls-client-ca needs tls-cert and tls-key")
        if self.insecure_port and not self.tls_cert:
            raise ValueError("insecure-port serves plaintext beside TLS: it needs tls-cert")
        if self.insecure_port > 65535:
            raise ValueError(f"insecure-port must be at most 65535, got {self.insecure_port}")
        if self.insecure_port and self.insecure_port == self.port:
            raise ValueError("insecure-port must differ from port")
        for setting in ("tls_cert", "tls_key", "tls_client_ca"):
            if getattr(self, setting):
                check_readable(setting.replace("_", "-"), getattr(self, setting))

    def replace(self, **changes: object) -> Config:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]
