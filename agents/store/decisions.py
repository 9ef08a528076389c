"""Decision log storage: write decisions, read them back by tenant, record outcomes, prune.

The store half of the decision log: it owns the SQL, including the one query (`find_decisions`,
public as `agents.decisions.query`, the facade over this module). Every function is
tenant-scoped: a read or an outcome never crosses tenants. `prune` is the one
operator function that may span all tenants (tenant None); it deletes in short, bounded
batches so it never holds a long lock on a busy database.

Example:
    >>> from agents.store.decisions import find_decisions, record_decisions
    >>> from agents.store.tables import DecisionRecord
    >>> record_decisions([DecisionRecord(tenant="acme", agent="triage", step="route",
    ...                                  input_digest="0" * 64, confidence=0.4)], url="sqlite://")
    >>> [d.confidence for d in find_decisions(tenant="acme", below=0.5, url="sqlite://")]
    [0.4]
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy import ColumnElement, delete, update
from sqlmodel import Session, SQLModel, col, select

from agents.store._convert import as_utc, parse_since, require_tenant, to_json_value
from agents.store._group import database_of, shared
from agents.store._writes import insert_ignoring, upsert
from agents.store.engine import reconnecting, retrying, session
from agents.store.tables import (
    ActionRecord,
    AgentRun,
    DecisionRecord,
    ExampleUse,
    LLMCacheEntry,
    StepResult,
    StepRun,
    utcnow,
)

__all__ = [
    "MAX_BATCH_SIZE",
    "PRUNED_CACHE_TABLES",
    "PRUNED_TABLES",
    "find_decisions",
    "get_decision",
    "logged_decision",
    "prune",
    "record_decisions",
    "set_outcome",
]

MAX_BATCH_SIZE = 10_000
"""Largest `prune` batch (one `IN (...)` list: stays far below every driver's parameter limit)."""

PRUNED_TABLES = ("agent_run", "step_run", "decision_record", "step_result", "action_record")
#: Also pruned with `caches=True`: rows that grow with every run but are not history.
PRUNED_CACHE_TABLES = ("llm_cache", "example_use")
"""The tables `prune` deletes from, in the order of its result."""

_JSON_FIELDS = ("input_snapshot", "output", "logprobs", "correction", "tool_calls", "outcome")


def _row(record: DecisionRecord) -> dict[str, Any]:
    row = {name: getattr(record, name) for name in DecisionRecord.model_fields}
    for name in _JSON_FIELDS:
        row[name] = to_json_value(row[name], what=f"DecisionRecord.{name}")
    if row["created_at"] is None:
        row["created_at"] = utcnow()
    return row


def record_decisions(rows: list[DecisionRecord], url: str | None = None) -> None:
    """Insert decisions in one transaction (one multi-row insert); survives a lost connection
    and never inserts a decision twice (rows are keyed by their id).

    JSON fields (`input_snapshot`, `output`, `logprobs`, `correction`, `outcome`) must be JSON
    values or pydantic models; datetimes are stored in UTC. The objects themselves are not
    attached to any session.

    Args:
        rows: the decisions; each must have a non-empty tenant.
        url: database URL; None means the settings' URL.

    Raises:
        ValueError: a row has no tenant.
        TypeError: a JSON field holds something that is not JSON.

    Example:
        >>> record_decisions([DecisionRecord(tenant="acme", agent="triage", step="route",
        ...                                  input_digest="0" * 64)], url="sqlite://")
    """
    if not rows:
        return

    def write(_retry: bool) -> None:
        with session(url) as s:
            record_decisions_in(s, rows)

    retrying(write, what="decision log write")


def record_decisions_in(
    s: Session, rows: list[DecisionRecord], *, recovered: list[DecisionRecord] | None = None
) -> None:
    """Write decisions within an open session (a batched record flush).

    A row whose id is stored already (a retried write, the same decision logged by a twin
    execution, a row recovered by a rerun) is overwritten: what the execution that made the
    decision logs is the record. `recovered` rows only fill a gap: inserted where no row with
    their id is stored, else dropped.
    """
    for row in [*rows, *(recovered or ())]:
        require_tenant(row.tenant)
    upsert(s, DecisionRecord, [_row(row) for row in rows], _UPDATED_COLUMNS)
    insert_ignoring(s, DecisionRecord, [_row(row) for row in recovered or ()])


_UPDATED_COLUMNS = tuple(name for name in DecisionRecord.model_fields if name != "id")


def logged_decision(
    *,
    tenant: str,
    agent: str,
    step: str,
    run_key: str,
    input_digest: str,
    url: str | None = None,
) -> DecisionRecord | None:
    """The decision a reasoning step logged for this run key and these inputs (the latest;
    shadow decisions aside), or None: what a rerun that takes the step from the cache reports.

    Example:
        >>> logged_decision(tenant="acme", agent="triage", step="route", run_key="t-1",
        ...                 input_digest="0" * 64, url="sqlite://") is None
        True
    """
    require_tenant(tenant)
    key = (tenant, agent, step, run_key, input_digest)
    return _logged_together(database_of(url), [key])[0]


async def alogged_decision(
    *,
    tenant: str,
    agent: str,
    step: str,
    run_key: str,
    input_digest: str,
    url: str | None = None,
) -> DecisionRecord | None:
    """Async `logged_decision`: the lookups of one event loop that arrive while a query runs
    share the next one (a rerun of a batch makes one per cached decision)."""
    require_tenant(tenant)
    key = (tenant, agent, step, run_key, input_digest)
    found: DecisionRecord | None = await shared(_logged_together, database_of(url), key)
    return found


#: tenant, agent, step, run key, input digest.
_DecisionKey = tuple[str, str, str, str, str]


#: The decisions logged for some run keys of one tenant and agent, shadow decisions left out;
#: built once (see `_writes._ignoring`). It searches the (tenant, agent, run_key) index: a
#: row-value IN over all five key columns scanned the whole table on SQLite.
_LOGGED = select(DecisionRecord).where(
    col(DecisionRecord.tenant) == sa.bindparam("tenant"),
    col(DecisionRecord.agent) == sa.bindparam("agent"),
    col(DecisionRecord.run_key).in_(sa.bindparam("run_keys", expanding=True)),
    col(DecisionRecord.path) != "shadow",
)


@reconnecting
def _logged_together(url: str, keys: list[_DecisionKey]) -> list[DecisionRecord | None]:
    """Concurrent `logged_decision`s: one query per tenant and agent among them (usually
    one); the latest row of each key."""
    wanted = set(keys)
    run_keys: dict[tuple[str, str], set[str]] = {}
    for tenant, agent, _, run_key, _ in wanted:
        run_keys.setdefault((tenant, agent), set()).add(run_key)
    latest: dict[_DecisionKey, DecisionRecord] = {}
    with session(url) as s:
        for (tenant, agent), of_owner in sorted(run_keys.items()):
            params = {"tenant": tenant, "agent": agent, "run_keys": sorted(of_owner)}
            for row in s.exec(_LOGGED, params=params):
                key = (row.tenant, row.agent, row.step, row.run_key or "", row.input_digest)
                if key not in wanted:  # another step of the run, or other inputs
                    continue
                seen = latest.get(key)
                if seen is None or as_utc(row.created_at) > as_utc(seen.created_at):
                    latest[key] = row
    return [latest.get(key) for key in keys]


@reconnecting
def find_decisions(
    *,
    tenant: str,
    agent: str | None = None,
    step: str | None = None,
    since: datetime | timedelta | str | None = None,
    below: float | None = None,
    path: str | None = None,
    subject: str | None = None,
    limit: int = 100,
    url: str | None = None,
) -> list[DecisionRecord]:
    """A tenant's decisions, newest first, filtered: the one decision-log query (public as
    `agents.decisions.query`).

    Example:
        >>> find_decisions(tenant="acme", agent="triage", since="6h", path="human",
        ...                url="sqlite://")
        []

    Args:
        tenant: the tenant (mandatory; another tenant's decisions are never returned).
        agent: only this agent's decisions.
        step: only this reasoning step's decisions.
        since: only decisions made since then: `"1d"`, `"6h"`, `"30m"`, an ISO string, a
            timedelta (that long ago) or a datetime (naive means UTC); see `parse_since`.
        below: only decisions with a confidence strictly below this (unscored ones excluded).
        path: only decisions reached this way, a `LadderPath` value: direct, fallback_model,
            human, default, held, rejected or shadow.
        subject: only decisions about this subject.
        limit: at most this many (the newest; at least 1).
        url: database URL; None means the settings' URL.

    Returns:
        `DecisionRecord` rows (detached; their datetimes aware, in UTC).

    Raises:
        ValueError: no tenant, a bad `since`, or a limit below 1.
    """
    cutoff = parse_since(since)
    require_tenant(tenant)
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    query = select(DecisionRecord).where(col(DecisionRecord.tenant) == tenant)
    if agent is not None:
        query = query.where(col(DecisionRecord.agent) == agent)
    if step is not None:
        query = query.where(col(DecisionRecord.step) == step)
    if cutoff is not None:
        query = query.where(col(DecisionRecord.created_at) >= cutoff)
    if below is not None:
        query = query.where(col(DecisionRecord.confidence) < below)
    if path is not None:
        query = query.where(col(DecisionRecord.path) == path)
    if subject is not None:
        query = query.where(col(DecisionRecord.subject) == subject)
    query = query.order_by(
        col(DecisionRecord.created_at).desc(), col(DecisionRecord.id).desc()
    ).limit(limit)
    with session(url) as s:
        return list(s.exec(query).all())


@reconnecting
def get_decision(decision_id: str, *, tenant: str, url: str | None = None) -> DecisionRecord | None:
    """One decision by id, or None if that tenant has no such decision.

    Example:
        >>> get_decision("0" * 32, tenant="acme", url="sqlite://") is None
        True
    """
    require_tenant(tenant)
    query = select(DecisionRecord).where(
        col(DecisionRecord.id) == decision_id, col(DecisionRecord.tenant) == tenant
    )
    with session(url) as s:
        return s.exec(query).one_or_none()


@reconnecting
def set_outcome(decision_id: str, *, tenant: str, outcome: Any, url: str | None = None) -> bool:
    """Record what came of a decision (a later learning step, feedback, a label).

    Overwrites any earlier outcome and stamps `outcome_at` with now.

    Args:
        decision_id: the decision's id.
        tenant: its tenant (a decision of another tenant is never touched).
        outcome: any JSON value or pydantic model, e.g. `{"correct": False, "label": "billing"}`.
        url: database URL; None means the settings' URL.

    Returns:
        True if the decision was found in that tenant and updated, else False.

    Raises:
        ValueError: no tenant.
        TypeError: the outcome is not JSON.

    Example:
        >>> set_outcome("0" * 32, tenant="acme", outcome={"correct": True}, url="sqlite://")
        False
    """
    require_tenant(tenant)
    value = to_json_value(outcome, what="outcome")
    with session(url) as s:
        result = s.exec(
            update(DecisionRecord)
            .where(col(DecisionRecord.id) == decision_id, col(DecisionRecord.tenant) == tenant)
            .values(outcome=value, outcome_at=utcnow())
        )
        return bool(result.rowcount)


# -- retention ----------------------------------------------------------------------------------


def _delete_in_batches(
    table: type[SQLModel],
    key: Any,
    condition: ColumnElement[bool],
    batch_size: int,
    url: str | None,
    before_delete: Callable[[Session, list[Any]], None] | None = None,
) -> int:
    """Delete the rows matching `condition`, `batch_size` at a time, one transaction each.

    `before_delete(session, ids)` runs first in each batch's transaction (to delete dependants).
    """
    deleted = 0
    while True:
        with session(url) as s:
            ids = list(s.exec(select(key).where(condition).limit(batch_size)).all())
            if not ids:
                return deleted
            if before_delete is not None:
                before_delete(s, ids)
            result = s.exec(delete(table).where(key.in_(ids), condition))
            deleted += result.rowcount
        if len(ids) < batch_size:
            return deleted


def prune(
    *,
    older_than: timedelta,
    batch_size: int = 500,
    url: str | None = None,
    tenant: str | None = None,
    caches: bool = False,
) -> dict[str, int]:
    """Delete state older than a cutoff, in short batches (the retention job, `stalwart prune`).

    Deleted, when older than `now - older_than`: agent runs (by `started_at`) with all their
    step runs, any other step runs (by `started_at`), decisions (`created_at`), step results
    (`created_at`), and *completed* action records (`completed_at`). Action records still
    `started` are kept: they guard an action that may be in flight. Note that a pruned action
    record no longer prevents its action from running again for the same run key.

    Each batch selects at most `batch_size` ids, deletes them and commits, so no table is locked
    for long and concurrent runs go on; an interrupted prune can simply be run again.

    Args:
        older_than: the age beyond which rows are deleted (must be positive).
        batch_size: rows per transaction, 1 to `MAX_BATCH_SIZE`.
        url: database URL; None means the settings' URL.
        tenant: only this tenant's rows; None prunes every tenant (an operator's job).
        caches: also delete model answers cached before the cutoff (`llm_cache`, by
            `created_at`: a prompt asked again is asked of the model again) and records of
            few-shot example use (`example_use`). Every prompt that holds a unique id caches
            one answer per run, so without this the cache grows with the run count.

    Returns:
        Rows deleted per table: `agent_run`, `step_run`, `decision_record`, `step_result`,
        `action_record`, and with `caches` also `llm_cache` and `example_use`.

    Raises:
        ValueError: a non-positive age, a batch size out of range, or an empty tenant.

    Example:
        >>> from datetime import timedelta
        >>> prune(older_than=timedelta(days=90), url="sqlite://")["decision_record"]
        0
    """
    if older_than <= timedelta(0):
        raise ValueError(f"older_than must be positive, got {older_than}")
    if not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f"batch_size must be between 1 and {MAX_BATCH_SIZE}, got {batch_size}")
    if tenant is not None:
        require_tenant(tenant)
    cutoff = utcnow() - older_than

    def scoped(condition: ColumnElement[bool], tenant_column: Any) -> ColumnElement[bool]:
        if tenant is None:
            return condition
        return sa.and_(condition, tenant_column == tenant)

    counts = dict.fromkeys(PRUNED_TABLES, 0)

    def delete_steps_of_runs(s: Session, run_ids: list[Any]) -> None:
        result = s.exec(delete(StepRun).where(col(StepRun.agent_run_id).in_(run_ids)))
        counts["step_run"] += result.rowcount

    counts["agent_run"] = _delete_in_batches(
        AgentRun,
        col(AgentRun.id),
        scoped(col(AgentRun.started_at) < cutoff, col(AgentRun.tenant)),
        batch_size,
        url,
        before_delete=delete_steps_of_runs,
    )
    counts["step_run"] += _delete_in_batches(
        StepRun,
        col(StepRun.id),
        scoped(col(StepRun.started_at) < cutoff, col(StepRun.tenant)),
        batch_size,
        url,
    )
    counts["decision_record"] = _delete_in_batches(
        DecisionRecord,
        col(DecisionRecord.id),
        scoped(col(DecisionRecord.created_at) < cutoff, col(DecisionRecord.tenant)),
        batch_size,
        url,
    )
    counts["step_result"] = _delete_in_batches(
        StepResult,
        col(StepResult.key),
        scoped(col(StepResult.created_at) < cutoff, col(StepResult.tenant)),
        batch_size,
        url,
    )
    counts["action_record"] = _delete_in_batches(
        ActionRecord,
        col(ActionRecord.idempotency_key),
        scoped(
            sa.and_(
                col(ActionRecord.status) == "completed",
                col(ActionRecord.completed_at) < cutoff,
            ),
            col(ActionRecord.tenant),
        ),
        batch_size,
        url,
    )
    if caches:
        counts["llm_cache"] = _delete_in_batches(
            LLMCacheEntry,
            col(LLMCacheEntry.key),
            scoped(col(LLMCacheEntry.created_at) < cutoff, col(LLMCacheEntry.tenant)),
            batch_size,
            url,
        )
        counts["example_use"] = _delete_in_batches(
            ExampleUse,
            col(ExampleUse.id),
            scoped(col(ExampleUse.created_at) < cutoff, col(ExampleUse.tenant)),
            batch_size,
            url,
        )
    return counts
