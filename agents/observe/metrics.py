"""Metrics: rolling quality, cost and reliability figures of one tenant's agents, per step.

This module owns how the decision log (`decision_record`) and the run log (`agent_run`) are
summarised over a time window, optionally cut into buckets for plots over time:

* confidence: mean, p10 and p50 of the scored decisions;
* the fallback ladder: the share of decisions per path (each of `LadderPath.rungs()`: `direct`,
  `fallback_model`, `human`, `default`, `held`, `rejected`);
* human review: the share of decisions a person reviewed, and the *override rate* — of the
  reviewed decisions, those a person did not approve as proposed (a correction, or a reject that
  sent the decision to the safe default);
* accuracy where labelled: a decision's verdict as `agents.learning.feedback.verdict` gives it
  (the same one calibration and shadow runs use): its latest feedback (`stalwart feedback`,
  `Agent.feedback`, a learning step) when that says right or wrong, else an outcome
  `{"correct": true|false, ...}` (written with `agents.decisions.set_outcome`); a decision with
  neither is not counted;
* reliability: the agent's failed runs over its runs (error rate) and the decisions whose model
  call needed more than one attempt (retry rate);
* latency p50/p95 and cost (sum and mean per decision, USD).

Every public function takes a mandatory `tenant` and never reads another tenant's rows.

Example:
    >>> from agents.observe.metrics import window_metrics
    >>> window_metrics(tenant="acme", agent="triage", since="1d", url="sqlite://")
    []
"""

from __future__ import annotations

import bisect
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlmodel import col, select

from agents.declare.decision import LadderPath
from agents.learning.feedback import verdict_of
from agents.store._convert import as_utc, parse_age, parse_since, require_tenant
from agents.store.engine import session
from agents.store.tables import AgentRun, DecisionRecord, Feedback

__all__ = [
    "DecisionPoint",
    "StepMetrics",
    "is_correct",
    "load_decisions",
    "load_runs",
    "percentile",
    "summarise",
    "window_metrics",
]

_DEFAULT_SINCE = timedelta(days=1)
_MAX_BUCKETS = 2000


@dataclass(frozen=True, kw_only=True)
class DecisionPoint:
    """The fields of one decision that metrics and drift detection read (no inputs, no output)."""

    id: str
    agent: str
    step: str
    created_at: datetime
    confidence: float | None
    path: str
    reviewer: str | None
    corrected: bool
    """A reviewer's correction is recorded."""
    correct: bool | None
    """The verdict: the latest feedback's, else the outcome's `correct`; None when unlabelled."""
    outcome_at: datetime | None
    cost: float
    latency_ms: float | None
    attempts: int
    error_class: str | None
    agent_run_id: str | None
    labelled_at: datetime | None = None
    """When the decision's label last changed: the later of its latest feedback and its outcome."""


@dataclass(frozen=True, kw_only=True)
class StepMetrics:
    """The metrics of one reasoning step of one agent over one window (or one bucket of it).

    Run figures (`runs`, `failed_runs`, `error_rate`) are the agent's: a run is not a step's.
    Rates are fractions in [0, 1]; a rate or statistic with nothing to measure is None.
    """

    tenant: str
    agent: str
    step: str
    start: datetime
    """Start of the window (inclusive, UTC)."""
    end: datetime
    """End of the window (exclusive, UTC)."""
    decisions: int = 0
    confidence_mean: float | None = None
    confidence_p10: float | None = None
    confidence_p50: float | None = None
    paths: dict[str, float] = field(default_factory=dict)
    """Share of the decisions per ladder path (every `LadderPath.rungs()` value, plus any other)."""
    reviewed: int = 0
    """Decisions a person reviewed (a reviewer is recorded)."""
    human_rate: float | None = None
    """Reviewed decisions over decisions."""
    override_rate: float | None = None
    """Of the reviewed decisions, those corrected or rejected by the reviewer."""
    labelled: int = 0
    """Decisions with a verdict (from feedback, else an outcome's `correct` label)."""
    accuracy: float | None = None
    """Correct over labelled."""
    runs: int = 0
    """The agent's runs started in the window."""
    failed_runs: int = 0
    error_rate: float | None = None
    """The agent's failed runs over its runs."""
    retry_rate: float | None = None
    """Decisions with more than one model attempt, over decisions."""
    latency_p50_ms: float | None = None
    latency_p95_ms: float | None = None
    cost_sum: float = 0.0
    cost_mean: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (datetimes in ISO 8601).

        Example:
            >>> m = StepMetrics(tenant="acme", agent="a", step="s",
            ...                 start=datetime(2026, 11, 1, tzinfo=UTC),
            ...                 end=datetime(2026, 11, 2, tzinfo=UTC))
            >>> m.to_dict()["start"]
            '2026-11-01T00:00:00+00:00'
        """
        data = asdict(self)
        data["start"] = self.start.isoformat()
        data["end"] = self.end.isoformat()
        return data


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) by linear interpolation between closest ranks; None if empty.

    Example:
        >>> percentile([1.0, 2.0, 3.0, 4.0], 50)
        2.5
        >>> percentile([], 90) is None
        True
    """
    if not values:
        return None
    ordered = sorted(values)
    if len(ordered) == 1:
        return float(ordered[0])
    position = (len(ordered) - 1) * min(max(q, 0.0), 100.0) / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return float(ordered[low] + (ordered[high] - ordered[low]) * fraction)


