"""Feedback on decisions, calibrated thresholds, few-shot example use.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25

Mirrors the `Feedback`, `ThresholdChange` and `ExampleUse` classes of `agents/store/tables.py`.
Runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `feedback`, `threshold_change` and `example_use`."""
    op.create_table(
        "feedback",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("decision_id", sa.String(length=32), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("correct", sa.Boolean(), nullable=True),
        sa.Column("label", sa.JSON(), nullable=True),
        sa.Column("score", sa.Float(), nullable=True),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("given_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_feedback_tenant", "feedback", ["tenant"])
    op.create_index("ix_feedback_decision_id", "feedback", ["decision_id"])
    op.create_index(
        "ix_feedback_tenant_agent_step", "feedback", ["tenant", "agent", "step", "created_at"]
    )

    op.create_table(
        "threshold_change",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("old", sa.Float(), nullable=True),
        sa.Column("new", sa.Float(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=True),
        sa.Column("changed_by", sa.String(length=200), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint(
            "tenant", "agent", "step", "version", name="uq_threshold_change_version"
        ),
    )
    op.create_index("ix_threshold_change_tenant", "threshold_change", ["tenant"])

    op.create_table(
        "example_use",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("agent_run_id", sa.String(length=32), nullable=True),
        sa.Column("run_key", sa.String(length=200), nullable=True),
        sa.Column("example_ids", sa.JSON(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_example_use_tenant", "example_use", ["tenant"])
    op.create_index("ix_example_use_agent_run_id", "example_use", ["agent_run_id"])


def downgrade() -> None:
    """Drop the three tables."""
    for table in ("example_use", "threshold_change", "feedback"):
        op.drop_table(table)
