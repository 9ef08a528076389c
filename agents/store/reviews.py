"""Review requests: decisions waiting for a person, stored per tenant, answered once.

Every function is scoped to one tenant. An answer is one conditional UPDATE (`state` still
`pending`, deadline not passed), so two people answering the same review at once, from any
door, cannot both win: the second gets `ReviewClosed`.

Example:
    >>> from datetime import timedelta
    >>> url = "sqlite://"
    >>> row, new = request_review(ReviewRequest(tenant="acme", agent="triage", step="route",
    ...     run_key="t-1", deadline_at=utcnow() + timedelta(days=1)), url=url)
    >>> new, row.state
    (True, 'pending')
    >>> answer_review(row.id, tenant="acme", verdict="approve", reviewer="ana", url=url).state
    'answered'
    >>> answer_review(row.id, tenant="acme", verdict="reject", reviewer="bo", url=url)
    Traceback (most recent call last):
    ...
    agents.errors.ReviewClosed: review ... was answered already (approve by ana)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import update
from sqlmodel import Session, col, select

from agents.errors import ReviewClosed, ReviewNotFound
from agents.store._convert import require_tenant, to_json_value
from agents.store._writes import _insert
from agents.store.engine import reconnecting, retrying, session
from agents.store.tables import AgentRun, ReviewRequest, utcnow

__all__ = [
    "VERDICTS",
    "answer_review",
    "expire_due",
    "find_review",
    "get_review",
    "list_reviews",
    "mark_continued_in",
    "request_review",
    "set_review_flow_run",
    "supersede_in",
    "to_continue",
]

Verdict = Literal["approve", "correct", "reject"]
VERDICTS: tuple[str, ...] = ("approve", "correct", "reject")


def request_review(row: ReviewRequest, *, url: str | None = None) -> tuple[ReviewRequest, bool]:
    """Store `row` unless its run's step has a request already; the stored request, and
    whether it is the one just stored (an execution never asks twice for the same decision)."""
    require_tenant(row.tenant)
    values = {name: getattr(row, name) for name in ReviewRequest.model_fields}
    for name in ("proposed", "decision_schema", "inputs", "run_input", "correction"):
        values[name] = to_json_value(values[name], what=f"ReviewRequest.{name}")

    def write(_retry: bool) -> None:
        with session(url) as s:
            statement = _insert(s, ReviewRequest)
            # Any conflict (the id, or the run's step asked before): keep what is stored.
            s.exec(statement.on_conflict_do_nothing(), params=[values])

    retrying(write, what="review request")
    stored = find_review(
        tenant=row.tenant, agent=row.agent, run_key=row.run_key, step=row.step, url=url
    )
    assert stored is not None  # just written, or written before
    return stored, stored.id == row.id


@reconnecting
def find_review(
    *, tenant: str, agent: str, run_key: str, step: str, url: str | None = None
) -> ReviewRequest | None:
    """The request of one run's step, if it was ever asked."""
    require_tenant(tenant)
    query = select(ReviewRequest).where(
        col(ReviewRequest.tenant) == tenant,
        col(ReviewRequest.agent) == agent,
        col(ReviewRequest.run_key) == run_key,
        col(ReviewRequest.step) == step,
    )
    with session(url) as s:
        return s.exec(query).first()


@reconnecting
def get_review(review_id: str, *, tenant: str, url: str | None = None) -> ReviewRequest | None:
    """One review of `tenant` by id; None for an unknown id or another tenant's review."""
    require_tenant(tenant)
    with session(url) as s:
        row = s.get(ReviewRequest, review_id)
    return row if row is not None and row.tenant == tenant else None


@reconnecting
def list_reviews(
    *,
    tenant: str,
    agent: str | None = None,
    state: str | None = None,
    limit: int = 1000,
    url: str | None = None,
) -> list[ReviewRequest]:
    """The tenant's reviews, oldest first (the order a queue of people works through)."""
    require_tenant(tenant)
    query = select(ReviewRequest).where(col(ReviewRequest.tenant) == tenant)
    if agent is not None:
        query = query.where(col(ReviewRequest.agent) == agent)
    if state is not None:
        query = query.where(col(ReviewRequest.state) == state)
    query = query.order_by(col(ReviewRequest.created_at), col(ReviewRequest.id)).limit(limit)
    with session(url) as s:
        return list(s.exec(query).all())


