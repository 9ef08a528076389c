"""Human review, the ladder's second rung, asked durably: the run stops, a person answers later.

Asking stores a `review_request` row (once per run and step) and the run ends `awaiting_review`:
no process, flow run or lock waits for the answer. When the run is executed again (`resume`, a
rerun of the batch, or the review's own flow run in a deployment), the ladder reads the answer
from that row: a verdict, or, past the deadline, the step's safe default.

In a deployment, each new review also gets a flow run of the same deployment, created directly
in the `Suspended` state with Prefect's typed input form (`ReviewInput`): it holds no process
and no worker slot. Submitting the form reschedules it; the worker then runs it, it records the
verdict (`take_form_answer`) and continues the run it was created for.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Literal

from prefect.input import RunInput
from prefect.input.run_input import Keyset, keyset_from_base_key

from agents.declare.decision import Decision
from agents.errors import ReviewClosed, ReviewNotFound
from agents.execution.ladder import REVIEW_PENDING, ReviewPending
from agents.execution.rows import input_snapshot
from agents.execution.threads import in_thread
from agents.redact import scrub_error, scrub_text
from agents.store import reviews as store
from agents.store.tables import ReviewRequest, utcnow

if TYPE_CHECKING:
    from agents.declare.options import Review
    from agents.result import RunResult

logger = logging.getLogger(__name__)

__all__ = [
    "ReviewInput",
    "Reviewer",
    "form_keyset",
    "open_review_form",
    "resume_review_form",
    "review_markdown",
    "take_form_answer",
]


class ReviewInput(RunInput):
    """The review form in the Prefect UI: the same fields as `agents.reviews.answer`."""

    verdict: Literal["approve", "correct", "reject"] = "approve"
    correction: dict[str, Any] | None = None
    """With `correct`: the corrected fields of the proposed decision."""
    reviewer: str
    """Who answers (required: an answer names its reviewer)."""


def form_keyset(review_id: str) -> Keyset:
    """Where the form's schema, description and answer live on the review's flow run."""
    return keyset_from_base_key(f"suspended-review-{review_id}")


class Reviewer:
    """Asks people about one batch's decisions: stores the request, never waits for it."""

    def __init__(self, agent: str, deployment_id: str | None = None) -> None:
        self.agent = agent
        self.deployment_id = deployment_id

    async def ask(
        self,
        step: str,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        run_input: Mapping[str, Any],
        review: Review,
    ) -> ReviewRequest | ReviewPending:
        """The answered or expired request of this run's step; `REVIEW_PENDING` while nobody has
        answered (asking first, if this is the first time)."""
        found = await in_thread(
            store.find_review,
            tenant=result.tenant,
            agent=self.agent,
            run_key=result.run_key,
            step=step,
        )
        if found is None:
            found, new = await in_thread(
                store.request_review, self._request(step, proposed, args, result, run_input, review)
            )
            if new and self.deployment_id:
                await self._open_form(found)
        if found.state == "pending" and found.deadline_at <= utcnow():
            await in_thread(store.expire_due, tenant=result.tenant, agent=self.agent, now=utcnow())
            found = await in_thread(store.get_review, found.id, tenant=result.tenant) or found
        if found.state == "pending":
            result.notes.append(f"{step}: awaiting review {found.id}")
            return REVIEW_PENDING
        if found.state == "expired":
            result.notes.append(f"{step}: review {found.id} expired; the safe default applies")
        return found

    def _request(
        self,
        step: str,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        run_input: Mapping[str, Any],
        review: Review,
    ) -> ReviewRequest:
        created = utcnow()
        return ReviewRequest(
            tenant=result.tenant,
            agent=self.agent,
            step=step,
            run_key=result.run_key,
            subject=result.subject,
            agent_run_id=result.run_id,
            flow_run_id=result.flow_run_id,
            deployment_id=self.deployment_id,
            proposed=proposed.model_dump(mode="json"),
            decision_schema=type(proposed).model_json_schema(),
            confidence=proposed.confidence,
            rationale=scrub_text(proposed.rationale or ""),
            inputs=input_snapshot(args),
            run_input=dict(run_input),
            created_at=created,
            deadline_at=created + timedelta(seconds=review.timeout_seconds),
        )

    async def _open_form(self, request: ReviewRequest) -> None:
        """The review's suspended flow run; a failure leaves the review answerable elsewhere."""
        try:
            await open_review_form(request)
        except Exception as exc:
            logger.warning(
                "review %s: no Prefect UI form (%s); answer it with `stalwart review`",
                request.id,
                scrub_error(exc),
            )


