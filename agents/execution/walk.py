"""The walk of one run: every step in graph order, steps that do not depend on each other at the
same time, one handler per outcome (completed, cached, held, awaiting review, skipped, failed,
conflict).

The walk decides; a `StepRunner` does. The Prefect runner (`agents.execution.prefect`) runs each
step as a task run; a test can pass a fake runner and walk a graph without Prefect.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

from agents.declare.decision import Decision, LadderPath
from agents.errors import ProviderUnavailable, ToolLoopExhausted
from agents.execution import ladder
from agents.execution.call import RunScope, StepCall, StepTrace, step_call
from agents.execution.ladder import LadderOutcome, ReviewPending, Verdict
from agents.execution.rows import decision_row, settled, step_row
from agents.observe import capture_failure, tracing
from agents.redact import scrub_error

if TYPE_CHECKING:
    from agents.graph import AgentGraph, StepNode
    from agents.resources.llm import LLMCall
    from agents.result import RunResult, RunStatus, StepStatus
    from agents.store.tables import DecisionRecord, StepRun

logger = logging.getLogger(__name__)

#: Upstream step statuses that stop a step from running.
_BLOCKING = frozenset({"failed", "skipped", "conflict", "awaiting_review"})


@dataclass(kw_only=True)
class Attempt:
    """What running one step call came to."""

    outcome: Literal["completed", "failed", "conflict"]
    trace: StepTrace
    value: Any = None
    cached: bool = False
    """The value came from an earlier execution (persisted result or Prefect's cache)."""
    error: BaseException | None = None
    conflict: str | None = None
    task_run_id: str | None = None
    elapsed_ms: float = 0.0


class StepRunner(Protocol):
    """What the walk needs done: run step calls, ask people, shadow, read the decision log."""

    async def attempt(
        self,
        node: StepNode,
        call: StepCall,
        args: dict[str, Any],
        scope: RunScope,
        *,
        lookup: bool = True,
    ) -> Attempt:
        """Run one step call (`lookup`: take a persisted result of the same call if any)."""
        ...

    async def review(
        self,
        node: StepNode,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        run_input: Mapping[str, Any],
    ) -> Verdict | ReviewPending | None:
        """A person's verdict on a proposed decision (its `verdict` is None past the deadline),
        or `REVIEW_PENDING` until they answer; never waits. `run_input` is what continuing the
        run later needs."""
        ...

    async def shadow(
        self, node: StepNode, call: StepCall, args: dict[str, Any], result: RunResult
    ) -> DecisionRecord | None:
        """The shadow candidate's decision row for this run, if the run is in its share."""
        ...

    async def logged_decision(
        self, node: StepNode, result: RunResult, args: dict[str, Any]
    ) -> DecisionRecord | None:
        """The decision an earlier execution logged for this step of this run, if any."""
        ...


@dataclass(kw_only=True)
class RunRecords:
    """The rows one run writes when it ends."""

    steps: list[StepRun] = field(default_factory=list)
    decisions: list[DecisionRecord] = field(default_factory=list)
    recovered: list[DecisionRecord] = field(default_factory=list)
    """Decision rows rebuilt from a cached result, written only where none is stored."""
    logged: list[DecisionRecord] = field(default_factory=list)
    """Decisions an earlier execution logged, taken as they are stored: not written again (a
    learning step that sets one's outcome writes it itself), nor shown in this flow run's
    decision artifact, which lists the decisions it made or changed."""
    reviews: list[str] = field(default_factory=list)
    """Reviews whose verdict (or expiry) this execution took: its run continued past them."""


class RunWalk:
    """Walks one run of `graph` with `runner`, filling `result` and the run's records."""

    def __init__(
        self,
        graph: AgentGraph,
        runner: StepRunner,
        result: RunResult,
        inputs: Mapping[str, Any],
        scope: RunScope,
        thresholds: Mapping[str, float],
    ) -> None:
        self.graph = graph
        self.runner = runner
        self.result = result
        self.inputs = inputs
        self.scope = scope
        self.thresholds = thresholds
        self.records = RunRecords()
        self.statuses: dict[str, StepStatus] = {}
        self._held_above: dict[str, bool] = {}
        self._running: dict[str, asyncio.Task[None]] = {}

    async def walk(self) -> RunRecords:
        """Run every step; set the result's status, step statuses, outputs and paths."""
        for name, node in self.graph.nodes.items():
            self._running[name] = asyncio.ensure_future(self._step(node))
        await asyncio.gather(*self._running.values())
        self.result.steps = {name: self.statuses[name] for name in self.graph.nodes}
        values = set(self.statuses.values())
        status: RunStatus = "completed"
        if "failed" in values:
            status = "failed"
        elif "conflict" in values:
            status = "conflict"
        elif "awaiting_review" in values:
            status = "awaiting_review"
        elif "held" in values:
            status = "held"
        self.result.status = status
        return self.records

    async def _step(self, node: StepNode) -> None:
        step = node.step
        for dep in node.depends_on:
            await self._running[dep]
        held_above = any(
            self.statuses[d] == "held" or self._held_above.get(d, False) for d in node.depends_on
        )
        self._held_above[node.name] = held_above
        blocked = [d for d in node.depends_on if self.statuses[d] in _BLOCKING]
        if blocked or (step.layer == "action" and held_above):
            return self.handle_skipped(node)
        args = {p.name: self.inputs[p.name] for p in node.run_inputs if p.name in self.inputs}
        args.update({d: self.result.outputs[d] for d in node.depends_on})
        call = step_call(self.graph.name, step, self.result, args, None)
        tracing.step_started(self.scope.trace, step.name, step.layer)
        attempt = await self.runner.attempt(node, call, args, self.scope)
        if attempt.outcome == "conflict":
            return self.handle_conflict(node, attempt)
        if attempt.outcome == "failed":
            assert attempt.error is not None
            capture_failure(
                attempt.error,
                agent=self.graph.name,
                step=step.name,
                layer=step.layer,
                tenant=self.result.tenant,
                flow_run_id=self.result.flow_run_id,
                attempt=attempt.trace.attempts,
                extra={"run_id": self.result.run_id, "subject": self.result.subject},
                trace=tracing.current_ids(self.scope.trace, step.name),
            )
            rescued = None
            # No decision at all (the model unreachable, or a tool loop without an answer):
            # the fallback model, else the safe default.
            no_decision = (ProviderUnavailable, ToolLoopExhausted)
            if step.layer == "reasoning" and isinstance(attempt.error, no_decision):
                rescued = await ladder.without_model(
                    step.options, self._threshold(node), ask_fallback=self._fallback(node, args)
                )
            if rescued is None:
                return self.handle_failed(node, attempt)
            return self.handle_rescued(node, attempt, args, rescued)
        if step.layer == "reasoning" and isinstance(attempt.value, Decision):
            outcome = await self._climb(node, attempt.value, args)
            if outcome.awaiting:
                return await self.handle_awaiting_review(node, attempt, args, call, outcome)
            if attempt.cached:
                return await self.handle_cached_decision(node, attempt, args, call, outcome)
            return await self.handle_decision(node, attempt, args, call, outcome)
        return self.handle_completed(node, attempt, attempt.value)

    # -- one handler per outcome ------------------------------------------------------------

    def handle_skipped(self, node: StepNode) -> None:
        """An upstream step failed, was skipped, conflicted or awaits review, or an action is
        under a hold."""
        self.statuses[node.name] = "skipped"
        self.records.steps.append(step_row(self.graph.name, node.step, self.result, "skipped"))
        tracing.step_ended(self.scope.trace, node.name, node.step.layer, outcome="skipped")

    def handle_completed(
        self,
        node: StepNode,
        attempt: Attempt,
        value: Any,
        *,
        held: bool = False,
        llm_calls: list[LLMCall] | None = None,
    ) -> None:
        """The step produced `value`: completed, cached (from an earlier execution) or held."""
        status: StepStatus = "held" if held else "cached" if attempt.cached else "completed"
        self.result.outputs[node.name] = value
        self.statuses[node.name] = status
        calls = list(attempt.trace.llm_calls) if llm_calls is None else llm_calls
        self._record(node, attempt, status, None, calls)

    async def handle_decision(
        self,
        node: StepNode,
        attempt: Attempt,
        args: dict[str, Any],
        call: StepCall,
        outcome: LadderOutcome,
    ) -> None:
        """A fresh decision: log it (and the shadow candidate's), then complete or hold."""
        llm_calls = [*attempt.trace.llm_calls, *outcome.llm_calls]
        row = decision_row(
            self.graph.name,
            node.step,
            self.result,
            args,
            outcome,
            llm_calls,
            attempt.trace.attempts,
            call.decision_id if node.step.options.cache else None,
        )
        self._decided(node, attempt, outcome, row, self.records.decisions, llm_calls)
        shadow_row = await self.runner.shadow(node, call, args, self.result)
        if shadow_row is not None:
            self.records.decisions.append(shadow_row)

    async def handle_cached_decision(
        self,
        node: StepNode,
        attempt: Attempt,
        args: dict[str, Any],
        call: StepCall,
        outcome: LadderOutcome,
    ) -> None:
        """A decision made by an earlier execution: find its logged row so learning steps can
        set its outcome, or recover one from the cached result.

        The earlier execution logged it unless it died between persisting the step's result and
        writing its run records (or is a twin still running): then a row is recovered under the
        id the original has (`StepCall.decision_id`), with no model call, so no tokens or cost.
        The logged row is written again at the run's end only when the ladder ends elsewhere
        now (a review answered since); the recovered one unless the row it stands in for
        arrives first.
        """
        llm_calls = [*attempt.trace.llm_calls, *outcome.llm_calls]
        logged = await self.runner.logged_decision(node, self.result, args)
        if logged is not None:
            # The ladder may end elsewhere now (a review answered since): the row says where.
            row = settled(logged, outcome)
            into = self.records.logged if row is logged else self.records.decisions
            self._decided(node, attempt, outcome, row, into, llm_calls)
            return
        self.result.notes.append(
            f"{node.name}: decision recovered from its cached result (the execution that "
            "made it had not logged it)"
        )
        row = decision_row(
            self.graph.name, node.step, self.result, args, outcome, [], 0, call.decision_id
        )
        self._decided(node, attempt, outcome, row, self.records.recovered, llm_calls)

    async def handle_awaiting_review(
        self,
        node: StepNode,
        attempt: Attempt,
        args: dict[str, Any],
        call: StepCall,
        outcome: LadderOutcome,
    ) -> None:
        """A person has been asked and has not answered: the step (and so the run) stops here,
        its decision logged as `awaiting_review` under the id the continued run will update."""
        llm_calls = [*attempt.trace.llm_calls, *outcome.llm_calls]
        row = None
        if attempt.cached:
            row = await self.runner.logged_decision(node, self.result, args)
        if row is None:
            row = decision_row(
                self.graph.name,
                node.step,
                self.result,
                args,
                outcome,
                llm_calls,
                attempt.trace.attempts,
                call.decision_id,
            )
        self.records.decisions.append(settled(row, outcome))
        self.statuses[node.name] = "awaiting_review"
        self._record(node, attempt, "awaiting_review", None, llm_calls)

    def handle_rescued(
        self, node: StepNode, attempt: Attempt, args: dict[str, Any], outcome: LadderOutcome
    ) -> None:
        """The model was unreachable; the fallback model or the safe default decided."""
        assert attempt.error is not None
        path = outcome.path.value
        self.result.paths[node.name] = path
        self.result.notes.append(
            f"{node.name}: no decision from the model ({scrub_error(attempt.error)}); "
            f"took the {path.replace('_', ' ')}"
        )
        llm_calls = [*attempt.trace.llm_calls, *outcome.llm_calls]
        row = decision_row(
            self.graph.name,
            node.step,
            self.result,
            args,
            outcome,
            llm_calls,
            attempt.trace.attempts,
        )
        row.error_class = type(attempt.error).__name__
        self._decided(node, attempt, outcome, row, self.records.decisions, llm_calls)

    def _decided(
        self,
        node: StepNode,
        attempt: Attempt,
        outcome: LadderOutcome,
        row: DecisionRecord,
        into: list[DecisionRecord],
        llm_calls: list[LLMCall],
    ) -> None:
        """The step's decision is `row` (written at the run's end from `into`): learning steps
        of the run can set its outcome; the step completes, or holds, on the ladder's decision."""
        into.append(row)
        self.scope.decisions[node.name] = row
        self.handle_completed(
            node, attempt, outcome.decision, held=outcome.held, llm_calls=llm_calls
        )

    def handle_failed(self, node: StepNode, attempt: Attempt) -> None:
        """The step failed after its retries: its branch stops; the run fails."""
        assert attempt.error is not None
        error = scrub_error(attempt.error)
        self._stop(node, attempt, "failed", error, f"{node.name}: {error}", attempt.trace.llm_calls)

    def handle_conflict(self, node: StepNode, attempt: Attempt) -> None:
        """A twin execution holds the action: stop this branch cleanly, no Sentry event."""
        logger.warning(
            "%s.%s run %s (tenant %s): %s",
            self.graph.name,
            node.name,
            self.result.run_key[:16],
            self.result.tenant,
            attempt.conflict,
        )
        run_error = f"{node.name}: ActionInProgress: {attempt.conflict}"
        self._stop(node, attempt, "conflict", attempt.conflict, run_error, ())

    def _stop(
        self,
        node: StepNode,
        attempt: Attempt,
        status: StepStatus,
        error: str | None,
        run_error: str,
        llm_calls: Sequence[LLMCall],
    ) -> None:
        """End the step's branch with `status`; the run's error is its first stopped step's."""
        self.statuses[node.name] = status
        if self.result.error is None:
            self.result.error = run_error
        self._record(node, attempt, status, error, llm_calls)

    def _record(
        self,
        node: StepNode,
        attempt: Attempt,
        status: StepStatus,
        error: str | None,
        llm_calls: Sequence[LLMCall],
    ) -> None:
        self.records.steps.append(
            step_row(
                self.graph.name,
                node.step,
                self.result,
                status,
                attempts=attempt.trace.attempts,
                cached=attempt.cached,
                duration_ms=attempt.elapsed_ms,
                task_run_id=attempt.task_run_id,
                error=error,
                llm_calls=llm_calls,
            )
        )
        tracing.step_ended(
            self.scope.trace,
            node.name,
            node.step.layer,
            outcome=status,
            attempts=attempt.trace.attempts,
            cached=attempt.cached,
            task_run_id=attempt.task_run_id,
            error=error,
        )

    # -- the ladder's inputs ----------------------------------------------------------------

    def _threshold(self, node: StepNode) -> float | None:
        return self.thresholds.get(node.name, node.step.options.threshold)

    async def _climb(
        self, node: StepNode, decision: Decision, args: dict[str, Any]
    ) -> LadderOutcome:
        refused = ladder.refusal(self.graph.allowed_actions, decision)
        if refused is not None:
            self.result.notes.append(f"{node.name}: {refused}")
            outcome = LadderOutcome(decision=decision, path=LadderPath.REJECTED, held=True)
        else:

            async def ask_review(proposed: Decision) -> Verdict | ReviewPending | None:
                run_input = {
                    **self.inputs,
                    "subject": self.result.subject,
                    "run_key": self.result.run_key,
                }
                verdict = await self.runner.review(node, proposed, args, self.result, run_input)
                if verdict is not None and not isinstance(verdict, ReviewPending):
                    self.records.reviews.append(verdict.id)
                return verdict

            outcome = await ladder.climb(
                node.step.options,
                decision,
                self._threshold(node),
                ask_fallback=self._fallback(node, args),
                ask_review=ask_review,
            )
        self.result.paths[node.name] = outcome.path.value
        return outcome

    def _fallback(self, node: StepNode, args: dict[str, Any]) -> ladder.AskFallback:
        async def ask() -> tuple[Decision | None, list[LLMCall]]:
            model = node.step.options.fallback_model
            call = step_call(self.graph.name, node.step, self.result, args, model)
            attempt = await self.runner.attempt(node, call, args, self.scope, lookup=False)
            calls = list(attempt.trace.llm_calls)
            if attempt.outcome != "completed" or not isinstance(attempt.value, Decision):
                return None, calls
            return attempt.value, calls

        return ask