def answer_review(
    review_id: str,
    *,
    tenant: str,
    verdict: str,
    reviewer: str,
    correction: dict[str, Any] | None = None,
    now: datetime | None = None,
    url: str | None = None,
) -> ReviewRequest:
    """Record a verdict on a pending review of `tenant`: exactly one answer ever wins.

    Raises:
        ValueError: the verdict, correction or reviewer is malformed.
        ReviewNotFound: no such review for this tenant.
        ReviewClosed: it was answered already, or its deadline passed.
    """
    require_tenant(tenant)
    check_answer(verdict, correction, reviewer)
    when = now or utcnow()
    row = get_review(review_id, tenant=tenant, url=url)
    if row is None:
        raise ReviewNotFound(f"no review {review_id!r} for tenant {tenant!r}")
    if row.state == "pending" and correction:
        check_correction(row, correction)
    table = ReviewRequest.metadata.tables["review_request"]
    statement = (
        update(table)
        .where(
            table.c.id == review_id,
            table.c.tenant == tenant,
            table.c.state == "pending",
            table.c.deadline_at > when,
        )
        .values(
            state="answered",
            verdict=verdict,
            reviewer=reviewer[:200],
            correction=to_json_value(correction, what="correction") if correction else None,
            answered_at=when,
        )
    )

    def write(retry: bool) -> int:
        with session(url) as s:
            if retry:  # the first attempt may have committed: is it ours?
                stored = s.get(ReviewRequest, review_id)
                if stored is not None and _is_this_answer(stored, verdict, reviewer, when):
                    return 1
            return int(s.connection().execute(statement).rowcount or 0)

    if not retrying(write, what="review answer"):
        stored = get_review(review_id, tenant=tenant, url=url)
        assert stored is not None
        if stored.state == "answered":
            raise ReviewClosed(
                f"review {review_id} was answered already ({stored.verdict} by {stored.reviewer})"
            )
        raise ReviewClosed(
            f"review {review_id} expired at {stored.deadline_at:%Y-%m-%d %H:%M} UTC: "
            "the step's safe default applies"
        )
    answered = get_review(review_id, tenant=tenant, url=url)
    assert answered is not None
    return answered


def _is_this_answer(row: ReviewRequest, verdict: str, reviewer: str, when: datetime) -> bool:
    return (
        row.state == "answered"
        and row.verdict == verdict
        and row.reviewer == reviewer[:200]
        and row.answered_at is not None
        and abs((row.answered_at - when).total_seconds()) < 1e-3
    )


def check_correction(row: ReviewRequest, correction: dict[str, Any]) -> None:
    """A correction names fields of the proposed decision and, merged into it, still fits the
    decision's type (checked against its JSON schema, kept with the request)."""
    fields = sorted(row.proposed or {})
    unknown = sorted(set(correction) - set(fields))
    if unknown:
        raise ValueError(
            f"correction: {unknown} are not fields of the proposed decision (fields: {fields})"
        )
    if not row.decision_schema:
        return
    import jsonschema

    merged = {**(row.proposed or {}), **correction}
    try:
        jsonschema.validate(merged, row.decision_schema)
    except jsonschema.ValidationError as exc:
        where = ".".join(str(p) for p in exc.absolute_path) or "decision"
        raise ValueError(f"correction: {where}: {exc.message}"[:500]) from None