def is_correct(outcome: Any) -> bool | None:
    """The label of an outcome: `outcome["correct"]` when it is a bool, else None (unlabelled).

    Example:
        >>> is_correct({"correct": False, "label": "billing"}), is_correct({"reopened": True})
        (False, None)
    """
    if isinstance(outcome, dict):
        value = outcome.get("correct")
        if isinstance(value, bool):
            return value
    return None


def _since(value: datetime | timedelta | str | None, now: datetime) -> datetime:
    parsed = parse_since(value if value is not None else _DEFAULT_SINCE, now=now)
    assert parsed is not None
    return parsed


def _latest_feedback(tenant: str, agent: str | None, step: str | None) -> Any:
    """A subquery: each decision's latest feedback row of the tenant (`rank == 1`)."""
    f = Feedback
    ranked = sa.select(
        col(f.decision_id).label("decision_id"),
        col(f.correct).label("correct"),
        col(f.label).label("label"),
        col(f.score).label("score"),
        col(f.created_at).label("created_at"),
        # The order `feedback.latest` uses: the last row by (created_at, id) counts.
        sa.func.row_number()
        .over(
            partition_by=col(f.decision_id),
            order_by=(col(f.created_at).desc(), col(f.id).desc()),
        )
        .label("rank"),
    ).where(col(f.tenant) == tenant)
    if agent is not None:
        ranked = ranked.where(col(f.agent) == agent)
    if step is not None:
        ranked = ranked.where(col(f.step) == step)
    return ranked.subquery("latest_feedback")


