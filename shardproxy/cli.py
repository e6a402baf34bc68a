"""`shardproxy serve | check | demo | --version`.

Every `serve` flag falls back to a `SHARDPROXY_<FLAG>` environment variable (for
`--db-pool-size`: `SHARDPROXY_DB_POOL_SIZE`), then to the default shown in --help.
`check` reads `SHARDPROXY_HOST` and `SHARDPROXY_PORT` too, so that a probe beside
`serve` asks the instance that the same environment configured.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

from shardproxy import __version__
from shardproxy.config import DEFAULT_STORAGE_URL, LOG_FORMATS, Config, usable_cores
from shardproxy.startup import EXIT_CODES


def byte_size(text: str) -> int:
    """`67108864`, `64MiB`, `64M` or `64m` (powers of 1024: K, M, G, with or without iB)."""
    number = text.strip().upper().removesuffix("B").removesuffix("I")
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(number[-1:], 1)
    if scale > 1:
        number = number[:-1]
    try:
        return int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a size in bytes: {text!r}") from None


def switch(text: str) -> bool:
    """An on/off setting from the environment: 1, true, yes, on, or 0, false, no, off, ''."""
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"not on or off: {text!r}")


_SERVE_FLAGS: list[tuple[str, Callable[[str], Any], str]] = [
    ("storage", str, "database URL in SQLAlchemy form, e.g. mysql+pymysql://user:pass@host/db, "
     "postgresql+psycopg2://user@host/db (mysql+mysqldb:// takes the C driver mysqlclient, "
     "cheaper on CPU, if installed); default: an SQLite file in the working directory"),
    ("host", str, "address to listen on: an IPv4 or IPv6 address (0.0.0.0 or :: for all, "
     "[::] too) or a host name"),
    ("port", int, "port to listen on (0: pick a free one)"),
    ("workers", int, "worker processes sharing the port, each owning a shard of the studies"),
    ("threads", int, "gRPC handler threads per worker (bounds the RPCs in flight per worker)"),
    ("db-pool-size", int, "database connections per worker for reads, and as many for "
     "writes; statements past them wait for one"),
    ("max-batch", int, "most write operations committed in one group transaction"),
    ("commit-window", float, "seconds a group commit waits for more writes when the last "
     "one had company (0: never)"),
    ("sync-window", float, "seconds a busy study's cache sync waits for more reads to join "
     "(0: never)"),
    ("retry-deadline", float, "seconds a transient database error is retried before failing"),
    ("cache-max-trials", int, "trials cached per worker before whole studies are evicted"),
    ("cache-memory", byte_size, "bytes of trial cache for the whole instance (4G, 512MiB, "
     "...), split evenly over the workers; beyond it whole least-recently-used studies are "
     "evicted; full reads' replies take room in it while they are sent (0: a quarter of the "
     "machine's memory, or of its cgroup's limit)"),
    ("drain-timeout", float, "seconds in-flight RPCs may take to finish on SIGTERM"),
    ("drain-delay", float, "seconds a stopping worker keeps serving while health checks say "
     "NOT_SERVING, before it closes its port (within --drain-timeout)"),
    ("db-check-interval", float, "seconds between a worker's checks that its database answers"),
    ("db-down-after", float, "seconds without an answer from the database after which a "
     "worker's health is NOT_SERVING (it returns to SERVING on its own)"),
    ("keepalive-time", float, "seconds a connection may stay silent before the server pings "
     "it (0: never)"),
    ("keepalive-timeout", float, "seconds to wait for a ping's answer before the server "
     "closes the connection"),
    ("min-ping-interval", float, "least seconds between a client's keepalive pings that the "
     "server accepts (more often: the connection is closed)"),
    ("max-connection-age", float, "seconds after which a client's connection is asked to go "
     "away and the client reconnects, spreading connections over the workers again "
     "(0: no limit)"),
    ("max-connection-age-grace", float, "seconds calls in flight on an aged connection may "
     "take to finish"),
    ("max-request-bytes", byte_size, "largest request accepted, in bytes (64MiB, 1G, ...); a "
     "larger one gets RESOURCE_EXHAUSTED; replies are not limited"),
    ("admin-port", int, "port of the supervisor's HTTP admin endpoint: /healthz, /readyz, "
     "/metrics (Prometheus) (0: none, and no metrics are collected)"),
    ("admin-host", str, "address the admin endpoint binds"),
    ("watchdog-timeout", float, "seconds a worker's request handlers may begin no call and "
     "answer no watchdog beat before the worker is killed and replaced (0: no watchdog)"),
    ("standbys", int, "idle processes kept booted to replace a crashed worker at once "
     "(0: none; each costs the memory of an idle worker)"),
    ("tls-cert", str, "PEM certificate chain: serve TLS on --port (with --tls-key; '' for "
     "plaintext)"),
    ("tls-key", str, "PEM private key of --tls-cert"),
    ("tls-client-ca", str, "PEM CA certificates: mutual TLS, only clients with a certificate "
     "they signed are served"),
    ("insecure-port", int, "also serve plaintext on this port, beside TLS, for Optuna's "
     "unmodified client (0: none)"),
    ("single-writer", switch, "assert that every proxy's writes reach one node of a "
     "multi-primary cluster (a single writer endpoint of a router or balancer): without it "
     "shardproxy refuses MySQL Group Replication in multi-primary mode, where trial numbers "
     "could repeat (Galera is served either way)"),
    ("log-level", str, "DEBUG, INFO, WARNING or ERROR (DEBUG: an access line per RPC, and "
     "the traceback behind a start-up error)"),
    ("log-format", str, f"{' or '.join(LOG_FORMATS)} (json: one object per line)"),
]
_FIELD_OF_FLAG = {"storage": "storage_url"}


def _env_name(flag: str) -> str:
    return "SHARDPROXY_" + flag.upper().replace("-", "_")


def _add_serve_flags(parser: argparse.ArgumentParser, defaults: Config) -> None:
    for flag, kind, text in _SERVE_FLAGS:
        field = _FIELD_OF_FLAG.get(flag, flag.replace("-", "_"))
        env = _env_name(flag)
        default = kind(os.environ[env]) if env in os.environ else getattr(defaults, field)
        if kind is switch:  # --flag / --no-flag
            parser.add_argument(f"--{flag}", dest=field, action=argparse.BooleanOptionalAction,
                                default=default, help=f"{text} [env {env}=1]")
            continue
        parser.add_argument(
            f"--{flag}",
            dest=field,
            type=kind,
            default=default,
            help=f"{text} [env {env}; default: %(default)s]",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shardproxy",
        description="A multi-core gRPC storage proxy for distributed Optuna. Workers use "
        "the unmodified optuna.storages.GrpcStorageProxy client; the database keeps "
        "Optuna's own schema.",
    )
    parser.add_argument("--version", action="store_true", help="print version and codec")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="serve Optuna's gRPC storage API for a database",
        description="Serve Optuna's gRPC storage API for a database until SIGTERM/SIGINT, "
        "which drain in-flight requests before exiting.",
        epilog="exit codes:\n" + "\n".join(
            textwrap.fill(text, 79, initial_indent=f"  {code}  ", subsequent_indent="     ")
            for code, text in EXIT_CODES.items()
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_serve_flags(serve, Config(workers=usable_cores()))

    check = commands.add_parser(
        "check",
        help="ask a running instance's gRPC health service; exit 0 if it serves",
        description="Call grpc.health.v1.Health/Check on a running instance, print one line, "
        "and exit 0 when it answers SERVING, 1 otherwise (NOT_SERVING, unreachable, no "
        "answer in time): a probe for containers, systemd and load balancers.",
    )
    check.add_argument("--host", default=os.environ.get(_env_name("host"), "localhost"),
                       help="the instance's address; 0.0.0.0 and :: mean this machine "
                       "[env SHARDPROXY_HOST; default: %(default)s]")
    check.add_argument("--port", type=int, default=int(os.environ.get(_env_name("port"), 13000)),
                       help="its port [env SHARDPROXY_PORT; default: %(default)s]")
    check.add_argument("--timeout", type=float, default=5.0,
                       help="seconds to wait for the answer [default: %(default)s]")
    check.add_argument("--tls-ca", default="", metavar="FILE",
                       help="ask over TLS, trusting these PEM CA certificates (a server "
                       "started with --tls-cert) [default: plaintext]")
    check.add_argument("--tls-client-cert", default="", metavar="FILE",
                       help="with --tls-ca: this PEM client certificate, for a server "
                       "started with --tls-client-ca")
    check.add_argument("--tls-client-key", default="", metavar="FILE",
                       help="the private key of --tls-client-cert")
    check.add_argument("--service", default="",
                       help="the service to ask about: '' for the whole worker, or "
                       "optuna.StorageService [default: '']")

    demo = commands.add_parser(
        "demo",
        help="run a proxy on an embedded database and Optuna workers through it",
        description="Start shardproxy on an SQLite file, run Optuna worker processes "
        "through it with RandomSampler, and print trials/s and the best trial.",
    )
    demo.add_argument("--storage", default=DEFAULT_STORAGE_URL.replace(".db", "-demo.db"),
                      help="database URL [default: %(default)s]")
    demo.add_argument("--clients", type=int, default=4,
                      help="Optuna worker processes [default: %(default)s]")
    demo.add_argument("--trials", type=int, default=200,
                      help="trials in all [default: %(default)s]")
    demo.add_argument("--workers", type=int, default=usable_cores(),
                      help="proxy worker processes [default: %(default)s]")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from shardproxy import codec

        print(f"shardproxy {__version__}, codec {codec.describe()}")
        return 0
    if args.command is None:
        parser.print_help()
        return 2
    if args.command == "check":
        from shardproxy.health import check_health
        from shardproxy.tls import channel_credentials

        credentials = None
        if args.tls_ca:
            credentials = channel_credentials(
                args.tls_ca, args.tls_client_cert, args.tls_client_key
            )
        serving, line = check_health(args.host, args.port, args.timeout, args.service,
                                     credentials)
        print(line)
        return 0 if serving else 1
    if args.command == "demo":
        from shardproxy.demo import run_demo

        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        return run_demo(args.storage, clients=args.clients, trials=args.trials,
                        workers=args.workers)

    options = {k: v for k, v in vars(args).items() if k not in ("command", "version")}
    # Not a flag: a fault for tests to inject (see Config.fault_hooks).
    options["fault_hooks"] = os.environ.get("SHARDPROXY_TEST_FAULT_HOOKS", "") == "1"
    try:
        config = Config(**options)
    except ValueError as exc:
        parser.error(f"serve: {exc}")  # exits with status 2
    from shardproxy.logs import configure_logging
    from shardproxy.server import run

    configure_logging(config.log_level, config.log_format)

    try:
        return run(config)
    except OSError as exc:
        print(f"shardproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C during the start-up checks
        return 130
