"""Action leases (two live executions of one run never both act) and memory write tokens.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-25

`action_record.lease_owner` / `lease_expires_at`: the execution holding a `started` claim, and
until when; an unexpired lease held by another owner is a conflict, an expired one is taken
over (the holder crashed). `memory_item.writer`: a token per write, so a write retried after a
lost connection can tell whether its first attempt committed. Mirrors `agents/store/tables.py`;
runs on SQLite and PostgreSQL alike (rows from before have no lease: they count as expired).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add the lease columns to `action_record` and `writer` to `memory_item`."""
    with op.batch_alter_table("action_record") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("memory_item") as batch:
        batch.add_column(sa.Column("writer", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop the three columns."""
    with op.batch_alter_table("memory_item") as batch:
        batch.drop_column("writer")
    with op.batch_alter_table("action_record") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
