"""Run values: what a step can read about its run (`RunContext`) and what a run returns
(`RunResult`). Executing runs lives in `agents._compile`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["completed", "held", "failed"]
StepStatus = Literal["completed", "cached", "held", "skipped", "failed"]


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
    `failed` when a step failed after its retries or the input was invalid."""
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
        """True unless the run failed."""
        return self.status != "failed"
