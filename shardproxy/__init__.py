"""shardproxy: a multi-core gRPC storage proxy for distributed Optuna.

Workers keep using the unmodified `optuna.storages.GrpcStorageProxy`; shardproxy
serves them from one relational database in Optuna's own schema.
"""

from __future__ import annotations

__version__ = "0.1.0"


def serve(
    storage_url: str,
    *,
    host: str = "localhost",
    port: int = 13000,
    workers: int | None = None,
    **options: object,
) -> None:
    """Serve Optuna's gRPC storage API for `storage_url` until SIGTERM or SIGINT.

    The counterpart of `optuna.storages.run_grpc_proxy_server`, taking a database
    URL instead of a storage object. `workers` defaults to the usable cores;
    `options` are any other fields of `shardproxy.config.Config`.
    """
    from shardproxy.config import Config, usable_cores
    from shardproxy.server import run

    config = Config(
        storage_url=storage_url,
        host=host,
        port=port,
        workers=workers or usable_cores(),
        **options,  # type: ignore[arg-type]
    )
    code = run(config)
    if code:
        raise SystemExit(code)
