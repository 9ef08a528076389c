"""The fallback ladder: below its threshold a decision goes to the fallback model, then a person,
then the step's safe default; a decision naming an action the agent does not allow is refused.

Pure decision logic: asking the fallback model and asking a person are functions passed in, so
the ladder runs (and is tested) without Prefect or a model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, TypeAdapter

from agents.declare.decision import Decision, LadderPath
from agents.declare.options import StepOptions

if TYPE_CHECKING:
    from agents.resources.llm import LLMCall


class Verdict(Protocol):
    """A review's answer: `approve`, `correct` (with `correction`) or `reject`; a `verdict` of
    None means nobody answered by the deadline. `proposed` is the decision the person saw."""

    @property
    def id(self) -> str: ...
    @property
    def verdict(self) -> str | None: ...
    @property
    def proposed(self) -> Any: ...
    @property
    def correction(self) -> dict[str, Any] | None: ...
    @property
    def reviewer(self) -> str | None: ...


class ReviewPending:
    """A person has been asked and has not answered yet: the run stops at this step."""

    def __repr__(self) -> str:
        return "REVIEW_PENDING"


REVIEW_PENDING = ReviewPending()

#: Asks the fallback model: its decision (None if it gave none) and the model calls it made.
AskFallback = Callable[[], Awaitable[tuple[Decision | None, list["LLMCall"]]]]
#: Asks a person about a proposed decision: their verdict, `REVIEW_PENDING` while they think,
#: or None when nobody answered by the deadline (or the verdict has no decision in it).
AskReview = Callable[[Decision], Awaitable["Verdict | ReviewPending | None"]]


@dataclass(kw_only=True)
class LadderOutcome:
    """Where the ladder ended: the decision, its path, and the extra model calls it cost."""

    decision: Any
    path: LadderPath
    held: bool = False
    """No action may run on the decision (below the threshold, or refused)."""
    awaiting: bool = False
    """A person has been asked and has not answered: nothing downstream runs yet."""
    llm_calls: list[LLMCall] = field(default_factory=list)
    reviewer: str | None = None
    correction: dict[str, Any] | None = None
    proposed: Decision | None = None
    """The best model decision when a person or the default replaced it."""


async def climb(
    options: StepOptions,
    decision: Decision,
    threshold: float | None,
    *,
    ask_fallback: AskFallback,
    ask_review: AskReview,
) -> LadderOutcome:
    """The outcome for a model's `decision`: direct when it clears `threshold`, else the first
    rung that does (fallback model, person, default), else held. A person who has not answered
    yet stops the climb there (`awaiting`): the run continues when they do.

    Example:
        >>> import asyncio
        >>> async def no_fallback():
        ...     return None, []
        >>> async def nobody(proposed):
        ...     return None
        >>> sure = Decision(confidence=0.9, rationale="clear")
        >>> asyncio.run(climb(StepOptions(threshold=0.8), sure, 0.8,
        ...                   ask_fallback=no_fallback, ask_review=nobody)).path
        <LadderPath.DIRECT: 'direct'>
        >>> unsure = Decision(confidence=0.3, rationale="vague")
        >>> asyncio.run(climb(StepOptions(threshold=0.8), unsure, 0.8,
        ...                   ask_fallback=no_fallback, ask_review=nobody)).held
        True
    """
    if threshold is None or decision.confidence >= threshold:
        return LadderOutcome(decision=decision, path=LadderPath.DIRECT)
    extra_calls: list[LLMCall] = []
    proposed = decision
    if options.fallback_model:
        second, calls = await ask_fallback()
        extra_calls += calls
        if second is not None:
            if second.confidence >= threshold:
                return LadderOutcome(
                    decision=second, path=LadderPath.FALLBACK_MODEL, llm_calls=extra_calls
                )
            if second.confidence > proposed.confidence:
                proposed = second
    verdict: Verdict | ReviewPending | None = None
    if options.review is not None:
        verdict = await ask_review(proposed)
        if isinstance(verdict, ReviewPending):
            return LadderOutcome(
                decision=proposed,
                path=LadderPath.AWAITING_REVIEW,
                llm_calls=extra_calls,
                held=True,
                awaiting=True,
                proposed=proposed,
            )
        if verdict is not None and verdict.verdict in ("approve", "correct"):
            # The person judged the decision they were shown (the continued run may have
            # decided afresh, e.g. a step that does not cache).
            seen = verdict.proposed if isinstance(verdict.proposed, dict) else None
            final = type(proposed).model_validate(seen) if seen else proposed
            if verdict.verdict == "correct" and verdict.correction:
                final = type(proposed).model_validate({**final.model_dump(), **verdict.correction})
            return LadderOutcome(
                decision=final,
                path=LadderPath.HUMAN,
                llm_calls=extra_calls,
                reviewer=verdict.reviewer,
                correction=verdict.correction if verdict.verdict == "correct" else None,
                proposed=proposed,
            )
    # A person who rejected the decision is named on the row the default (or hold) makes.
    rejected_by = None
    if isinstance(verdict, ReviewPending) or verdict is None:
        pass
    elif verdict.verdict == "reject":
        rejected_by = verdict.reviewer
    if options.default is not None:
        outcome = default_outcome(options.default, threshold, extra_calls, proposed)
        outcome.reviewer = rejected_by
        return outcome
    return LadderOutcome(
        decision=proposed,
        path=LadderPath.HELD,
        llm_calls=extra_calls,
        held=True,
        reviewer=rejected_by,
    )


async def without_model(
    options: StepOptions, threshold: float | None, *, ask_fallback: AskFallback
) -> LadderOutcome | None:
    """The model stayed unreachable through every retry: the fallback model's decision if it
    clears the threshold, else the step's safe default; None when it has neither (the step
    fails). No person is asked: there is no proposal to review.
    """
    extra_calls: list[LLMCall] = []
    if options.fallback_model:
        second, calls = await ask_fallback()
        extra_calls += calls
        if second is not None and (threshold is None or second.confidence >= threshold):
            return LadderOutcome(
                decision=second, path=LadderPath.FALLBACK_MODEL, llm_calls=extra_calls
            )
    if options.default is None:
        return None
    return default_outcome(options.default, threshold, extra_calls, None)


def default_outcome(
    default: Any, threshold: float | None, llm_calls: list[LLMCall], proposed: Decision | None
) -> LadderOutcome:
    """The step's safe default as the decision (held when it does not clear the threshold)."""
    if callable(default) and not isinstance(default, BaseModel):
        default = default()
    held = not isinstance(default, Decision) or (
        threshold is not None and default.confidence < threshold
    )
    return LadderOutcome(
        decision=default,
        path=LadderPath.DEFAULT,
        llm_calls=llm_calls,
        held=held,
        proposed=proposed,
    )


def refusal(allowed_actions: Mapping[str, Any] | None, decision: Decision) -> str | None:
    """Why a decision may not be acted on (an action it names is not allowed), or None.

    Input text is data, not instructions: whatever the model was told, a decision can only
    name an action the agent declared, with arguments that fit that action's schema.

    Example:
        >>> class Act(Decision):
        ...     action: str
        >>> refusal({"reply": None}, Act(action="refund", confidence=1, rationale=""))
        "action 'refund' is not allowed (allowed: ['reply'])"
    """
    action = getattr(decision, "action", None)
    if action is None:
        return None
    if allowed_actions is None or action not in allowed_actions:
        names = sorted(allowed_actions or {})
        return f"action {str(action)[:100]!r} is not allowed (allowed: {names})"
    schema = allowed_actions[action]
    arguments = getattr(decision, "arguments", None)
    if schema is None:
        if arguments:
            return f"action {action!r} takes no arguments"
        return None
    try:
        TypeAdapter(schema).validate_python(arguments or {})
    except ValueError as exc:
        return f"arguments of action {action!r} do not fit its schema: {exc}"[:500]
    return None
