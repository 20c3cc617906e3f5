"""key_versions: one row per version of a tenant's key.

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from tenantkeys.keys.schema import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "key_versions",
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
        sa.CheckConstraint(
            "status IN ('active', 'retired', 'revoked')", name="ck_key_versions_status"
        ),
        sa.CheckConstraint("purpose IN ('signing', 'encryption')", name="ck_key_versions_purpose"),
        sa.CheckConstraint("version >= 1", name="ck_key_versions_version"),
    )
    op.create_index(
        "uq_key_versions_one_active",
        "key_versions",
        ["tenant_id", "purpose"],
        unique=True,
        sqlite_where=sa.text("status = 'active'"),
        postgresql_where=sa.text("status = 'active'"),
    )
    op.create_index("ix_key_versions_due", "key_versions", ["status", "rotate_after"])


def downgrade() -> None:
    op.drop_index("ix_key_versions_due", table_name="key_versions")
    op.drop_index("uq_key_versions_one_active", table_name="key_versions")
    op.drop_table("key_versions")
