"""Reviews: the decisions waiting for a person, and answering them (the Python door).

A reasoning step declared with `review=Review(timeout=...)` that stays below its threshold
after the fallback model stops its run (`awaiting_review`) and stores a review request. Nothing
waits for the answer: answer it here, with `stalwart review`, or in the Prefect UI form, then
`agent.resume(tenant=...)` continues the run (in a deployment, the review's flow run continues
it by itself). Every call is scoped to one tenant; a review is answered once.

Example:
    >>> from agents import reviews
    >>> for waiting in reviews.pending(tenant="acme", agent="ticket-triage"):  # doctest: +SKIP
    ...     reviews.answer(waiting.id, tenant="acme", verdict="approve", reviewer="ana")
    >>> triage.resume(tenant="acme")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from agents.errors import ReviewClosed, ReviewNotFound
from agents.redact import scrub_error
from agents.store import reviews as store
from agents.store.tables import ReviewRequest

__all__ = [
    "ReviewClosed",
    "ReviewNotFound",
    "ReviewRequest",
    "answer",
    "get",
    "list_reviews",
    "pending",
    "sweep",
]

logger = logging.getLogger(__name__)


def pending(
    *, tenant: str, agent: str | None = None, url: str | None = None
) -> list[ReviewRequest]:
    """The tenant's reviews waiting for an answer, oldest first (of one agent, or all).

    Each has an `id`, the `agent`, `step`, `subject` and `run_key`, the `proposed` decision
    with its `confidence` and `rationale`, the redacted `inputs`, and `created_at` and
    `deadline_at`. A review past its deadline is not listed (it resolves to the default).
    """
    from agents.store.tables import utcnow

    now = utcnow()
    rows = store.list_reviews(tenant=tenant, agent=agent, state="pending", url=url)
    return [r for r in rows if r.deadline_at > now]


def list_reviews(
    *,
    tenant: str,
    agent: str | None = None,
    state: Literal["pending", "answered", "expired"] | None = None,
    url: str | None = None,
) -> list[ReviewRequest]:
    """The tenant's reviews in any state (or one), oldest first."""
    return store.list_reviews(tenant=tenant, agent=agent, state=state, url=url)


def get(review_id: str, *, tenant: str, url: str | None = None) -> ReviewRequest:
    """One review of `tenant`.

    Raises:
        ReviewNotFound: no such review for this tenant (another tenant's is not found either).
    """
    row = store.get_review(review_id, tenant=tenant, url=url)
    if row is None:
        raise ReviewNotFound(f"no review {review_id!r} for tenant {tenant!r}")
    return row


def answer(
    review_id: str,
    *,
    tenant: str,
    verdict: Literal["approve", "correct", "reject"],
    correction: dict[str, Any] | None = None,
    reviewer: str,
    url: str | None = None,
) -> ReviewRequest:
    """Answer a pending review of `tenant`: `approve` the proposed decision, `correct` it (the
    corrected fields in `correction`) or `reject` it (the step's safe default applies).

    When the review came from a deployment, its suspended flow run is resumed and continues the
    run; otherwise `agent.resume(tenant=...)` (or a rerun of the batch) does.

    Raises:
        ValueError: a malformed verdict, a correction that does not fit the decision, no
            reviewer.
        ReviewNotFound: no such review for this tenant.
        ReviewClosed: answered already, or past its deadline; nothing is changed.
    """
    answered = store.answer_review(
        review_id,
        tenant=tenant,
        verdict=verdict,
        correction=correction,
        reviewer=reviewer,
        url=url,
    )
    if answered.review_flow_run_id:
        form = {"verdict": verdict, "correction": correction, "reviewer": reviewer}
        _wake(answered, form)
    return answered


def sweep(*, url: str | None = None) -> list[ReviewRequest]:
    """Expire every pending review past its deadline, of every tenant (the maintenance
    deployment runs this every few minutes), and wake the suspended flow runs of those from a
    deployment: each continues its run with the step's safe default. Safe to run twice at once.
    """
    expired = store.expire_due(url=url)
    for review in expired:
        if review.review_flow_run_id:
            _wake(review, None)
    return expired


def _wake(review: ReviewRequest, form: dict[str, Any] | None) -> None:
    """Resume the review's suspended flow run (a courtesy: the answer is recorded already; if
    the Prefect API cannot be reached, `resume` continues the run instead)."""
    from prefect.utilities.asyncutils import run_coro_as_sync

    from agents.execution.review import resume_review_form

    try:
        run_coro_as_sync(resume_review_form(review, form))
    except Exception as exc:
        logger.warning(
            "review %s: its flow run %s was not resumed (%s); `stalwart resume` continues it",
            review.id,
            review.review_flow_run_id,
            scrub_error(exc),
        )
