"""Human review, the ladder's second rung: the flow run pauses with a typed form in the Prefect
UI; the verdict is kept in the action ledger so a rerun never asks twice."""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any, Literal, cast

from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput

from agents.declare.decision import Decision
from agents.declare.options import Review
from agents.digest import canonical
from agents.errors import ActionInProgress
from agents.execution.threads import in_thread
from agents.redact import scrub_text
from agents.store import ledger

if TYPE_CHECKING:
    from agents.result import RunResult


class ReviewInput(RunInput):
    """What a reviewer answers in the Prefect UI for a paused decision."""

    verdict: Literal["approve", "correct", "reject"] = "approve"
    correction: dict[str, Any] | None = None
    reviewer: str | None = None


class Reviewer:
    """Asks people about one agent's decisions, one pause at a time per event loop (a flow run
    can only be paused once at a time)."""

    def __init__(self, agent: str) -> None:
        self.agent = agent
        # By loop id, not a weak mapping: the runner travels pickled with the flow (`serve`).
        self._locks: dict[int, asyncio.Lock] = {}

    async def ask(
        self,
        step: str,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        review: Review,
    ) -> ReviewInput | None:
        """Pause the flow run for a person; their verdict, or None when nobody answered in time
        (or a twin execution is asking)."""
        key = ledger.idempotency_key(
            result.tenant, self.agent, result.subject or "", result.run_key, f"{step}#review"
        )
        try:
            record = await in_thread(
                ledger.claim,
                key,
                tenant=result.tenant,
                agent=self.agent,
                subject=result.subject or "",
                run_key=result.run_key,
                step=f"{step}#review",
                agent_run_id=result.run_id,
            )
        except ActionInProgress:
            # A twin execution is asking (or just got an answer): use its verdict if there is
            # one, else fall to the default rather than ask a person twice.
            record = await in_thread(ledger.get, key)
            if record is None or record.status != "completed":
                result.notes.append(f"{step}: review in progress in another execution")
                return None
        if record.status == "completed" and isinstance(record.result, dict):
            return ReviewInput.model_validate(record.result)
        description = review_markdown(self.agent, step, result, args, proposed)
        async with self._lock():
            try:
                # pause_flow_run is async-dispatched: awaitable inside a flow run.
                pending: Any = pause_flow_run(
                    wait_for_input=ReviewInput.with_initial_data(
                        description=description, verdict="approve"
                    ),
                    timeout=int(review.timeout_seconds),
                    poll_interval=int(max(1, review.poll_interval)),
                    key=f"review-{step}-{result.run_key[:16]}",
                )
                verdict = cast(ReviewInput, await pending)
            except Exception as exc:  # FlowPauseTimeout or an API failure: fall to the default
                result.notes.append(f"{step}: review not completed ({type(exc).__name__})")
                return None
        await in_thread(ledger.complete, key, verdict.model_dump(mode="json", exclude={"metadata"}))
        return verdict

    def _lock(self) -> asyncio.Lock:
        loop = id(asyncio.get_running_loop())
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock


def review_markdown(
    agent: str, step: str, result: RunResult, args: dict[str, Any], proposed: Decision
) -> str:
    """The form's description: the input, the proposed decision, its confidence and rationale,
    every text scrubbed of secrets."""
    inputs = scrub_text(json.dumps(canonical(args), indent=2, default=repr))[:4000]
    decision = scrub_text(json.dumps(proposed.model_dump(mode="json"), indent=2))[:4000]
    return (
        f"## Review `{agent}.{step}`\n\n"
        f"Tenant `{result.tenant}`, subject `{result.subject}`, run `{result.run_id}`.\n\n"
        f"**Confidence {proposed.confidence:.2f}** — {scrub_text(proposed.rationale)}\n\n"
        f"### Proposed decision\n```json\n{decision}\n```\n"
        f"### Input\n```json\n{inputs}\n```\n"
        "Answer `approve`, `correct` (with the corrected fields in `correction`) or `reject`."
    )
