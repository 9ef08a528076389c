"""Initial schema: agent runs, step runs, step results, memory, the action ledger.

Revision ID: 0001
Revises:
Create Date: 2026-11-25

Mirrors `agents/store/tables.py` exactly (index names included), so `alembic check` against the
models reports no difference. Runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create every table of `agents.store.tables` with its indexes and constraints."""
    op.create_table(
        "agent_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("inputs_digest", sa.String(length=64), nullable=False),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("finished_at", _utc(), nullable=True),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_agent_run_tenant", "agent_run", ["tenant"])
    op.create_index("ix_agent_run_subject", "agent_run", ["subject"])
    op.create_index("ix_agent_run_flow_run_id", "agent_run", ["flow_run_id"])
    op.create_index(
        "ix_agent_run_tenant_agent_started", "agent_run", ["tenant", "agent", "started_at"]
    )

    op.create_table(
        "step_run",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("agent_run_id", sa.String(length=32), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("layer", sa.String(length=20), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("cache_hit", sa.Boolean(), nullable=False),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("model_ms", sa.Float(), nullable=True),
        sa.Column("task_run_id", sa.String(length=36), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_step_run_tenant", "step_run", ["tenant"])
    op.create_index("ix_step_run_agent_run_id", "step_run", ["agent_run_id"])

    op.create_table(
        "step_result",
        sa.Column("key", sa.String(length=512), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=True),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_step_result_tenant", "step_result", ["tenant"])
    op.create_index("ix_step_result_created_at", "step_result", ["created_at"])

    op.create_table(
        "memory_item",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("key", sa.String(length=500), nullable=False),
        # JSON `null` (not SQL NULL) when the value is None: the column is NOT NULL.
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "agent", "subject", "key", name="uq_memory_item_scope_key"),
    )
    op.create_index("ix_memory_item_tenant", "memory_item", ["tenant"])

    op.create_table(
        "action_record",
        sa.Column("idempotency_key", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=False),
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=20), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=False),
        sa.Column("agent_run_id", sa.String(length=32), nullable=True),
        sa.Column("started_at", _utc(), nullable=False),
        sa.Column("completed_at", _utc(), nullable=True),
        sa.PrimaryKeyConstraint("idempotency_key"),
    )
    op.create_index("ix_action_record_tenant", "action_record", ["tenant"])


def downgrade() -> None:
    """Drop every table (and with it every index)."""
    for table in ("action_record", "memory_item", "step_result", "step_run", "agent_run"):
        op.drop_table(table)
