"""Durable human review: `review_request`, one row per decision waiting for a person.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06

A run whose reasoning step needs a person ends `awaiting_review` and stores its request here;
the verdict (from Python, the CLI or the Prefect UI form) is written to the same row and the run
continues from it. Mirrors `agents/store/tables.py`; runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create `review_request` and its indexes."""
    op.create_table(
        "review_request",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("run_key", sa.String(length=200), nullable=False),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("agent_run_id", sa.String(length=32), nullable=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("deployment_id", sa.String(length=36), nullable=True),
        sa.Column("review_flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("proposed", sa.JSON(), nullable=True),
        sa.Column("decision_schema", sa.JSON(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("inputs", sa.JSON(), nullable=True),
        sa.Column("run_input", sa.JSON(), nullable=True),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("verdict", sa.String(length=20), nullable=True),
        sa.Column("reviewer", sa.String(length=200), nullable=True),
        sa.Column("correction", sa.JSON(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.Column("deadline_at", _utc(), nullable=False),
        sa.Column("answered_at", _utc(), nullable=True),
        sa.Column("continued_at", _utc(), nullable=True),
        sa.Column("continued_run_id", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("tenant", "agent", "run_key", "step", name="uq_review_request_run"),
    )
    op.create_index("ix_review_request_tenant", "review_request", ["tenant"])
    op.create_index(
        "ix_review_request_tenant_state", "review_request", ["tenant", "state", "created_at"]
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_review_request_tenant_state", table_name="review_request")
    op.drop_index("ix_review_request_tenant", table_name="review_request")
    op.drop_table("review_request")
