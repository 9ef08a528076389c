"""Threshold calibration: the threshold that meets a target precision, per tenant and step.

From a step's labelled decisions (feedback, or an outcome's `correct` flag; see
`agents.learning.feedback.verdict`) `calibrate` computes, for each candidate threshold within
the declared bounds, the share of decisions that would be auto-decided (confidence at or above
it) and how many of those were right, and recommends the lowest threshold whose auto-decided
precision meets the target (the highest bound when none does). `apply` sets it for one tenant
only when the step opted in (`@agent.reasoning(threshold=..., calibrate=Calibration(...))`),
only within its bounds, and writes a versioned `ThresholdChange` row holding the report as
evidence. `thresholds` reads every step's threshold in force for a tenant in one query: the
runtime looks it up once per batch.

Decisions reached by the safe default, a person or a rejection are left out: their confidence
is not the model's.

Example:
    >>> from agents.learning import Calibration
    >>> report = calibrate("acme", "ticket-triage", "route", target_precision=0.95,
    ...                    bounds=(0.6, 0.95), url="sqlite://")
    >>> report.recommended is None, report.reason
    (True, 'only 0 labelled decisions; at least 20 are needed')
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, func, select

from agents.declare.decision import LadderPath
from agents.declare.options import Calibration
from agents.errors import UserError
from agents.graph import AgentGraph
from agents.learning.feedback import latest, verdict
from agents.store._convert import require_tenant
from agents.store.engine import session
from agents.store.tables import DecisionRecord, ThresholdChange

if TYPE_CHECKING:
    from agents.declare.agent import Agent

__all__ = [
    "CALIBRATED_PATHS",
    "Calibration",
    "CalibrationError",
    "CalibrationReport",
    "Candidate",
    "apply",
    "calibrate",
    "history",
    "in_force",
    "thresholds",
]

CALIBRATED_PATHS = (LadderPath.DIRECT, LadderPath.FALLBACK_MODEL, LadderPath.HELD)
"""Paths whose confidence is a model's, hence the decisions calibration learns from."""
MAX_DECISIONS = 5000
"""The most recent labelled decisions a calibration looks at."""


class CalibrationError(UserError):
    """A threshold change that is not allowed (the step did not opt in, or is unknown)."""


@dataclass(frozen=True)
class Candidate:
    """One candidate threshold and what it would have done to the labelled decisions."""

    threshold: float
    """The candidate."""
    auto: int
    """Labelled decisions at or above it (decided without the ladder)."""
    auto_share: float
    """`auto` over all labelled decisions."""
    correct: int
    """Right decisions among `auto`."""
    precision: float | None
    """`correct / auto` (None when nothing would be auto-decided)."""
    meets_target: bool
    """Precision at or above the target."""


@dataclass(frozen=True)
class CalibrationReport:
    """The trade-off table of one step and tenant, and the recommended threshold."""

    tenant: str
    agent: str
    step: str
    target_precision: float
    bounds: tuple[float, float]
    labelled: int
    """Labelled decisions looked at."""
    accuracy: float | None
    """Share of them that were right (at any confidence)."""
    current: float | None
    """The threshold in force for this tenant (calibrated, else declared)."""
    recommended: float | None
    """The lowest candidate meeting the target; the high bound when none does; None when
    there is too little evidence."""
    reason: str
    candidates: list[Candidate] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the evidence stored with a threshold change)."""
        data = asdict(self)
        data["bounds"] = list(self.bounds)
        return data


def _grid(bounds: tuple[float, float], step: float) -> list[float]:
    lo, hi = bounds
    values = []
    value = lo
    while value < hi - 1e-9:
        values.append(round(value, 4))
        value += step
    values.append(round(hi, 4))
    return values


def _graph(agent: Agent | AgentGraph) -> AgentGraph:
    """The agent's graph (an `Agent` is compiled; a graph is taken as it is)."""
    return agent if isinstance(agent, AgentGraph) else agent.compile()


def _declared(
    agent: Agent | AgentGraph | str, step: str
) -> tuple[str, float | None, Calibration | None]:
    if isinstance(agent, str):
        return agent, None, None
    graph = _graph(agent)
    found = graph.steps.get(step)
    if found is None or found.layer != "reasoning":
        steps = sorted(s.name for s in graph.order if s.layer == "reasoning")
        raise CalibrationError(
            f"agent {agent.name!r} has no reasoning step {step!r} (reasoning steps: {steps})"
        )
    options: Calibration | None = getattr(found.options, "calibrate", None)
    return agent.name, found.options.threshold, options