def load_decisions(
    *,
    tenant: str,
    agent: str | None = None,
    step: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: tuple[datetime, str] | None = None,
    labelled_after: datetime | tuple[datetime, str] | None = None,
    limit: int | None = None,
    url: str | None = None,
) -> list[DecisionPoint]:
    """A tenant's decisions as `DecisionPoint`s, oldest first, each with its verdict.

    The verdict joins each decision's latest feedback in the same query (a window function,
    on SQLite and PostgreSQL alike), falling back to the outcome's `correct` label.

    Args:
        tenant: the tenant (mandatory).
        agent: only this agent's decisions.
        step: only this step's decisions.
        since: only decisions made at or after this instant.
        until: only decisions made before this instant.
        after: only decisions strictly after this `(created_at, id)` cursor (ties broken by id).
        labelled_after: only decisions whose label (feedback or outcome) was written after
            this instant, or strictly after this `(labelled_at, id)` cursor, ordered by
            `labelled_at`, whatever their creation time.
        limit: at most this many (the oldest).
        url: database URL; None means the settings' URL.

    Example:
        >>> load_decisions(tenant="acme", agent="triage", url="sqlite://")
        []
    """
    require_tenant(tenant)
    d = DecisionRecord
    fb = _latest_feedback(tenant, agent, step)
    outcome_at, feedback_at = col(d.outcome_at), fb.c.created_at
    labelled_at = sa.case(
        (feedback_at.is_(None), outcome_at),
        (outcome_at.is_(None), feedback_at),
        (feedback_at > outcome_at, feedback_at),
        else_=outcome_at,
    )
    columns: list[Any] = [
        d.id,
        d.agent,
        d.step,
        d.created_at,
        d.confidence,
        d.path,
        d.reviewer,
        d.correction,
        d.outcome,
        d.outcome_at,
        d.cost,
        d.latency_ms,
        d.attempts,
        d.error_class,
        d.agent_run_id,
        d.output,
        fb.c.correct,
        fb.c.label,
        fb.c.score,
        labelled_at,
    ]
    query = (
        sa.select(*columns)
        .select_from(d)
        .outerjoin(fb, (fb.c.decision_id == col(d.id)) & (fb.c.rank == 1))
        .where(col(d.tenant) == tenant)
    )
    if agent is not None:
        query = query.where(col(d.agent) == agent)
    if step is not None:
        query = query.where(col(d.step) == step)
    if since is not None:
        query = query.where(col(d.created_at) >= since)
    if until is not None:
        query = query.where(col(d.created_at) < until)
    if after is not None:
        at, last_id = after
        query = query.where(
            (col(d.created_at) > at) | ((col(d.created_at) == at) & (col(d.id) > last_id))
        )
    if labelled_after is not None:
        if isinstance(labelled_after, tuple):
            at, last_id = labelled_after
            query = query.where((labelled_at > at) | ((labelled_at == at) & (col(d.id) > last_id)))
        else:
            query = query.where(labelled_at > labelled_after)
        query = query.order_by(labelled_at, col(d.id))
    else:
        query = query.order_by(col(d.created_at), col(d.id))
    if limit is not None:
        query = query.limit(limit)
    with session(url) as s:
        rows = s.execute(query).all()
    return [
        DecisionPoint(
            id=row[0],
            agent=row[1],
            step=row[2],
            created_at=row[3],
            confidence=row[4],
            path=row[5],
            reviewer=row[6],
            corrected=row[7] is not None,
            correct=verdict_of(row[15], row[8], correct=row[16], label=row[17], score=row[18]),
            outcome_at=row[9],
            cost=float(row[10] or 0.0),
            latency_ms=row[11],
            attempts=int(row[12] or 1),
            error_class=row[13],
            agent_run_id=row[14],
            labelled_at=row[19],
        )
        for row in rows
    ]


def load_runs(
    *,
    tenant: str,
    agent: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    url: str | None = None,
) -> list[tuple[str, datetime, str]]:
    """A tenant's agent runs as `(agent, started_at, status)`, oldest first.

    Example:
        >>> load_runs(tenant="acme", agent="triage", url="sqlite://")
        []
    """
    require_tenant(tenant)
    query = select(AgentRun.agent, AgentRun.started_at, AgentRun.status).where(
        col(AgentRun.tenant) == tenant
    )
    if agent is not None:
        query = query.where(col(AgentRun.agent) == agent)
    if since is not None:
        query = query.where(col(AgentRun.started_at) >= since)
    if until is not None:
        query = query.where(col(AgentRun.started_at) < until)
    query = query.order_by(col(AgentRun.started_at), col(AgentRun.id))
    with session(url) as s:
        return [(row[0], row[1], row[2]) for row in s.exec(query).all()]


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def summarise(
    points: Iterable[DecisionPoint],
    *,
    tenant: str,
    agent: str,
    step: str,
    start: datetime,
    end: datetime,
    runs: Sequence[str] = (),
) -> StepMetrics:
    """Metrics of some decisions of one step (and the statuses of its agent's runs).

    Example:
        >>> t = datetime(2026, 11, 1, tzinfo=UTC)
        >>> p = DecisionPoint(id="1", agent="a", step="s", created_at=t, confidence=0.8,
        ...                   path="direct", reviewer=None, corrected=False, correct=True,
        ...                   outcome_at=t, cost=0.01, latency_ms=120.0, attempts=1,
        ...                   error_class=None, agent_run_id=None)
        >>> m = summarise([p], tenant="acme", agent="a", step="s", start=t, end=t,
        ...               runs=["completed", "failed"])
        >>> m.confidence_mean, m.accuracy, m.error_rate, m.paths["direct"]
        (0.8, 1.0, 0.5, 1.0)
    """
    rows = list(points)
    count = len(rows)
    confidences = [p.confidence for p in rows if p.confidence is not None]
    path_counts: dict[str, int] = {path.value: 0 for path in LadderPath.rungs()}
    for p in rows:
        path_counts[p.path] = path_counts.get(p.path, 0) + 1
    reviewed = [p for p in rows if p.reviewer is not None]
    overridden = [p for p in reviewed if p.corrected or p.path != LadderPath.HUMAN]
    labels = [p.correct for p in rows if p.correct is not None]
    latencies = [p.latency_ms for p in rows if p.latency_ms is not None]
    costs = [p.cost for p in rows]
    failed = sum(1 for status in runs if status == "failed")
    return StepMetrics(
        tenant=tenant,
        agent=agent,
        step=step,
        start=start,
        end=end,
        decisions=count,
        confidence_mean=_mean(confidences),
        confidence_p10=percentile(confidences, 10),
        confidence_p50=percentile(confidences, 50),
        paths={name: (n / count if count else 0.0) for name, n in path_counts.items()},
        reviewed=len(reviewed),
        human_rate=len(reviewed) / count if count else None,
        override_rate=len(overridden) / len(reviewed) if reviewed else None,
        labelled=len(labels),
        accuracy=sum(1 for ok in labels if ok) / len(labels) if labels else None,
        runs=len(runs),
        failed_runs=failed,
        error_rate=failed / len(runs) if runs else None,
        retry_rate=sum(1 for p in rows if p.attempts > 1) / count if count else None,
        latency_p50_ms=percentile(latencies, 50),
        latency_p95_ms=percentile(latencies, 95),
        cost_sum=sum(costs),
        cost_mean=_mean(costs),
    )


