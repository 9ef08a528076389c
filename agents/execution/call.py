"""One step call: who runs what with which keys (`StepCall`), and what the call reports back
(`StepTrace`)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from agents.declare.step import Step
from agents.digest import digest
from agents.store import ledger

if TYPE_CHECKING:
    from agents.observe.tracing import RunTrace
    from agents.resources.llm import LLMCall
    from agents.result import RunResult


@dataclass(frozen=True, kw_only=True)
class StepCall:
    """The parameters of one task run: who runs what, with which cache and idempotency keys."""

    agent: str
    step: str
    tenant: str
    subject: str | None
    run_key: str
    run_id: str
    flow_run_id: str | None
    cache_key: str
    idempotency_key: str
    model: str | None = None
    """The model to ask instead of the endpoint's (the fallback rung), or None."""

    @property
    def label(self) -> str:
        """The task run name: `<agent>.<step>[<subject or run key>]`."""
        return f"{self.agent}.{self.step}[{self.subject or self.run_key[:12]}]"

    @property
    def decision_id(self) -> str:
        """The id of the decision a cached reasoning call makes: the same in every execution
        of the run, so a twin's or a rerun's row for it is the same row."""
        return digest({"decision": self.cache_key}, 32)


@dataclass(kw_only=True, eq=False)
class StepTrace:
    """What one step call reports besides its value; the task body writes it, the walk reads
    it. It is the task's second output, never part of its cache key or persisted result.
    """

    attempts: int = 0
    """Task-run attempts made (retries included)."""
    llm_calls: list[LLMCall] = field(default_factory=list)
    """Every model call the step made, in order."""
    conflict: str | None = None
    """Set when another live execution of the run holds the action's claim (it did not act)."""


@dataclass(kw_only=True, eq=False)
class RunScope:
    """What every step of one run shares: its decision rows so far and when it started."""

    decisions: dict[str, Any] = field(default_factory=dict)
    """This run's decision rows by reasoning step (`RunContext.set_outcome` sets outcomes)."""
    started_at: datetime | None = None
    """When this execution of the run started (twin detection)."""
    trace: RunTrace | None = None
    """The run's spans when it is traced (`agents.observe.tracing`), carried explicitly into
    its task runs."""


def step_call(
    agent: str, step: Step[Any, Any], result: RunResult, args: dict[str, Any], model: str | None
) -> StepCall:
    """The call of `step` in the run `result` describes, with `args` (and `model`, the fallback).

    An action's cache key is its idempotency key; any other step's is a digest of tenant, agent,
    subject, step, step source, arguments and model, never the run id, so a rerun in any
    process hits the cache.
    """
    key = ledger.idempotency_key(
        result.tenant, agent, result.subject or "", result.run_key, step.name
    )
    if step.layer == "action":
        cache_key = f"{result.tenant}:{agent}:{step.name}:{key}"
    else:
        cache_key = f"{result.tenant}:{agent}:{step.name}:" + digest(
            {
                "tenant": result.tenant,
                "agent": agent,
                "subject": result.subject,
                "step": step.name,
                "source": step.source_digest,
                "args": args,
                "model": model,
            },
            48,
        )
    return StepCall(
        agent=agent,
        step=step.name,
        tenant=result.tenant,
        subject=result.subject,
        run_key=result.run_key,
        run_id=result.run_id,
        flow_run_id=result.flow_run_id,
        cache_key=_safe_key(cache_key),
        idempotency_key=key,
        model=model,
    )


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", key)[:480]
