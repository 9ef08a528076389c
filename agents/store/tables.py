"""Tables: every row Stalwart stores, one SQLModel class each (schema and table in one).

Every table carries `tenant`: no public query reads across tenants. Every datetime column is a
`UTCDateTime` (aware UTC datetimes in and out). The schema is created and upgraded by Alembic
(`migrations/`), never by `create_all` on PostgreSQL.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from agents._ids import new_hex
from agents.store._convert import UTCDateTime


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_id() -> str:
    return new_hex()


class AgentRun(SQLModel, table=True):
    """One execution of an agent on one input (one element of a batch)."""

    __tablename__ = "agent_run"
    __table_args__ = (
        sa.Index("ix_agent_run_tenant_agent_started", "tenant", "agent", "started_at"),
        sa.Index("ix_agent_run_tenant_agent_run_key", "tenant", "agent", "run_key"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    subject: str | None = Field(default=None, index=True, max_length=500)
    run_key: str = Field(
        max_length=200, description="Stable key: the same input gets the same key."
    )
    status: str = Field(
        max_length=20,
        description="running, completed, held, awaiting_review, failed, conflict, superseded "
        "(a later execution continued past its review) or crashed (it died; a later execution "
        "of the same run key ended, named in `error`)",
    )
    inputs_digest: str = Field(max_length=64)
    flow_run_id: str | None = Field(default=None, max_length=36, index=True)
    trace_id: str | None = Field(
        default=None,
        max_length=32,
        description="The run's trace (Sentry, OTLP) when it was traced; None otherwise.",
    )
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    duration_ms: float | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)


class StepRun(SQLModel, table=True):
    """One step of one agent run: layer, attempts, duration, status, and whether it was cached."""

    __tablename__ = "step_run"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    agent_run_id: str = Field(index=True, max_length=32)
    step: str = Field(max_length=200)
    layer: str = Field(max_length=20)
    status: str = Field(max_length=20, description="completed, cached, skipped, failed")
    attempts: int = 0
    cache_hit: bool = False
    tokens_in: int = Field(default=0, description="Model input tokens of this step's LLM calls.")
    tokens_out: int = Field(default=0, description="Model output tokens of its LLM calls.")
    model_ms: float | None = Field(default=None, description="Time spent waiting for the model.")
    task_run_id: str | None = Field(default=None, max_length=36)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    duration_ms: float | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)


class StepResult(SQLModel, table=True):
    """A persisted Prefect result record, addressed by its storage key (the cache key)."""

    __tablename__ = "step_result"

    key: str = Field(primary_key=True, max_length=512)
    tenant: str | None = Field(default=None, index=True, max_length=200)
    content: bytes = Field(sa_type=sa.LargeBinary)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), index=True)


class MemoryItem(SQLModel, table=True):
    """A remembered value: (tenant, agent, subject, key) → JSON, versioned for optimistic writes."""

    __tablename__ = "memory_item"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "agent", "subject", "key", name="uq_memory_item_scope_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    subject: str = Field(default="", max_length=500, description="'' for agent-wide memory.")
    key: str = Field(max_length=500)
    value: Any = Field(default=None, sa_type=sa.JSON)
    version: int = 1
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    writer: str | None = Field(
        default=None, max_length=32, description="Token of the last write (retry detection)."
    )


class ActionRecord(SQLModel, table=True):
    """The ledger that makes actions run at most once per idempotency key.

    A row is claimed (`started`) in its own transaction before the action runs and completed with
    the action's result before the run goes on. A `started` row carries a lease (owner and
    expiry), renewed while the action runs, so a second live execution cannot act at once.
    """

    __tablename__ = "action_record"

    idempotency_key: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    subject: str = Field(default="", max_length=500)
    run_key: str = Field(max_length=200)
    step: str = Field(max_length=200)
    status: str = Field(max_length=20, description="started, completed")
    attempts: int = 1
    result: Any = Field(default=None, sa_type=sa.JSON)
    agent_run_id: str | None = Field(default=None, max_length=32)
    started_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    completed_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    lease_owner: str | None = Field(
        default=None, max_length=64, description="The execution holding a started claim."
    )
    lease_expires_at: datetime | None = Field(
        default=None,
        sa_type=UTCDateTime(),
        description="Until when the claim is held; past it, another execution may take over.",
    )


class DecisionRecord(SQLModel, table=True):
    """One decision of a reasoning step: inputs, model, output, confidence, path and outcome.

    `path` is how the decision was reached, an `agents.declare.decision.LadderPath` value:
    `direct`, `fallback_model`, `human`, `default`, `held`, `rejected`, or `shadow` for a
    candidate model's decision. The outcome is written later (by a learning step or feedback).
    """

    __tablename__ = "decision_record"
    __table_args__ = (
        sa.Index("ix_decision_record_tenant_agent_created", "tenant", "agent", "created_at"),
        sa.Index("ix_decision_record_tenant_agent_run_key", "tenant", "agent", "run_key"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    step: str = Field(max_length=200)
    agent_run_id: str | None = Field(default=None, index=True, max_length=32)
    flow_run_id: str | None = Field(default=None, max_length=36)
    subject: str | None = Field(default=None, max_length=500)
    run_key: str | None = Field(default=None, max_length=200)
    input_digest: str = Field(max_length=64)
    input_snapshot: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="Redacted inputs."
    )
    prompt_digest: str | None = Field(default=None, max_length=64)
    prompt_version: str | None = Field(default=None, max_length=100)
    model: str | None = Field(default=None, max_length=200)
    endpoint: str | None = Field(default=None, max_length=200, description="Name, never a key.")
    raw_output: str | None = Field(default=None, sa_type=sa.Text)
    output: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    confidence: float | None = Field(default=None, index=True)
    logprobs: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    rationale: str | None = Field(default=None, sa_type=sa.Text)
    path: str = Field(default="direct", max_length=20, index=True)
    reviewer: str | None = Field(default=None, max_length=200)
    correction: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0
    latency_ms: float | None = None
    attempts: int = 1
    error_class: str | None = Field(default=None, max_length=200)
    tool_calls: Any = Field(
        default=None,
        nullable=True,
        sa_type=sa.JSON,
        description="A tool loop's calls: turn, tool, arguments, result (redacted), status.",
    )
    outcome: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    outcome_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), index=True)


class LLMCacheEntry(SQLModel, table=True):
    """A model answer cached by (tenant, endpoint, model, messages, output schema, parameters)."""

    __tablename__ = "llm_cache"

    key: str = Field(primary_key=True, max_length=64)
    tenant: str = Field(index=True, max_length=200)
    endpoint: str = Field(max_length=200)
    model: str = Field(max_length=200)
    response: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    hits: int = 0
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime(), index=True)


class CircuitState(SQLModel, table=True):
    """A model endpoint's circuit breaker, visible to every worker: closed, open or half_open."""

    __tablename__ = "circuit_state"

    endpoint: str = Field(primary_key=True, max_length=300)
    state: str = Field(default="closed", max_length=20)
    failures: int = 0
    opened_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    last_error: str | None = Field(default=None, sa_type=sa.Text)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


