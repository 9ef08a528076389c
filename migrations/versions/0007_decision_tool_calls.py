"""Tool-using reasoning: `decision_record.tool_calls`, the trace of a decision's tool loop.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06

Each call the model made before it answered: turn, tool, arguments, the redacted and capped
result it read, status and latency. Mirrors `agents/store/tables.py`; runs on SQLite and
PostgreSQL alike (rows from before have none).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `decision_record.tool_calls`."""
    with op.batch_alter_table("decision_record") as batch:
        batch.add_column(sa.Column("tool_calls", sa.JSON(), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("decision_record") as batch:
        batch.drop_column("tool_calls")
