"""shardproxy: a multi-core gRPC storage proxy for distributed Optuna.

Workers keep using the unmodified `optuna.storages.GrpcStorageProxy`; shardproxy
serves them from one relational database in Optuna's own schema.
"""

from __future__ import annotations

__version__ = "0.1.0"
