"""Feedback: record that a decision was right or wrong, the right answer, a score, a note.

Feedback is stored per tenant in the `feedback` table, next to the decision log, with who gave
it and when. A decision may get feedback many times; the latest row counts (`latest`). Three
ways in: `give` (or `Agent.feedback`) for a decision of the log, `stalwart feedback` on the
command line, and `from_context` inside a learning step (for the run's own decision, e.g. from
an action's result).

Example:
    >>> from agents.store.decisions import record_decisions
    >>> from agents.store.tables import DecisionRecord
    >>> row = DecisionRecord(tenant="acme", agent="triage", step="route", input_digest="0" * 64)
    >>> record_decisions([row], url="sqlite://")
    >>> give(row.id, tenant="acme", correct=False, label={"category": "billing"},
    ...      by="ana", url="sqlite://").correct
    False
    >>> give(row.id, tenant="other", correct=True, url="sqlite://")
    Traceback (most recent call last):
    ...
    agents.learning.feedback.UnknownDecision: no decision ... in tenant 'other': ...
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from sqlmodel import col, select

from agents.errors import UserError
from agents.store._convert import require_tenant, to_json_value
from agents.store._writes import insert_once
from agents.store.decisions import get_decision
from agents.store.engine import session
from agents.store.tables import DecisionRecord, Feedback

if TYPE_CHECKING:
    from agents.context import RunContext

__all__ = [
    "Feedback",
    "UnknownDecision",
    "answer",
    "from_context",
    "give",
    "is_correct",
    "latest",
    "verdict",
    "verdict_of",
]


class UnknownDecision(UserError, LookupError):
    """Feedback names a decision that the tenant (or agent) does not have."""

    @classmethod
    def not_found(cls, decision_id: str, tenant: str, agent: str | None) -> UnknownDecision:
        scope = f"tenant {tenant!r}" + (f", agent {agent!r}" if agent else "")
        return cls(
            f"no decision {decision_id!r} in {scope}: check the id (`stalwart decisions "
            f"--tenant {tenant} --json`) and the tenant; feedback never crosses tenants, "
            "so nothing was written"
        )


def _checked(
    correct: bool | None, label: Any, score: float | None, note: str | None
) -> tuple[bool | None, Any, float | None, str | None]:
    if correct is None and label is None and score is None and note is None:
        raise ValueError("feedback needs at least one of correct, label, score or note")
    if correct is not None and not isinstance(correct, bool):
        raise TypeError(f"correct must be True, False or None, got {correct!r}")
    if score is not None:
        score = float(score)
        if not math.isfinite(score) or not 0.0 <= score <= 1.0:
            raise ValueError(f"score must be a number in [0, 1], got {score!r}")
    return correct, to_json_value(label, what="label"), score, note


def give(
    decision_id: str,
    *,
    tenant: str,
    correct: bool | None = None,
    label: Any = None,
    score: float | None = None,
    note: str | None = None,
    by: str | None = None,
    agent: str | None = None,
    url: str | None = None,
) -> Feedback:
    """Record feedback on one decision of the log.

    Args:
        decision_id: The decision's id (`DecisionRecord.id`).
        tenant: Its tenant; a decision of another tenant is never touched.
        correct: Whether the decision was right.
        label: The right answer: a JSON value, usually the corrected fields
            (`{"category": "billing"}`); fields left out are taken as the decision had them.
        score: A grade in [0, 1].
        note: Free text.
        by: Who gave it (a person, `cli`, `learning:<step>`, ...).
        agent: When given, the decision must also belong to this agent.
        url: Database URL; None means the settings' URL.

    Returns:
        The stored `Feedback` row.

    Raises:
        UnknownDecision: No such decision in this tenant (or agent); nothing was written.
        ValueError: No feedback at all, or a score outside [0, 1].
        TypeError: A label that is not JSON.

    Example:
        >>> give("0" * 32, tenant="acme", correct=True, url="sqlite://")
        Traceback (most recent call last):
        ...
        agents.learning.feedback.UnknownDecision: no decision '000...' in tenant 'acme': ...
    """
    require_tenant(tenant)
    correct, label, score, note = _checked(correct, label, score, note)
    decision = get_decision(decision_id, tenant=tenant, url=url)
    if decision is None or (agent is not None and decision.agent != agent):
        raise UnknownDecision.not_found(decision_id, tenant, agent)
    row = Feedback(
        tenant=tenant,
        decision_id=decision.id,
        agent=decision.agent,
        step=decision.step,
        correct=correct,
        label=label,
        score=score,
        note=note,
        given_by=by,
    )
    insert_once(row, url=url)  # survives a lost connection, never twice
    return row


def from_context(
    context: RunContext,
    *,
    step: str | None = None,
    correct: bool | None = None,
    label: Any = None,
    score: float | None = None,
    note: str | None = None,
    by: str | None = None,
    url: str | None = None,
) -> Feedback:
    """Feedback on this run's own decision, from a learning step (e.g. from an action's result).

    The run's decision row is written when the run ends, so it is not looked up: its id and
    tenant come from the run itself. `step` names the reasoning step; it may be left out when
    the run has one decision. `by` defaults to `learning:<this step>`.

    Raises:
        KeyError: The run has no decision of that step.
        ValueError: The run has several decisions and no `step` was given.

    Example:
        >>> @agent.learning  # doctest: +SKIP
        ... def learn(act: Handled, context: RunContext) -> None:
        ...     feedback.from_context(context, correct=act.delivered)
    """
    if step is None:
        if len(context.decisions) != 1:
            raise ValueError(
                f"this run has decisions of steps {sorted(context.decisions)}; pass step=..."
            )
        step = next(iter(context.decisions))
    record = context.decisions.get(step)
    if record is None:
        raise KeyError(f"no decision of step {step!r} in this run")
    correct, label, score, note = _checked(correct, label, score, note)
    row = Feedback(
        tenant=context.tenant,
        decision_id=str(record.id),
        agent=context.agent,
        step=step,
        correct=correct,
        label=label,
        score=score,
        note=note,
        given_by=by or f"learning:{context.step}",
    )
    insert_once(row, url=url)  # survives a lost connection, never twice
    return row


def latest(
    *,
    tenant: str,
    agent: str | None = None,
    step: str | None = None,
    decision_ids: Iterable[str] | None = None,
    url: str | None = None,
) -> dict[str, Feedback]:
    """The latest feedback of each decision (by decision id) of one tenant.

    Example:
        >>> latest(tenant="nobody", url="sqlite://")
        {}
    """
    require_tenant(tenant)
    query = select(Feedback).where(col(Feedback.tenant) == tenant)
    if agent is not None:
        query = query.where(col(Feedback.agent) == agent)
    if step is not None:
        query = query.where(col(Feedback.step) == step)
    if decision_ids is not None:
        query = query.where(col(Feedback.decision_id).in_(list(decision_ids)))
    query = query.order_by(col(Feedback.created_at), col(Feedback.id))
    with session(url) as s:
        rows = list(s.exec(query).all())
    return {row.decision_id: row for row in rows}  # later rows overwrite earlier ones


def verdict(decision: DecisionRecord, feedback: Feedback | None) -> bool | None:
    """Was the decision right? From its feedback, else from an outcome's `correct` flag.

    In order: `correct` when given; else a `label` compared with the output (every labelled
    field equal); else `score >= 0.5`; else the decision's outcome `{"correct": bool}` (a
    learning step or an action's result). None when nothing says.

    Example:
        >>> d = DecisionRecord(tenant="t", agent="a", step="s", input_digest="",
        ...                    output={"category": "billing"})
        >>> verdict(d, Feedback(tenant="t", decision_id=d.id, agent="a", step="s",
        ...                     label={"category": "shipping"}))
        False
    """
    if feedback is None:
        return verdict_of(decision.output, decision.outcome)
    return verdict_of(
        decision.output,
        decision.outcome,
        correct=feedback.correct,
        label=feedback.label,
        score=feedback.score,
    )


def verdict_of(
    output: Any,
    outcome: Any,
    *,
    correct: bool | None = None,
    label: Any = None,
    score: float | None = None,
) -> bool | None:
    """`verdict` from plain column values (the latest feedback's `correct`, `label`, `score`).

    Monitoring reads these columns in one joined query, without loading table rows, and
    must judge a decision exactly as calibration and shadow runs do.

    Example:
        >>> verdict_of({"category": "billing"}, {"correct": False}, label={"category": "billing"})
        True
        >>> verdict_of({"category": "billing"}, {"correct": False}), verdict_of(None, None)
        (False, None)
    """
    if correct is not None:
        return bool(correct)
    if label is not None:
        return is_correct(output, label)
    if score is not None:
        return float(score) >= 0.5
    if isinstance(outcome, Mapping) and isinstance(outcome.get("correct"), bool):
        return bool(outcome["correct"])
    return None


def is_correct(output: Any, label: Any) -> bool:
    """Whether an output agrees with a label: every labelled field equal (or equal values).

    Example:
        >>> is_correct({"category": "billing", "urgency": "low"}, {"category": "billing"})
        True
    """
    if isinstance(label, Mapping) and isinstance(output, Mapping):
        return all(output.get(k) == v for k, v in label.items())
    return bool(output == label)


def answer(decision: DecisionRecord, feedback: Feedback) -> dict[str, Any] | None:
    """The right answer a feedback row establishes, or None when it establishes none.

    A confirmed decision (`correct=True`) keeps its output; a label overrides the labelled
    fields. A decision marked wrong without a label teaches nothing.

    Example:
        >>> d = DecisionRecord(tenant="t", agent="a", step="s", input_digest="",
        ...                    output={"category": "billing", "urgency": "low"})
        >>> answer(d, Feedback(tenant="t", decision_id=d.id, agent="a", step="s",
        ...                    label={"category": "account"}))
        {'category': 'account', 'urgency': 'low'}
    """
    output = dict(decision.output) if isinstance(decision.output, Mapping) else {}
    if isinstance(feedback.label, Mapping):
        return {**output, **feedback.label}
    if feedback.correct is True or (feedback.correct is None and (feedback.score or 0) >= 0.5):
        return output or None
    return None