class Feedback(SQLModel, table=True):
    """What someone said about a decision: right or wrong, the right answer, a score, a note.

    Kept apart from the decision row (a decision may get feedback many times, from people, from
    a learning step or from an action's result); the latest row of a decision is the one that
    counts. `given_by` names who gave it and `created_at` when.
    """

    __tablename__ = "feedback"
    __table_args__ = (
        sa.Index("ix_feedback_tenant_agent_step", "tenant", "agent", "step", "created_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    decision_id: str = Field(index=True, max_length=32)
    agent: str = Field(max_length=200)
    step: str = Field(max_length=200)
    correct: bool | None = None
    label: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="The right answer (fields)."
    )
    score: float | None = None
    note: str | None = Field(default=None, sa_type=sa.Text)
    given_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


class ThresholdChange(SQLModel, table=True):
    """One calibrated change of a reasoning step's threshold for one tenant, with its evidence.

    `version` counts the changes of (tenant, agent, step) from 1; the highest is in force.
    """

    __tablename__ = "threshold_change"
    __table_args__ = (
        sa.UniqueConstraint(
            "tenant", "agent", "step", "version", name="uq_threshold_change_version"
        ),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    step: str = Field(max_length=200)
    version: int = 1
    old: float | None = None
    new: float
    evidence: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="The calibration report."
    )
    changed_by: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


class ExampleUse(SQLModel, table=True):
    """Which few-shot examples (decision ids) a reasoning step put into its prompt in one run."""

    __tablename__ = "example_use"

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    step: str = Field(max_length=200)
    agent_run_id: str | None = Field(default=None, index=True, max_length=32)
    run_key: str | None = Field(default=None, max_length=200)
    example_ids: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())


class ReviewRequest(SQLModel, table=True):
    """A decision waiting for a person: one per (tenant, agent, run key, step), kept for good.

    Created when a reasoning step with `review=Review(...)` stays below its threshold after the
    fallback model; the run stops there (`awaiting_review`) and holds nothing while it waits.
    `state` goes `pending` → `answered` (a verdict, its reviewer and correction) or `expired`
    (past `deadline_at`: the step's safe default applies). `continued_at` is set when an
    execution of the run took the verdict and ended; until then `resume` continues it.
    """

    __tablename__ = "review_request"
    __table_args__ = (
        sa.UniqueConstraint("tenant", "agent", "run_key", "step", name="uq_review_request_run"),
        sa.Index("ix_review_request_tenant_state", "tenant", "state", "created_at"),
    )

    id: str = Field(default_factory=new_id, primary_key=True, max_length=32)
    tenant: str = Field(index=True, max_length=200)
    agent: str = Field(max_length=200)
    step: str = Field(max_length=200)
    run_key: str = Field(max_length=200)
    subject: str | None = Field(default=None, max_length=500)
    agent_run_id: str | None = Field(default=None, max_length=32)
    flow_run_id: str | None = Field(
        default=None, max_length=36, description="The flow run of the execution that asked."
    )
    deployment_id: str | None = Field(
        default=None, max_length=36, description="Its deployment: where the run continues."
    )
    review_flow_run_id: str | None = Field(
        default=None, max_length=36, description="The suspended flow run with the review form."
    )
    proposed: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="The proposed decision."
    )
    decision_schema: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="JSON schema a correction fits."
    )
    confidence: float | None = None
    rationale: str | None = Field(default=None, sa_type=sa.Text)
    inputs: Any = Field(
        default=None, nullable=True, sa_type=sa.JSON, description="The step's redacted inputs."
    )
    run_input: Any = Field(
        default=None,
        nullable=True,
        sa_type=sa.JSON,
        description="The run's input as given (what continuing the run needs); never shown.",
    )
    state: str = Field(default="pending", max_length=20, description="pending, answered, expired")
    verdict: str | None = Field(default=None, max_length=20, description="approve/correct/reject")
    reviewer: str | None = Field(default=None, max_length=200)
    correction: Any = Field(default=None, nullable=True, sa_type=sa.JSON)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime())
    deadline_at: datetime = Field(sa_type=UTCDateTime())
    answered_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    continued_at: datetime | None = Field(default=None, sa_type=UTCDateTime())
    continued_run_id: str | None = Field(default=None, max_length=32)
