"""Queries: the tenant-scoped read API over runs, steps, memory and actions, and the run writers.

Every reader takes a keyword-only, mandatory `tenant` and filters on it: no public function here
reads across tenants. The writers (`record_run_start`, `record_run_end`, `record_steps`) are what
the runtime calls; each is one short transaction.

Example:
    >>> from agents.store import queries
    >>> queries.runs(tenant="nobody", url="sqlite://")
    []
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, update
from sqlalchemy.orm import aliased
from sqlmodel import col, select

from agents.store._convert import as_utc, require_tenant
from agents.store.engine import reconnecting, session
from agents.store.tables import (
    ActionRecord,
    AgentRun,
    DecisionRecord,
    MemoryItem,
    StepRun,
    utcnow,
)

__all__ = [
    "RunEvidence",
    "actions",
    "latest_statuses",
    "memory",
    "record_run_end",
    "record_run_start",
    "record_steps",
    "run_evidence",
    "runs",
    "steps",
]


@reconnecting
def runs(
    *,
    tenant: str,
    agent: str | None = None,
    status: str | None = None,
    since: datetime | None = None,
    limit: int = 100,
    latest: bool = False,
    url: str | None = None,
    subject: str | None = None,
    run_id: str | None = None,
) -> list[AgentRun]:
    """A tenant's agent runs, newest first.

    Args:
        tenant: the tenant (mandatory).
        agent: only this agent's runs.
        status: only runs in this status (running, completed, held, awaiting_review, failed,
            conflict, superseded, crashed).
        since: only runs started at or after this instant (naive means UTC).
        subject: only runs about this subject.
        run_id: only the run with this id.
        limit: at most this many rows.
        latest: only the latest execution of each run key (one row per input, however many
            times it ran: a rerun after a crash adds executions, not inputs); `status` then
            filters those latest executions. False: every execution (the history).
        url: database URL; None means the settings' URL.

    Example:
        >>> runs(tenant="nobody", agent="triage", status="failed", url="sqlite://")
        []
        >>> runs(tenant="nobody", latest=True, url="sqlite://")
        []
    """
    require_tenant(tenant)
    where = [col(AgentRun.tenant) == tenant]
    if agent is not None:
        where.append(col(AgentRun.agent) == agent)
    if since is not None:
        where.append(col(AgentRun.started_at) >= since)
    if subject is not None:
        where.append(col(AgentRun.subject) == subject)
    if run_id is not None:
        where.append(col(AgentRun.id) == run_id)
    if not latest:
        query = select(AgentRun).where(*where)
        if status is not None:
            query = query.where(col(AgentRun.status) == status)
        query = query.order_by(col(AgentRun.started_at).desc(), col(AgentRun.id).desc())
        with session(url) as s:
            return list(s.exec(query.limit(limit)).all())
    newest_first = (col(AgentRun.started_at).desc(), col(AgentRun.id).desc())
    rank = func.row_number().over(
        partition_by=(col(AgentRun.agent), col(AgentRun.run_key)), order_by=newest_first
    )
    ranked = select(AgentRun, rank.label("execution_rank")).where(*where).subquery()
    run = aliased(AgentRun, ranked)
    latest_runs = select(run).where(ranked.c.execution_rank == 1)
    if status is not None:
        latest_runs = latest_runs.where(ranked.c.status == status)
    latest_runs = latest_runs.order_by(ranked.c.started_at.desc(), ranked.c.id.desc())
    with session(url) as s:
        return list(s.exec(latest_runs.limit(limit)).all())


@reconnecting
def latest_statuses(
    *, tenant: str, agent: str, run_keys: list[str], url: str | None = None
) -> dict[str, str]:
    """The status of the latest execution of each run key that has one (by the
    `(tenant, agent, run_key)` index).

    Example:
        >>> latest_statuses(tenant="nobody", agent="triage", run_keys=["k"], url="sqlite://")
        {}
    """
    require_tenant(tenant)
    found: dict[str, tuple[datetime, str, str]] = {}
    wanted = sorted(set(run_keys))
    with session(url) as s:
        for start in range(0, len(wanted), 500):
            query = select(AgentRun.run_key, AgentRun.started_at, AgentRun.id, AgentRun.status)
            query = query.where(
                col(AgentRun.tenant) == tenant,
                col(AgentRun.agent) == agent,
                col(AgentRun.run_key).in_(wanted[start : start + 500]),
            )
            for run_key, started_at, run_id, status in s.exec(query).all():
                if run_key not in found or (started_at, run_id) > found[run_key][:2]:
                    found[run_key] = (started_at, run_id, status)
    return {key: status for key, (_, _, status) in found.items()}


@reconnecting
def steps(*, tenant: str, agent_run_id: str, url: str | None = None) -> list[StepRun]:
    """The steps of one agent run, in the order they started.

    Example:
        >>> steps(tenant="acme", agent_run_id="0" * 32, url="sqlite://")
        []
    """
    require_tenant(tenant)
    query = (
        select(StepRun)
        .where(col(StepRun.tenant) == tenant, col(StepRun.agent_run_id) == agent_run_id)
        .order_by(col(StepRun.started_at), col(StepRun.id))
    )
    with session(url) as s:
        return list(s.exec(query).all())


@dataclass(frozen=True)
class RunEvidence:
    """Where to look for what one run did: its task runs (by step) and its decisions."""

    task_run_ids: dict[str, str]
    """Step name → the Prefect task run that executed it (steps taken from a stored result or
    skipped have none)."""
    decision_ids: list[str]
    """The decision-log rows the run wrote, in the order they were made."""


@reconnecting
def run_evidence(
    *, tenant: str, run_ids: list[str], url: str | None = None
) -> dict[str, RunEvidence]:
    """The task run ids and decision ids of some of a tenant's runs (two queries in all).

    A run id of another tenant gives nothing: both tables are filtered on `tenant`.

    Example:
        >>> run_evidence(tenant="acme", run_ids=["0" * 32], url="sqlite://")
        {'00000000000000000000000000000000': RunEvidence(task_run_ids={}, decision_ids=[])}
    """
    require_tenant(tenant)
    found = {run_id: RunEvidence({}, []) for run_id in run_ids}
    if not run_ids:
        return found
    steps_query = (
        select(StepRun.agent_run_id, StepRun.step, StepRun.task_run_id)
        .where(col(StepRun.tenant) == tenant, col(StepRun.agent_run_id).in_(run_ids))
        .order_by(col(StepRun.started_at), col(StepRun.id))
    )
    decisions_query = (
        select(DecisionRecord.agent_run_id, DecisionRecord.id)
        .where(col(DecisionRecord.tenant) == tenant, col(DecisionRecord.agent_run_id).in_(run_ids))
        .order_by(col(DecisionRecord.created_at), col(DecisionRecord.id))
    )
    with session(url) as s:
        for run_id, step, task_run_id in s.exec(steps_query).all():
            if task_run_id:
                found[run_id].task_run_ids[step] = task_run_id
        for decided_in, decision_id in s.exec(decisions_query).all():
            if decided_in is not None:
                found[decided_in].decision_ids.append(decision_id)
    return found


@reconnecting
def memory(
    *,
    tenant: str,
    agent: str | None = None,
    subject: str | None = None,
    url: str | None = None,
) -> list[MemoryItem]:
    """A tenant's memory rows, optionally one agent's and one subject's (None: all subjects).

    Example:
        >>> memory(tenant="nobody", agent="triage", url="sqlite://")
        []
    """
    require_tenant(tenant)
    query = select(MemoryItem).where(col(MemoryItem.tenant) == tenant)
    if agent is not None:
        query = query.where(col(MemoryItem.agent) == agent)
    if subject is not None:
        query = query.where(col(MemoryItem.subject) == subject)
    query = query.order_by(col(MemoryItem.agent), col(MemoryItem.subject), col(MemoryItem.key))
    with session(url) as s:
        return list(s.exec(query).all())


@reconnecting
def actions(*, tenant: str, agent: str | None = None, url: str | None = None) -> list[ActionRecord]:
    """A tenant's action ledger, newest first.

    Example:
        >>> actions(tenant="nobody", url="sqlite://")
        []
    """
    require_tenant(tenant)
    query = select(ActionRecord).where(col(ActionRecord.tenant) == tenant)
    if agent is not None:
        query = query.where(col(ActionRecord.agent) == agent)
    query = query.order_by(col(ActionRecord.started_at).desc())
    with session(url) as s:
        return list(s.exec(query).all())


def _row(model: AgentRun | StepRun) -> dict[str, Any]:
    return {name: getattr(model, name) for name in type(model).model_fields}


def record_run_start(run: AgentRun, url: str | None = None) -> None:
    """Insert an agent run (usually with status `running`). The object itself is not attached.

    Example:
        >>> record_run_start(AgentRun(tenant="acme", agent="triage", run_key="k", status="running",
        ...                           inputs_digest="0" * 64), url="sqlite://")
    """
    require_tenant(run.tenant)
    with session(url) as s:
        s.exec(insert(AgentRun).values(**_row(run)))


def record_run_end(
    run_id: str,
    *,
    tenant: str,
    status: str,
    error: str | None = None,
    finished_at: datetime | None = None,
    duration_ms: float | None = None,
    url: str | None = None,
) -> bool:
    """Record how an agent run ended.

    Args:
        run_id: the run's id.
        tenant: its tenant (a run of another tenant is never touched).
        status: completed, held or failed.
        error: the error message, if any.
        finished_at: when it ended; default now.
        duration_ms: how long it took; default `finished_at - started_at`.
        url: database URL; None means the settings' URL.

    Returns:
        True if the run was found and updated.

    Example:
        >>> record_run_end("0" * 32, tenant="acme", status="completed", url="sqlite://")
        False
    """
    require_tenant(tenant)
    finished = as_utc(finished_at) if finished_at is not None else utcnow()
    scope = (col(AgentRun.id) == run_id, col(AgentRun.tenant) == tenant)
    with session(url) as s:
        if duration_ms is None:
            started = s.exec(select(AgentRun.started_at).where(*scope)).one_or_none()
            if started is None:
                return False
            duration_ms = (finished - started).total_seconds() * 1000
        result = s.exec(
            update(AgentRun)
            .where(*scope)
            .values(status=status, error=error, finished_at=finished, duration_ms=duration_ms)
        )
        return bool(result.rowcount)


def record_steps(rows: list[StepRun], url: str | None = None) -> None:
    """Insert step runs in one transaction (one multi-row insert).

    Example:
        >>> record_steps([], url="sqlite://")
    """
    if not rows:
        return
    for row in rows:
        require_tenant(row.tenant)
    with session(url) as s:
        s.exec(insert(StepRun), params=[_row(row) for row in rows])
