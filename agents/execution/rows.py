"""Record builders: the `step_run` and `decision_record` rows a run writes when it ends."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from agents.declare.step import Step
from agents.digest import canonical, digest
from agents.pricing import cost_of
from agents.redact import scrub_text
from agents.store.tables import DecisionRecord, StepRun, new_id, utcnow

if TYPE_CHECKING:
    from agents.execution.ladder import LadderOutcome
    from agents.resources.llm import LLMCall
    from agents.result import RunResult, StepStatus


def step_row(
    agent: str,
    step: Step[Any, Any],
    result: RunResult,
    status: StepStatus,
    *,
    attempts: int = 0,
    cached: bool = False,
    duration_ms: float = 0.0,
    task_run_id: str | None = None,
    error: str | None = None,
    llm_calls: Sequence[LLMCall] = (),
) -> StepRun:
    """The row of one step of one run, with its model calls' tokens and latency summed."""
    # Constructed, not initialised: a table model's __init__ routes every field through
    # SQLAlchemy's attribute instrumentation (about 40 us a row, 8% of a rerun), and this row
    # is only ever dumped for an INSERT. Every field is given: a default factory would cost
    # pydantic a signature inspection per use.
    return StepRun.model_construct(
        id=new_id(),
        # The row is built as the step ends: its start is `duration_ms` earlier.
        started_at=utcnow() - timedelta(milliseconds=duration_ms),
        tokens_in=sum(c.tokens_in for c in llm_calls),
        tokens_out=sum(c.tokens_out for c in llm_calls),
        model_ms=sum(c.latency_ms for c in llm_calls) if llm_calls else None,
        tenant=result.tenant,
        agent=agent,
        agent_run_id=result.run_id,
        step=step.name,
        layer=step.layer,
        status=status,
        attempts=attempts,
        cache_hit=cached,
        task_run_id=task_run_id,
        duration_ms=duration_ms,
        error=error,
    )


def input_snapshot(args: dict[str, Any]) -> Any:
    """A step's inputs as the decision log and a review request keep them: scrubbed of
    secrets, at most 20,000 characters (as text when the cut leaves no valid JSON)."""
    snapshot: Any = scrub_text(json.dumps(canonical(args), default=repr))[:20_000]
    with contextlib.suppress(ValueError):
        snapshot = json.loads(snapshot)
    return snapshot


def decision_row(
    agent: str,
    step: Step[Any, Any],
    result: RunResult,
    args: dict[str, Any],
    outcome: LadderOutcome,
    llm_calls: Sequence[LLMCall],
    attempts: int,
    decision_id: str | None = None,
) -> DecisionRecord:
    """The decision-log row of a reasoning step: what it saw (scrubbed), decided and cost."""
    decision = outcome.decision
    last = llm_calls[-1] if llm_calls else None
    output = decision.model_dump(mode="json") if isinstance(decision, BaseModel) else decision
    return DecisionRecord(
        id=decision_id or new_id(),
        tenant=result.tenant,
        agent=agent,
        step=step.name,
        agent_run_id=result.run_id,
        flow_run_id=result.flow_run_id,
        subject=result.subject,
        run_key=result.run_key,
        input_digest=digest(args, 64),
        input_snapshot=input_snapshot(args),
        prompt_digest=getattr(last, "prompt_digest", None) or None,
        # The prompt lives in the step's code: its source digest versions the prompt.
        prompt_version=step.source_digest,
        model=getattr(last, "model", None),
        endpoint=getattr(last, "endpoint", None),
        raw_output=getattr(last, "raw_output", None),
        output=output,
        confidence=getattr(decision, "confidence", None),
        logprobs=getattr(last, "logprobs", None),
        rationale=scrub_text(str(getattr(decision, "rationale", "") or "")),
        path=str(outcome.path),
        reviewer=outcome.reviewer,
        correction=outcome.correction,
        tokens_in=sum(c.tokens_in for c in llm_calls),
        tokens_out=sum(c.tokens_out for c in llm_calls),
        # Each call at its own model's price: a fallback decision paid for both models.
        cost=sum(cost_of(c.model, c.tokens_in, c.tokens_out) for c in llm_calls),
        latency_ms=sum(c.latency_ms for c in llm_calls) if llm_calls else None,
        attempts=attempts,
        error_class=getattr(last, "error_class", None),
        tool_calls=[dict(t) for c in llm_calls for t in c.tool_calls] or None,
    )


def settled(row: DecisionRecord, outcome: LadderOutcome) -> DecisionRecord:
    """`row` (a logged decision) saying where the ladder ended now: a decision logged while
    awaiting review becomes the person's (or the default's) when its run continues."""
    decision = outcome.decision
    if row.path == str(outcome.path) and outcome.reviewer == row.reviewer:
        return row
    output = decision.model_dump(mode="json") if isinstance(decision, BaseModel) else decision
    # A new row, not `model_copy`: a copy would share the logged row's SQLAlchemy state.
    return DecisionRecord(
        **{
            **row.model_dump(),
            "path": str(outcome.path),
            "output": output,
            "confidence": getattr(decision, "confidence", None),
            "rationale": scrub_text(str(getattr(decision, "rationale", "") or "")),
            "reviewer": outcome.reviewer,
            "correction": outcome.correction,
        }
    )