def calibrate(
    tenant: str,
    agent: Agent | AgentGraph | str,
    step: str,
    *,
    target_precision: float | None = None,
    bounds: tuple[float, float] | None = None,
    min_decisions: int | None = None,
    grid: float = 0.05,
    since: datetime | None = None,
    url: str | None = None,
) -> CalibrationReport:
    """The trade-off between auto-decided share and precision, and a recommended threshold.

    Args:
        tenant: Whose decisions (calibration never mixes tenants).
        agent: The agent, or its name. With the `Agent`, the step's declared threshold and
            `Calibration` supply the defaults of the next three arguments.
        step: The reasoning step.
        target_precision: Required share of right decisions among the auto-decided ones
            (default 0.95).
        bounds: Lowest and highest threshold considered (default (0.5, 0.95)).
        min_decisions: Labelled decisions needed for a recommendation (default 20).
        grid: Spacing of the candidate thresholds between the bounds.
        since: Only decisions made since then.
        url: Database URL; None means the settings' URL.

    Example:
        >>> calibrate("acme", "ticket-triage", "route", url="sqlite://").candidates[0].threshold
        0.5
    """
    require_tenant(tenant)
    name, declared, options = _declared(agent, step)
    defaults = options or Calibration()
    target = defaults.target_precision if target_precision is None else target_precision
    lo, hi = defaults.bounds if bounds is None else bounds
    needed = defaults.min_decisions if min_decisions is None else min_decisions
    checked = Calibration(target_precision=target, bounds=(lo, hi), min_decisions=needed)
    if problems := checked.problems(lo):
        raise ValueError("; ".join(problems))

    query = (
        select(DecisionRecord)
        .where(
            col(DecisionRecord.tenant) == tenant,
            col(DecisionRecord.agent) == name,
            col(DecisionRecord.step) == step,
            col(DecisionRecord.path).in_(CALIBRATED_PATHS),
            col(DecisionRecord.confidence).is_not(None),
        )
        .order_by(col(DecisionRecord.created_at).desc())
        .limit(MAX_DECISIONS)
    )
    if since is not None:
        query = query.where(col(DecisionRecord.created_at) >= since)
    with session(url) as s:
        rows = list(s.exec(query).all())
    given = latest(tenant=tenant, agent=name, step=step, url=url)
    labelled: list[tuple[float, bool]] = []
    for row in rows:
        right = verdict(row, given.get(row.id))
        if right is not None and row.confidence is not None:
            labelled.append((float(row.confidence), right))

    total = len(labelled)
    candidates = []
    for threshold in _grid((lo, hi), grid):
        auto = [right for confidence, right in labelled if confidence >= threshold - 1e-9]
        correct = sum(auto)
        precision = correct / len(auto) if auto else None
        candidates.append(
            Candidate(
                threshold=threshold,
                auto=len(auto),
                auto_share=len(auto) / total if total else 0.0,
                correct=correct,
                precision=precision,
                meets_target=precision is not None and precision >= target - 1e-12,
            )
        )
    current = thresholds(tenant, name, url=url).get(step, declared)
    if total < needed:
        recommended, reason = None, f"only {total} labelled decisions; at least {needed} are needed"
    else:
        meeting = [c for c in candidates if c.meets_target]
        if meeting:
            best = meeting[0]
            recommended = best.threshold
            reason = (
                f"lowest threshold whose auto-decided precision ({best.precision:.3f}) meets "
                f"{target}; {best.auto_share:.0%} of decisions auto-decided"
            )
        else:
            recommended = hi
            reason = f"no threshold in {(lo, hi)} meets {target}; the high bound is the safest"
    return CalibrationReport(
        tenant=tenant,
        agent=name,
        step=step,
        target_precision=target,
        bounds=(lo, hi),
        labelled=total,
        accuracy=sum(r for _, r in labelled) / total if total else None,
        current=current,
        recommended=recommended,
        reason=reason,
        candidates=candidates,
    )


