"""Decision: the typed output of every reasoning step, and the ladder paths it can take."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Decision(BaseModel):
    """What a reasoning step decided, how sure it is, and why.

    Subclass it with the fields of your decision; the subclass is the `response_model` that
    `llm.decide` asks the model to fill in, and rules-based steps return it the same way.

    Example:
        >>> from typing import Literal
        >>> class Routing(Decision):
        ...     queue: Literal["billing", "technical", "other"]
        >>> Routing(queue="billing", confidence=0.92, rationale="mentions a refund").confidence
        0.92
    """

    confidence: float = Field(ge=0.0, le=1.0, description="How sure the decision is, from 0 to 1.")
    rationale: str = Field(description="A short reason for the decision, in one or two sentences.")


class LadderPath(StrEnum):
    """How a logged decision was reached: the rung of the fallback ladder it came from.

    Stored as its string value in `decision_record.path`, so `path == "human"` still matches.

    Example:
        >>> LadderPath("fallback_model") is LadderPath.FALLBACK_MODEL
        True
        >>> [p.value for p in LadderPath.rungs()]
        ['direct', 'fallback_model', 'human', 'awaiting_review', 'default', 'held', 'rejected']
    """

    DIRECT = "direct"
    """The model's (or the rules') decision cleared the threshold, or the step has none."""
    FALLBACK_MODEL = "fallback_model"
    """Rung 1: the fallback model's decision cleared the threshold."""
    HUMAN = "human"
    """Rung 2: a person approved or corrected the decision."""
    AWAITING_REVIEW = "awaiting_review"
    """Rung 2, not yet answered: the run stopped here until a person (or the deadline) decides;
    the row becomes `human` or `default` when the run continues."""
    DEFAULT = "default"
    """Rung 3: the step's safe default was taken."""
    HELD = "held"
    """Nothing cleared the threshold and there is no default: no action ran on it."""
    REJECTED = "rejected"
    """The decision named an action the agent does not allow: held, never acted on."""
    SHADOW = "shadow"
    """Not a rung: a candidate model's decision, logged beside the real one, never acted on."""

    @classmethod
    def rungs(cls) -> tuple[LadderPath, ...]:
        """The paths a run's own decision can take (every path but `shadow`), in ladder order."""
        return tuple(p for p in cls if p is not cls.SHADOW)
