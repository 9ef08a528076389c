"""Decision: the typed output of every reasoning step."""

from __future__ import annotations

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
