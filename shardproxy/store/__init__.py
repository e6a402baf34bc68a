"""The store: the only code that speaks SQL, on Optuna's own schema.

`Store` is the API the server calls; `bootstrap` creates or checks the schema,
`batch` and `committer` implement the group commit, `reads` the queries.
"""

from __future__ import annotations

from shardproxy.store.bootstrap import SchemaError
from shardproxy.store.store import Store

__all__ = ["SchemaError", "Store"]
