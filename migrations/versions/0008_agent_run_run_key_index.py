"""Index agent runs by run key, for what is asked of a run key rather than of one execution.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06

A run's end marks the dead earlier executions of its run key `crashed`, `recover` asks whether
a dead flow run's inputs have finished since, and `stalwart runs` lists each run key's latest
execution: all by tenant, agent and run key. Mirrors the index in `agents/store/tables.py`;
runs on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Create `ix_agent_run_tenant_agent_run_key`."""
    op.create_index(
        "ix_agent_run_tenant_agent_run_key", "agent_run", ["tenant", "agent", "run_key"]
    )


def downgrade() -> None:
    """Drop it."""
    op.drop_index("ix_agent_run_tenant_agent_run_key", table_name="agent_run")
