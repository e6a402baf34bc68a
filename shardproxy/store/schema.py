"""Optuna 5's relational schema, table for table, in SQLAlchemy Core.

These definitions mirror `optuna/storages/_rdb/models.py` (column order, types,
enum names, indexes, unique constraints, foreign keys) so that `create_all` on an
empty database emits the same DDL as Optuna's own `RDBStorage` does, and so that
the rest of the store can build statements without loading Optuna's ORM classes.
`tests/store/test_schema.py` holds the two definitions against each other.
"""

from __future__ import annotations

from sqlalchemy import (
    CheckConstraint,
    Column,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# Optuna stopped bumping this when alembic took over; RDBStorage still writes it.
SCHEMA_VERSION = 12
# The alembic revisions of optuna/storages/_rdb/alembic/versions, oldest first.
KNOWN_REVISIONS = (
    "v0.9.0.a",
    "v1.2.0.a",
    "v1.3.0.a",
    "v2.4.0.a",
    "v2.6.0.a",
    "v3.0.0.a",
    "v3.0.0.b",
    "v3.0.0.c",
    "v3.0.0.d",
    "v3.2.0.a",
)
HEAD_REVISION = KNOWN_REVISIONS[-1]

MAX_INDEXED_STRING_LENGTH = 512
MAX_VERSION_LENGTH = 256
FLOAT_PRECISION = 53

# Enum member names in the order of Optuna's Python enums; the type names are what
# SQLAlchemy derives from those classes (PostgreSQL creates them as named types).
STUDY_DIRECTION_NAMES = ("NOT_SET", "MINIMIZE", "MAXIMIZE")
TRIAL_STATE_NAMES = ("RUNNING", "COMPLETE", "PRUNED", "FAIL", "WAITING")
VALUE_TYPE_NAMES = ("FINITE", "INF_POS", "INF_NEG")
INTERMEDIATE_VALUE_TYPE_NAMES = ("FINITE", "INF_POS", "INF_NEG", "NAN")

metadata = MetaData()


def _attribute_table(name: str, owner: str) -> Table:
    """Optuna's four key/value attribute tables share one shape."""
    kind = name[: -len("s")]  # study_user_attributes -> study_user_attribute
    owner_table = "studies" if owner == "study_id" else "trials"
    return Table(
        name,
        metadata,
        Column(f"{kind}_id", Integer, primary_key=True),
        Column(owner, Integer, ForeignKey(f"{owner_table}.{owner}")),
        Column("key", String(MAX_INDEXED_STRING_LENGTH)),
        Column("value_json", Text()),
        UniqueConstraint(owner, "key"),
    )


studies = Table(
    "studies",
    metadata,
    Column("study_id", Integer, primary_key=True),
    Column(
        "study_name",
        String(MAX_INDEXED_STRING_LENGTH),
        index=True,
        unique=True,
        nullable=False,
    ),
)

study_directions = Table(
    "study_directions",
    metadata,
    Column("study_direction_id", Integer, primary_key=True),
    Column("direction", Enum(*STUDY_DIRECTION_NAMES, name="studydirection"), nullable=False),
    Column("study_id", Integer, ForeignKey("studies.study_id"), nullable=False),
    Column("objective", Integer, nullable=False),
    UniqueConstraint("study_id", "objective"),
)

study_user_attributes = _attribute_table("study_user_attributes", "study_id")
study_system_attributes = _attribute_table("study_system_attributes", "study_id")

trials = Table(
    "trials",
    metadata,
    Column("trial_id", Integer, primary_key=True),
    # Optuna keeps `number` without a unique constraint on purpose; it is assigned
    # under the study-row lock.
    Column("number", Integer),
    Column("study_id", Integer, ForeignKey("studies.study_id"), index=True),
    Column("state", Enum(*TRIAL_STATE_NAMES, name="trialstate"), nullable=False),
    # Naive UTC, as RDBStorage stores them.
    Column("datetime_start", DateTime),
    Column("datetime_complete", DateTime),
)

trial_user_attributes = _attribute_table("trial_user_attributes", "trial_id")
trial_system_attributes = _attribute_table("trial_system_attributes", "trial_id")

trial_params = Table(
    "trial_params",
    metadata,
    Column("param_id", Integer, primary_key=True),
    Column("trial_id", Integer, ForeignKey("trials.trial_id")),
    Column("param_name", String(MAX_INDEXED_STRING_LENGTH)),
    Column("param_value", Float(precision=FLOAT_PRECISION)),
    Column("distribution_json", Text()),
    UniqueConstraint("trial_id", "param_name"),
)

trial_values = Table(
    "trial_values",
    metadata,
    Column("trial_value_id", Integer, primary_key=True),
    Column("trial_id", Integer, ForeignKey("trials.trial_id"), nullable=False),
    Column("objective", Integer, nullable=False),
    Column("value", Float(precision=FLOAT_PRECISION), nullable=True),
    Column("value_type", Enum(*VALUE_TYPE_NAMES, name="trialvaluetype"), nullable=False),
    UniqueConstraint("trial_id", "objective"),
)

trial_intermediate_values = Table(
    "trial_intermediate_values",
    metadata,
    Column("trial_intermediate_value_id", Integer, primary_key=True),
    Column("trial_id", Integer, ForeignKey("trials.trial_id"), nullable=False),
    Column("step", Integer, nullable=False),
    Column("intermediate_value", Float(precision=FLOAT_PRECISION), nullable=True),
    Column(
        "intermediate_value_type",
        Enum(*INTERMEDIATE_VALUE_TYPE_NAMES, name="trialintermediatevaluetype"),
        nullable=False,
    ),
    UniqueConstraint("trial_id", "step"),
)

trial_heartbeats = Table(
    "trial_heartbeats",
    metadata,
    Column("trial_heartbeat_id", Integer, primary_key=True),
    Column("trial_id", Integer, ForeignKey("trials.trial_id"), nullable=False),
    Column("heartbeat", DateTime, nullable=False),
    UniqueConstraint("trial_id"),
)

version_info = Table(
    "version_info",
    metadata,
    Column("version_info_id", Integer, primary_key=True, autoincrement=False),
    Column("schema_version", Integer),
    Column("library_version", String(MAX_VERSION_LENGTH)),
    CheckConstraint("version_info_id=1"),
)

# Alembic's own bookkeeping table, as `alembic stamp` creates it; kept apart so that
# it is created after Optuna's tables, as RDBStorage does.
alembic_metadata = MetaData()
alembic_version = Table(
    "alembic_version",
    alembic_metadata,
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name="alembic_version_pkc"),
)

OPTUNA_TABLE_NAMES = frozenset(metadata.tables)

# Child tables of a trial, deleted before the trial (Optuna cascades in its ORM, not
# in the database).
TRIAL_CHILD_TABLES = (
    trial_user_attributes,
    trial_system_attributes,
    trial_params,
    trial_values,
    trial_intermediate_values,
    trial_heartbeats,
)
STUDY_CHILD_TABLES = (study_directions, study_user_attributes, study_system_attributes)
