"""What a step can read about its run: `RunContext`, injected as `context: RunContext`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


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
