"""The key registry's tables (SQLAlchemy Core). Alembic migrations create them."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

metadata = sa.MetaData()


class UtcDateTime(sa.types.TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores naive ones)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the key store")
        aware: datetime = value.astimezone(UTC)
        # SQLite keeps naive datetimes: store UTC without tzinfo and restore it on read.
        return aware if dialect.name != "sqlite" else aware.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        stored: datetime = value
        return stored.replace(tzinfo=UTC) if stored.tzinfo is None else stored.astimezone(UTC)


key_versions = sa.Table(
    "key_versions",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(64), nullable=False),
    sa.Column("purpose", sa.String(16), nullable=False),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("kid", sa.String(128), nullable=False),
    sa.Column("algorithm", sa.String(16), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("public_key", sa.LargeBinary, nullable=True),
    sa.Column("wrapped_secret", sa.LargeBinary, nullable=True),
    sa.Column("wrapped_data_key", sa.LargeBinary, nullable=True),
    sa.Column("provider", sa.String(16), nullable=False),
    sa.Column("provider_key_id", sa.String(512), nullable=False),
    sa.Column("created_at", UtcDateTime, nullable=False),
    sa.Column("rotate_after", UtcDateTime, nullable=False),
    sa.Column("retired_at", UtcDateTime, nullable=True),
    sa.Column("revoked_at", UtcDateTime, nullable=True),
    sa.UniqueConstraint("tenant_id", "purpose", "version", name="uq_key_versions_version"),
    sa.UniqueConstraint("tenant_id", "kid", name="uq_key_versions_kid"),
    sa.CheckConstraint("status IN ('active', 'retired', 'revoked')", name="ck_key_versions_status"),
    sa.CheckConstraint("purpose IN ('signing', 'encryption')", name="ck_key_versions_purpose"),
    sa.CheckConstraint("version >= 1", name="ck_key_versions_version"),
)

# The database, not only the code, allows one active version per (tenant, purpose).
one_active = sa.Index(
    "uq_key_versions_one_active",
    key_versions.c.tenant_id,
    key_versions.c.purpose,
    unique=True,
    sqlite_where=key_versions.c.status == "active",
    postgresql_where=key_versions.c.status == "active",
)
due_index = sa.Index("ix_key_versions_due", key_versions.c.status, key_versions.c.rotate_after)
