"""What a run returns: `RunResult`, and the run and step statuses it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

RunStatus = Literal["completed", "held", "awaiting_review", "failed", "conflict"]
StepStatus = Literal[
    "completed", "cached", "held", "awaiting_review", "skipped", "failed", "conflict"
]


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
    `awaiting_review` when a decision waits for a person (`agents.reviews`): nothing downstream
    of it ran, and `Agent.resume` continues the run once they answer;
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
    """Each step's status: completed, cached, held, awaiting_review, skipped, failed or
    conflict."""
    paths: dict[str, str] = field(default_factory=dict)
    """Each reasoning step's path: direct, fallback_model, human, awaiting_review, default,
    held or rejected (the decision named an action the agent does not allow)."""
    error: str | None = None
    """The first failure's type and message (never a secret), or None."""
    notes: list[str] = field(default_factory=list)
    """What else happened worth knowing (a review that timed out, ...)."""
    flow_run_id: str | None = None

    @property
    def ok(self) -> bool:
        """True unless the run failed (a `conflict` is not a failure: the twin did the work)."""
        return self.status != "failed"