def apply(
    agent: Agent | AgentGraph,
    step: str,
    *,
    tenant: str,
    report: CalibrationReport | None = None,
    by: str | None = None,
    url: str | None = None,
) -> ThresholdChange | None:
    """Set the recommended threshold for one tenant, if the step opted in and it changed.

    The new value is kept within the step's `Calibration.bounds`; the change is a new
    `ThresholdChange` version holding the report as its evidence.

    Returns:
        The change, or None when there is nothing to change (too little evidence, or the
        recommendation equals the threshold in force).

    Raises:
        CalibrationError: The step is unknown or was not declared with `calibrate=...`.

    Example:
        >>> apply(triage, "route", tenant="acme")  # doctest: +SKIP
        ThresholdChange(step='route', version=1, old=0.7, new=0.8, ...)
    """
    require_tenant(tenant)
    name, declared, options = _declared(agent, step)
    if options is None:
        raise CalibrationError(
            f"step {name}.{step} did not opt into calibration: declare it with "
            "`@agent.reasoning(threshold=..., calibrate=Calibration(target_precision=..., "
            "bounds=(low, high)))`; nothing was changed"
        )
    if report is None:
        report = calibrate(tenant, agent, step, url=url)
    if report.recommended is None:
        return None
    lo, hi = options.bounds
    new = min(hi, max(lo, report.recommended))
    with session(url) as s:
        last = s.exec(
            select(ThresholdChange)
            .where(
                col(ThresholdChange.tenant) == tenant,
                col(ThresholdChange.agent) == name,
                col(ThresholdChange.step) == step,
            )
            .order_by(col(ThresholdChange.version).desc())
            .limit(1)
        ).first()
        old = last.new if last is not None else declared
        if old is not None and abs(old - new) < 1e-9:
            return None
        change = ThresholdChange(
            tenant=tenant,
            agent=name,
            step=step,
            version=(last.version + 1) if last is not None else 1,
            old=old,
            new=new,
            evidence=report.to_dict(),
            changed_by=by,
        )
        s.add(change)
        try:
            s.flush()
        except IntegrityError as exc:
            raise CalibrationError(
                f"another calibration of {name}.{step} for tenant {tenant!r} wrote version "
                f"{change.version} first; calibrate again"
            ) from exc
    return change


def thresholds(tenant: str, agent: str, *, url: str | None = None) -> dict[str, float]:
    """The calibrated threshold in force of each step of one tenant's agent (one query).

    Steps never calibrated are absent: their declared threshold holds.

    Example:
        >>> thresholds("acme", "ticket-triage", url="sqlite://")
        {}
    """
    require_tenant(tenant)
    newest = (
        select(
            col(ThresholdChange.step).label("step"),
            func.max(ThresholdChange.version).label("version"),
        )
        .where(col(ThresholdChange.tenant) == tenant, col(ThresholdChange.agent) == agent)
        .group_by(col(ThresholdChange.step))
        .subquery()
    )
    query = (
        select(ThresholdChange.step, ThresholdChange.new)
        .join(
            newest,
            (col(ThresholdChange.step) == newest.c.step)
            & (col(ThresholdChange.version) == newest.c.version),
        )
        .where(col(ThresholdChange.tenant) == tenant, col(ThresholdChange.agent) == agent)
    )
    with session(url) as s:
        return {step: float(new) for step, new in s.exec(query).all()}


def in_force(agent: Agent | AgentGraph, tenant: str, *, url: str | None = None) -> dict[str, float]:
    """Each reasoning step's threshold for one tenant: calibrated where the step opts in.

    What the runtime reads once per batch: a step without `calibrate=...` keeps its declared
    threshold even if it was calibrated before; a calibrated value outside the step's current
    bounds is clamped into them.

    Example:
        >>> in_force(triage, "acme")  # doctest: +SKIP
        {'route': 0.8}
    """
    graph = _graph(agent)
    calibrated = thresholds(tenant, graph.name, url=url)
    found: dict[str, float] = {}
    for step in graph.order:
        declared = step.options.threshold
        if step.layer != "reasoning" or declared is None:
            continue
        options: Calibration | None = getattr(step.options, "calibrate", None)
        value = calibrated.get(step.name) if options is not None else None
        if options is not None and value is not None:
            lo, hi = options.bounds
            found[step.name] = min(hi, max(lo, value))
        else:
            found[step.name] = declared
    return found


def history(
    tenant: str, agent: str, step: str | None = None, *, url: str | None = None
) -> list[ThresholdChange]:
    """Every threshold change of one tenant's agent (optionally one step), oldest first.

    Example:
        >>> history("acme", "ticket-triage", url="sqlite://")
        []
    """
    require_tenant(tenant)
    query = select(ThresholdChange).where(
        col(ThresholdChange.tenant) == tenant, col(ThresholdChange.agent) == agent
    )
    if step is not None:
        query = query.where(col(ThresholdChange.step) == step)
    with session(url) as s:
        return list(
            s.exec(query.order_by(col(ThresholdChange.step), col(ThresholdChange.version))).all()
        )
