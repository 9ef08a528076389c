"""Step options: `StepOptions` and the values its fields take (`Review`, `Shadow`,
`Calibration`), with the one duration parser they share."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from agents.durations import parse_duration

__all__ = ["Calibration", "Review", "Shadow", "StepOptions", "parse_duration"]


@dataclass(frozen=True, kw_only=True)
class Calibration:
    """Let `agents.learning.calibration.apply` move this step's threshold, per tenant.

    Example:
        >>> Calibration(target_precision=0.95, bounds=(0.6, 0.95)).problems(0.7)
        []
        >>> Calibration(bounds=(0.8, 0.9)).problems(0.7)
        ['threshold 0.7 is outside the calibration bounds (0.8, 0.9)']
    """

    target_precision: float = 0.95
    """Share of auto-decided (at or above threshold) decisions that must be correct."""
    bounds: tuple[float, float] = (0.5, 0.95)
    """The lowest and highest threshold calibration may set."""
    min_decisions: int = 20
    """Labelled decisions needed before a threshold is recommended at all."""

    def problems(self, threshold: float | None) -> list[str]:
        """What is wrong with these options for a step declared with `threshold`."""
        found: list[str] = []
        lo, hi = self.bounds
        if not 0.0 <= lo <= hi <= 1.0:
            found.append(f"bounds {self.bounds} must satisfy 0 <= low <= high <= 1")
        if not 0.0 < self.target_precision <= 1.0:
            found.append(f"target_precision {self.target_precision} must be in (0, 1]")
        if self.min_decisions < 1:
            found.append(f"min_decisions {self.min_decisions} must be at least 1")
        if threshold is None:
            found.append("calibration needs a declared 'threshold' to start from")
        elif not found and not lo <= threshold <= hi:
            found.append(f"threshold {threshold} is outside the calibration bounds {self.bounds}")
        return found


@dataclass(frozen=True, kw_only=True)
class Review:
    """Human review, the second rung of the fallback ladder, asked durably.

    The run stops (`awaiting_review`) and a review request is stored: the input, the proposed
    decision, its confidence and rationale. A person approves, corrects or rejects it through
    `agents.reviews`, `stalwart review` or the Prefect UI form (deployments), and the run
    continues; nothing waits meanwhile. Past `timeout` the step's safe default applies.

    Example:
        >>> Review(timeout="4h").timeout_seconds
        14400.0
    """

    timeout: float | str = "4h"
    """How long a review may wait for an answer (`"3d"`, `"4h"`, seconds) before it expires
    and the step's safe default applies."""

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


@dataclass(frozen=True, kw_only=True)
class Shadow:
    """A candidate model that sees a share of live decisions: recorded, never acted on.

    The chosen runs (a stable hash of the run key, so a rerun picks the same ones) call the
    reasoning step once more with the candidate; its decision is logged with `path="shadow"`
    beside the real one. Compare them with `stalwart decisions --path shadow` or
    `stalwart shadow`.

    Example:
        >>> Shadow(model="gpt-4o-mini", share=0.1).picks("run-key-1") in (True, False)
        True
    """

    model: str
    """The candidate model, on the endpoint in force."""
    share: float = 0.1
    """Share of runs (0..1) whose decision the candidate also makes."""

    def picks(self, run_key: str) -> bool:
        """Whether the run with this key is in the shadow share (stable across processes)."""
        bucket = int(hashlib.sha256(run_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return bucket < self.share


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How a step runs. Every option has a default; decorators accept each as a keyword."""

    retries: int = 0
    """Attempts after the first when the step raises (never for a `UserError`)."""
    retry_delay: float = 1.0
    """Base delay in seconds; attempt n waits `retry_delay * 2**(n-1)`, with jitter."""
    timeout: float | None = None
    """Seconds before an attempt is abandoned and counted as failed."""
    cache: bool = True
    """Persist the result and reuse it when the same inputs come again (in any process)."""
    tags: tuple[str, ...] = ()
    """Extra Prefect tags on this step's task runs."""
    threshold: float | None = None
    """Reasoning only: below this confidence the fallback ladder runs; a decision still below
    it is held and no action runs on it."""
    fallback_model: str | None = None
    """Reasoning only, rung 1: the model asked again when confidence is below the threshold."""
    review: Review | None = None
    """Reasoning only, rung 2: a person approves, corrects or rejects the decision."""
    default: Any = None
    """Reasoning only, rung 3: the safe decision (an instance of the step's return type, or a
    function of no arguments returning one) used when nothing above reached the threshold.
    Actions run on it only if its own confidence meets the threshold."""
    calibrate: Calibration | None = None
    """Reasoning only: let `agents.learning.calibration.apply` move the threshold per tenant,
    within `Calibration.bounds`, to meet `Calibration.target_precision`."""
    shadow: Shadow | None = None
    """Reasoning only: a candidate model also decides a share of runs, logged, never acted on."""
    tools: tuple[Any, ...] = ()
    """Reasoning only: read-only functions the model may call before it answers
    (`llm.decide` runs the loop); see `agents.declare.tool.Tool`."""
    max_turns: int = 6
    """Reasoning only: model turns a tool loop may take before the step fails."""
