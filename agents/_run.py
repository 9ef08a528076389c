"""Run values: what a step can read about its run (`RunContext`) and what a run returns
(`RunResult`). Executing runs lives in `agents._compile`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

RunStatus = Literal["completed", "held", "failed", "conflict"]
StepStatus = Literal["completed", "cached", "held", "skipped", "failed", "conflict"]


@dataclass(frozen=True, kw_only=True)
class RunContext:
    """The current run, injected into a step that declares `context: RunContext`.

    Example:
        >>> @agent.learning  # doctest: +SKIP
        ... def audit(send: Sent, context: RunContext) -> None:
        ...     print(context.tenant, context.subject, context.run_key)
    """

    agent: str
    """The agent's name."""
    tenant: str
    """The tenant (client project) the run belongs to."""
    subject: str | None
    """Whose memory the run reads and writes, if any."""
    run_key: str
    """Stable key of the work: the same input gets the same key, across processes."""
    run_id: str
    """This execution's id (a row in `agent_run`)."""
    flow_run_id: str | None
    """The Prefect flow run executing this run."""
    step: str
    """The step being executed."""
    decisions: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)
    """This run's decision-log rows so far, by reasoning step (written when the run ends)."""

    def set_outcome(self, outcome: Any, *, step: str | None = None) -> str:
        """Record the outcome of this run's decision (from a learning step); returns its id.

        `step` names the reasoning step; it may be left out when the run has one decision.
        Outcomes of older decisions are set with `agents.decisions.set_outcome`.

        Example:
            >>> @agent.learning  # doctest: +SKIP
            ... def record(send: Sent, context: RunContext) -> None:
            ...     context.set_outcome({"delivered": send.ok})
        """
        if step is None:
            if len(self.decisions) != 1:
                raise ValueError(
                    f"this run has decisions of steps {sorted(self.decisions)}; pass step=..."
                )
            step = next(iter(self.decisions))
        record = self.decisions.get(step)
        if record is None:
            raise KeyError(f"no decision of step {step!r} in this run")
        record.outcome = outcome
        record.outcome_at = datetime.now(UTC)
        return str(record.id)


@dataclass(kw_only=True)
class RunResult:
    """The outcome of one agent run.

    Example:
        >>> result = triage.run(tenant="acme", raw=ticket)  # doctest: +SKIP
        >>> result.status, result.outputs["route"].queue  # doctest: +SKIP
        ('completed', 'billing')
    """

    status: RunStatus
    """`completed`; `held` when a decision was below its threshold and no action ran on it;
    `failed` when a step failed after its retries or the input was invalid; `conflict` when
    another live execution of the same run (same tenant and run key) held an action's claim:
    this execution stopped before acting, the other one's outcome is the run's, and this one's
    decisions are not logged (see `error`)."""
    run_id: str
    """Id of the `agent_run` row."""
    run_key: str
    """Stable key of the input (the default is a digest of the inputs)."""
    tenant: str
    subject: str | None = None
    outputs: dict[str, Any] = field(default_factory=dict)
    """Each finished step's output, by step name."""
    steps: dict[str, StepStatus] = field(default_factory=dict)
    """Each step's status: completed, cached, held, skipped or failed."""
    paths: dict[str, str] = field(default_factory=dict)
    """Each reasoning step's path: direct, fallback_model, human, default, held or rejected
    (the decision named an action the agent does not allow)."""
    error: str | None = None
    """The first failure's type and message (never a secret), or None."""
    notes: list[str] = field(default_factory=list)
    """What else happened worth knowing (a review that timed out, ...)."""
    flow_run_id: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the run failed (a `conflict` is not a failure: the twin did the work)."""
        return self.status != "failed"
