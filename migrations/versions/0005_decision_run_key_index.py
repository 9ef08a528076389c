"""Index the decision log by run key, for reruns that find the decision of a cached step.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04

A rerun takes a reasoning step's result from the cache and looks up the decision that step
logged (`agents.store.decisions.logged_decision`), by tenant, agent and run key. Mirrors the
index in `agents/store/tables.py`; runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `ix_decision_record_tenant_agent_run_key`."""
    op.create_index(
        "ix_decision_record_tenant_agent_run_key",
        "decision_record",
        ["tenant", "agent", "run_key"],
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_decision_record_tenant_agent_run_key", table_name="decision_record")
