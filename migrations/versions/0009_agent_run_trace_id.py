"""Tracing: `agent_run.trace_id`, the trace (Sentry, OTLP) of a traced run.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06

`stalwart runs` shows it beside the flow run and task run ids, so a run leads to its trace.
Mirrors `agents/store/tables.py`; runs on SQLite and PostgreSQL alike (rows from before, and
untraced runs, have none).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add `agent_run.trace_id`."""
    with op.batch_alter_table("agent_run") as batch:
        batch.add_column(sa.Column("trace_id", sa.String(length=32), nullable=True))


def downgrade() -> None:
    """Drop it."""
    with op.batch_alter_table("agent_run") as batch:
        batch.drop_column("trace_id")