async def open_review_form(request: ReviewRequest) -> str:
    """Create the review's flow run of its deployment, already `Suspended` with the typed form;
    returns its id. The flow run gets `review=<id>` and the run's input as parameters."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import State
    from prefect.states import Suspended

    assert request.deployment_id is not None
    seconds = max(1, int((request.deadline_at - utcnow()).total_seconds()))
    state: State[Any] = Suspended(timeout_seconds=seconds, pause_key=f"review-{request.id}")
    keyset = form_keyset(request.id)
    state.state_details.run_input_keyset = {str(k): v for k, v in keyset.items()}
    label = request.subject or request.run_key[:12]
    async with get_client() as client:
        flow_run = await client.create_flow_run_from_deployment(
            UUID(request.deployment_id),
            parameters={
                "inputs": [request.run_input],
                "tenant": request.tenant,
                "concurrency": 1,
                "review": request.id,
            },
            state=state,
            name=f"{request.agent}/review-{label}"[:200],
            tags=["review", f"agent:{request.agent}", f"tenant:{request.tenant}"],
        )
    form = ReviewInput.with_initial_data(description=review_markdown(request), verdict="approve")
    await form.asave(keyset, flow_run_id=flow_run.id)
    await in_thread(store.set_review_flow_run, request.id, str(flow_run.id), tenant=request.tenant)
    return str(flow_run.id)


async def take_form_answer(review_id: str, tenant: str, flow_run_id: Any) -> None:
    """In the review's flow run: record the form's answer (if the form was submitted and nobody
    answered first); the run then continues with whatever verdict the review holds."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    async with get_client() as client:
        try:
            raw = await client.read_flow_run_input(flow_run_id, form_keyset(review_id)["response"])
        except ObjectNotFound:
            return  # rescheduled without an answer: the deadline passed (the sweep did it)
    answer = ReviewInput.model_validate(json.loads(raw))
    try:
        await in_thread(
            store.answer_review,
            review_id,
            tenant=tenant,
            verdict=answer.verdict,
            reviewer=answer.reviewer,
            correction=answer.correction,
        )
    except (ReviewClosed, ReviewNotFound, ValueError) as exc:
        logger.warning("review %s: the form's answer was not recorded: %s", review_id, exc)


async def resume_review_form(request: ReviewRequest, answer: Mapping[str, Any] | None) -> bool:
    """Wake the review's suspended flow run (its run then continues in the deployment): with the
    answer given at another door, or with none past the deadline. False if it was not waiting."""
    from uuid import UUID

    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    if not request.review_flow_run_id:
        return False
    flow_run_id = UUID(request.review_flow_run_id)
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        if flow_run.state is None or not flow_run.state.is_paused():
            return False
        if answer is not None:
            response = await client.resume_flow_run(flow_run_id, run_input=dict(answer))
            return str(response.status.value).upper() == "ACCEPT"
        # Past the deadline Prefect refuses to resume: schedule it (the default applies).
        await client.set_flow_run_state(flow_run_id, Scheduled(), force=True)
        return True


def review_markdown(request: ReviewRequest) -> str:
    """The form's description: what is asked, the proposed decision, its confidence and
    rationale, and the step's inputs, every text scrubbed of secrets."""
    inputs = scrub_text(json.dumps(request.inputs, indent=2, default=repr))[:4000]
    decision = scrub_text(json.dumps(request.proposed, indent=2, default=repr))[:4000]
    return (
        f"## Review `{request.agent}.{request.step}`\n\n"
        f"Tenant `{request.tenant}`, subject `{request.subject}`, run key "
        f"`{request.run_key[:16]}`, review `{request.id}`; answer by "
        f"{request.deadline_at:%Y-%m-%d %H:%M} UTC.\n\n"
        f"**Confidence {request.confidence or 0:.2f}** — {scrub_text(request.rationale or '')}\n\n"
        f"### Proposed decision\n```json\n{decision}\n```\n"
        f"### Input\n```json\n{inputs}\n```\n"
        "Answer `approve`, `correct` (with the corrected fields in `correction`) or `reject`, "
        "and name yourself in `reviewer`."
    )