def window_metrics(
    *,
    tenant: str,
    agent: str | None = None,
    step: str | None = None,
    since: datetime | timedelta | str | None = "1d",
    until: datetime | None = None,
    bucket: timedelta | str | None = None,
    url: str | None = None,
) -> list[StepMetrics]:
    """Metrics per (agent, step) of one tenant over a window, optionally per time bucket.

    Args:
        tenant: the tenant (mandatory; another tenant's rows are never read).
        agent: only this agent.
        step: only this reasoning step.
        since: start of the window: `"1d"`, `"6h"`, an ISO date, a timedelta or a datetime;
            None means one day.
        until: end of the window (exclusive); None means now.
        bucket: cut the window into buckets this long (`"1h"`, a timedelta), aligned on
            `since`; None gives one `StepMetrics` per step for the whole window. Empty buckets
            are returned too (with `decisions=0`), so plots over time have no gaps.
        url: database URL; None means the settings' URL.

    Returns:
        `StepMetrics`, sorted by agent, step and start.

    Raises:
        ValueError: no tenant, a bad `since` or `bucket`, or more than 2000 buckets.

    Example:
        >>> window_metrics(tenant="acme", since="7d", bucket="1d", url="sqlite://")
        []
    """
    require_tenant(tenant)
    now = as_utc(until) if until is not None else datetime.now(UTC)
    start = _since(since, now)
    points = load_decisions(tenant=tenant, agent=agent, step=step, since=start, until=now, url=url)
    runs = load_runs(tenant=tenant, agent=agent, since=start, until=now, url=url)
    if bucket is None:
        edges = [start, now]
    else:
        size = parse_age(bucket)
        count = math.ceil((now - start) / size)
        if count > _MAX_BUCKETS:
            raise ValueError(f"bucket={bucket!r} cuts the window into {count} buckets (max 2000)")
        edges = [start + size * i for i in range(count)] + [now]

    def index(at: datetime) -> int:
        return min(max(bisect.bisect_right(edges, at) - 1, 0), len(edges) - 2)

    grouped: dict[tuple[str, str], list[list[DecisionPoint]]] = defaultdict(
        lambda: [[] for _ in range(len(edges) - 1)]
    )
    for p in points:
        grouped[(p.agent, p.step)][index(p.created_at)].append(p)
    statuses: dict[str, list[list[str]]] = defaultdict(lambda: [[] for _ in range(len(edges) - 1)])
    for run_agent, started, status in runs:
        statuses[run_agent][index(started)].append(status)
    result: list[StepMetrics] = []
    for (agent_name, step_name), buckets in sorted(grouped.items()):
        for i, rows in enumerate(buckets):
            result.append(
                summarise(
                    rows,
                    tenant=tenant,
                    agent=agent_name,
                    step=step_name,
                    start=edges[i],
                    end=edges[i + 1],
                    runs=statuses[agent_name][i] if agent_name in statuses else (),
                )
            )
    return result
