"""Decision log, LLM answer cache, circuit-breaker state.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

Mirrors the `DecisionRecord`, `LLMCacheEntry` and `CircuitState` classes of
`agents/store/tables.py`. Runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _utc() -> sa.DateTime:
    return sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create the decision log, the LLM cache and the circuit-breaker table."""
    op.create_table(
        "decision_record",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("agent", sa.String(length=200), nullable=False),
        sa.Column("step", sa.String(length=200), nullable=False),
        sa.Column("agent_run_id", sa.String(length=32), nullable=True),
        sa.Column("flow_run_id", sa.String(length=36), nullable=True),
        sa.Column("subject", sa.String(length=500), nullable=True),
        sa.Column("run_key", sa.String(length=200), nullable=True),
        sa.Column("input_digest", sa.String(length=64), nullable=False),
        sa.Column("input_snapshot", sa.JSON(), nullable=True),
        sa.Column("prompt_digest", sa.String(length=64), nullable=True),
        sa.Column("prompt_version", sa.String(length=100), nullable=True),
        sa.Column("model", sa.String(length=200), nullable=True),
        sa.Column("endpoint", sa.String(length=200), nullable=True),
        sa.Column("raw_output", sa.Text(), nullable=True),
        sa.Column("output", sa.JSON(), nullable=True),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("logprobs", sa.JSON(), nullable=True),
        sa.Column("rationale", sa.Text(), nullable=True),
        sa.Column("path", sa.String(length=20), nullable=False),
        sa.Column("reviewer", sa.String(length=200), nullable=True),
        sa.Column("correction", sa.JSON(), nullable=True),
        sa.Column("tokens_in", sa.Integer(), nullable=False),
        sa.Column("tokens_out", sa.Integer(), nullable=False),
        sa.Column("cost", sa.Float(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("error_class", sa.String(length=200), nullable=True),
        sa.Column("outcome", sa.JSON(), nullable=True),
        sa.Column("outcome_at", _utc(), nullable=True),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_decision_record_tenant", "decision_record", ["tenant"])
    op.create_index("ix_decision_record_agent_run_id", "decision_record", ["agent_run_id"])
    op.create_index("ix_decision_record_confidence", "decision_record", ["confidence"])
    op.create_index("ix_decision_record_path", "decision_record", ["path"])
    op.create_index("ix_decision_record_created_at", "decision_record", ["created_at"])
    op.create_index(
        "ix_decision_record_tenant_agent_created",
        "decision_record",
        ["tenant", "agent", "created_at"],
    )

    op.create_table(
        "llm_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("tenant", sa.String(length=200), nullable=False),
        sa.Column("endpoint", sa.String(length=200), nullable=False),
        sa.Column("model", sa.String(length=200), nullable=False),
        sa.Column("response", sa.JSON(), nullable=True),
        sa.Column("hits", sa.Integer(), nullable=False),
        sa.Column("created_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_llm_cache_tenant", "llm_cache", ["tenant"])
    op.create_index("ix_llm_cache_created_at", "llm_cache", ["created_at"])

    op.create_table(
        "circuit_state",
        sa.Column("endpoint", sa.String(length=300), nullable=False),
        sa.Column("state", sa.String(length=20), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("opened_at", _utc(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", _utc(), nullable=False),
        sa.PrimaryKeyConstraint("endpoint"),
    )


def downgrade() -> None:
    """Drop the three tables."""
    for table in ("circuit_state", "llm_cache", "decision_record"):
        op.drop_table(table)