def check_answer(verdict: str, correction: dict[str, Any] | None, reviewer: str) -> None:
    """Refuse a malformed answer with a message that says what to send instead."""
    if verdict not in VERDICTS:
        raise ValueError(f"verdict {verdict!r}: use one of {', '.join(VERDICTS)}")
    if verdict == "correct":
        if not isinstance(correction, dict) or not correction:
            raise ValueError("verdict 'correct' needs the corrected fields: correction={...}")
    elif correction:
        raise ValueError(f"verdict {verdict!r} takes no correction (use verdict='correct')")
    if not isinstance(reviewer, str) or not reviewer.strip():
        raise ValueError("reviewer: name who answered (reviewer='ana')")


@reconnecting
def expire_due(
    *,
    tenant: str | None = None,
    agent: str | None = None,
    now: datetime | None = None,
    url: str | None = None,
) -> list[ReviewRequest]:
    """Expire pending reviews past their deadline (of one tenant, or of all for the
    maintenance sweep); the reviews expired by this call. Safe to run twice at once: a review
    is expired by one conditional UPDATE, whoever gets there first."""
    when = now or utcnow()
    conditions = [col(ReviewRequest.state) == "pending", col(ReviewRequest.deadline_at) <= when]
    if tenant is not None:
        require_tenant(tenant)
        conditions.append(col(ReviewRequest.tenant) == tenant)
    if agent is not None:
        conditions.append(col(ReviewRequest.agent) == agent)
    with session(url) as s:
        # In id order: two sweeps at once lock rows in the same order (no deadlock).
        query = select(ReviewRequest).where(*conditions).order_by(col(ReviewRequest.id))
        due = list(s.exec(query).all())
        expired: list[ReviewRequest] = []
        table = ReviewRequest.metadata.tables["review_request"]
        for row in due:
            done = s.connection().execute(
                update(table)
                .where(table.c.id == row.id, table.c.state == "pending")
                .values(state="expired", answered_at=when)
            )
            if done.rowcount:
                row.state, row.answered_at = "expired", when
                expired.append(row)
    return expired


@reconnecting
def to_continue(*, tenant: str, agent: str, url: str | None = None) -> list[ReviewRequest]:
    """Answered or expired reviews whose run has not yet continued past them."""
    require_tenant(tenant)
    query = (
        select(ReviewRequest)
        .where(
            col(ReviewRequest.tenant) == tenant,
            col(ReviewRequest.agent) == agent,
            col(ReviewRequest.state).in_(("answered", "expired")),
            col(ReviewRequest.continued_at).is_(None),
        )
        .order_by(col(ReviewRequest.answered_at), col(ReviewRequest.id))
    )
    with session(url) as s:
        return list(s.exec(query).all())


def mark_continued_in(s: Session, continued: Iterable[tuple[str, str]]) -> None:
    """Within a record flush: `(review id, run id)` pairs whose run went on past the review."""
    table = ReviewRequest.metadata.tables["review_request"]
    when = utcnow()
    for review_id, run_id in continued:
        s.connection().execute(
            update(table)
            .where(table.c.id == review_id, table.c.continued_at.is_(None))
            .values(continued_at=when, continued_run_id=run_id)
        )


def supersede_in(s: Session, runs: Iterable[tuple[str, str, str, str]]) -> None:
    """Within a record flush: for `(tenant, agent, run key, run id)`, mark the run's earlier
    executions still `awaiting_review` as `superseded` (a later execution took the run over)."""
    table = AgentRun.metadata.tables["agent_run"]
    for tenant, agent, run_key, run_id in runs:
        s.connection().execute(
            update(table)
            .where(
                table.c.tenant == tenant,
                table.c.agent == agent,
                table.c.run_key == run_key,
                table.c.status == "awaiting_review",
                table.c.id != run_id,
            )
            .values(status="superseded")
        )


@reconnecting
def set_review_flow_run(
    review_id: str, flow_run_id: str, *, tenant: str, url: str | None = None
) -> None:
    """Remember the suspended flow run that shows this review's form in the Prefect UI."""
    require_tenant(tenant)
    table = ReviewRequest.metadata.tables["review_request"]
    with session(url) as s:
        s.connection().execute(
            update(table)
            .where(table.c.id == review_id, table.c.tenant == tenant)
            .values(review_flow_run_id=flow_run_id)
        )
