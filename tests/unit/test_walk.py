"""The walk of one run and the fallback ladder, without Prefect: a fake `StepRunner` calls the
step functions directly and plays the outcomes a test scripts (failures, conflicts, cached
results, a fallback model's answer, a reviewer's verdict)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from agents import Agent, Decision
from agents.declare.decision import LadderPath
from agents.declare.options import Review, StepOptions
from agents.errors import ProviderUnavailable
from agents.execution import ladder
from agents.execution.call import RunScope, StepCall, StepTrace
from agents.execution.ladder import REVIEW_PENDING
from agents.execution.walk import Attempt, RunWalk
from agents.graph import AgentGraph, StepNode
from agents.result import RunResult
from agents.store.tables import DecisionRecord
from tests.support.models import Ticket


class Route(Decision):
    queue: str


class Reviewed:
    def __init__(self, verdict: str | None, correction: dict[str, Any] | None = None) -> None:
        self.id = "review-1"
        self.verdict = verdict
        self.correction = correction
        self.reviewer = "ana"
        self.proposed: dict[str, Any] | None = None


Script = Callable[[StepCall], Attempt | None]


class FakeRunner:
    """Runs steps by calling their functions; `scripts[step]` may replace an attempt."""

    def __init__(self, scripts: dict[str, Script] | None = None, verdict: Any = None) -> None:
        self.scripts = scripts or {}
        self.verdict = verdict
        self.calls: list[StepCall] = []
        self.reviews: list[Decision] = []
        self.logged: DecisionRecord | None = None

    async def attempt(
        self,
        node: StepNode,
        call: StepCall,
        args: dict[str, Any],
        scope: RunScope,
        *,
        lookup: bool = True,
    ) -> Attempt:
        self.calls.append(call)
        script = self.scripts.get(node.name)
        scripted = script(call) if script is not None else None
        if scripted is not None:
            scripted.trace.attempts = max(1, scripted.trace.attempts)
            return scripted
        trace = StepTrace(attempts=1)
        try:
            value = node.step.fn(**args)
        except Exception as exc:
            return Attempt(outcome="failed", trace=trace, error=exc)
        return Attempt(outcome="completed", trace=trace, value=value)

    async def review(
        self,
        node: Any,
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        run_input: Any,
    ) -> Any:
        self.reviews.append(proposed)
        return self.verdict

    async def shadow(self, node: StepNode, call: StepCall, args: Any, result: RunResult) -> None:
        return None

    async def logged_decision(
        self, node: StepNode, result: RunResult, args: dict[str, Any]
    ) -> DecisionRecord | None:
        return self.logged


def triage(**reasoning: Any) -> tuple[AgentGraph, list[str]]:
    """perceive → route → send → remember; `reasoning` are route's options."""
    agent = Agent("walk-test")
    sent: list[str] = []

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(text=str(raw["text"]))

    @agent.reasoning(**reasoning)
    def route(ticket: Ticket) -> Route:
        sure = 0.9 if "refund" in ticket.text else 0.3
        return Route(queue="billing", confidence=sure, rationale="words")

    @agent.action
    def send(route: Route) -> str:
        sent.append(route.queue)
        return route.queue

    @agent.learning
    def remember(send: str) -> None:
        return None

    return agent.compile(), sent


def walk(graph: AgentGraph, runner: FakeRunner, text: str, **thresholds: float) -> Any:
    result = RunResult(status="completed", run_id="r1", run_key="k1", tenant="acme")
    run = RunWalk(graph, runner, result, {"raw": {"text": text}}, RunScope(), thresholds)
    records = asyncio.run(run.walk())
    return result, records


def test_a_sure_decision_runs_every_step_and_is_logged_once() -> None:
    graph, sent = triage(threshold=0.8)
    result, records = walk(graph, FakeRunner(), "please refund me")
    assert result.status == "completed"
    assert result.steps == dict.fromkeys(["ticket", "route", "send", "remember"], "completed")
    assert result.paths == {"route": "direct"}
    assert sent == ["billing"]
    assert [(r.step, r.path) for r in records.decisions] == [("route", "direct")]
    assert [r.status for r in records.steps] == ["completed"] * 4


def test_an_unsure_decision_is_held_and_no_action_runs_on_it() -> None:
    graph, sent = triage(threshold=0.8)
    result, records = walk(graph, FakeRunner(), "hello")
    assert result.status == "held"
    assert result.steps == {
        "ticket": "completed",
        "route": "held",
        "send": "skipped",
        "remember": "skipped",
    }
    assert sent == []
    assert records.decisions[0].path == "held"


def test_a_calibrated_threshold_replaces_the_declared_one() -> None:
    graph, sent = triage(threshold=0.8)
    result, _ = walk(graph, FakeRunner(), "hello", route=0.2)
    assert result.status == "completed" and sent == ["billing"]


def test_a_failed_step_fails_the_run_and_skips_what_depends_on_it() -> None:
    graph, sent = triage(threshold=0.8)
    failing = FakeRunner(
        {"ticket": lambda call: Attempt(outcome="failed", trace=StepTrace(), error=KeyError("x"))}
    )
    result, records = walk(graph, failing, "please refund")
    assert result.status == "failed"
    assert result.error == "ticket: KeyError: 'x'"
    assert result.steps["route"] == result.steps["send"] == "skipped"
    assert records.decisions == [] and sent == []


def test_a_twin_holding_the_action_ends_the_run_in_conflict() -> None:
    graph, _ = triage(threshold=0.8)
    twin = FakeRunner(
        {"send": lambda call: Attempt(outcome="conflict", trace=StepTrace(), conflict="held")}
    )
    result, records = walk(graph, twin, "please refund")
    assert [r.path for r in records.decisions] == ["direct"]  # the batch drops them on conflict
    assert result.status == "conflict"
    assert result.steps["send"] == "conflict" and result.steps["remember"] == "skipped"
    assert result.error == "send: ActionInProgress: held"


def test_the_fallback_model_is_asked_with_its_own_call_and_its_decision_taken() -> None:
    graph, sent = triage(threshold=0.8, fallback_model="big-model")

    def fallback(call: StepCall) -> Attempt | None:
        if call.model != "big-model":
            return None
        decision = Route(queue="technical", confidence=0.95, rationale="bigger")
        return Attempt(outcome="completed", trace=StepTrace(), value=decision)

    runner = FakeRunner({"route": fallback})
    result, records = walk(graph, runner, "hello")
    assert result.paths == {"route": "fallback_model"} and sent == ["technical"]
    assert records.decisions[0].output["queue"] == "technical"
    first, second = (c for c in runner.calls if c.step == "route")
    assert first.model is None and second.model == "big-model"
    assert first.cache_key != second.cache_key  # the model is part of the cache key
    assert first.idempotency_key == second.idempotency_key


def test_an_unreachable_model_takes_the_safe_default() -> None:
    default = Route(queue="other", confidence=1.0, rationale="safe")
    graph, sent = triage(threshold=0.8, default=default)
    down = ProviderUnavailable("endpoint down", endpoint="configured", model="m")
    runner = FakeRunner(
        {"route": lambda call: Attempt(outcome="failed", trace=StepTrace(), error=down)}
    )
    result, records = walk(graph, runner, "please refund")
    assert result.status == "completed" and sent == ["other"]
    assert result.paths == {"route": "default"}
    assert "no decision from the model" in result.notes[0]
    assert records.decisions[0].error_class == "ProviderUnavailable"


def test_a_corrected_review_is_acted_on_with_the_correction() -> None:
    graph, sent = triage(threshold=0.8, review=Review(timeout="1w"))
    runner = FakeRunner(verdict=Reviewed("correct", {"queue": "shipping"}))
    result, records = walk(graph, runner, "hello")
    assert [d.confidence for d in runner.reviews] == [0.3]
    assert result.paths == {"route": "human"} and sent == ["shipping"]
    assert records.decisions[0].reviewer == "ana"
    assert records.decisions[0].correction == {"queue": "shipping"}


def test_a_cached_decision_without_a_logged_row_is_recovered_under_its_stable_id() -> None:
    graph, _ = triage(threshold=0.8)
    decision = Route(queue="billing", confidence=0.9, rationale="cached")

    def cached(call: StepCall) -> Attempt:
        return Attempt(outcome="completed", trace=StepTrace(), value=decision, cached=True)

    runner = FakeRunner({"route": cached})
    result, records = walk(graph, runner, "please refund")
    assert records.decisions == []
    assert len(records.recovered) == 1
    route_call = next(c for c in runner.calls if c.step == "route")
    assert records.recovered[0].id == route_call.decision_id
    assert result.steps["route"] == "cached"
    assert "decision recovered" in result.notes[0]


def test_a_decision_naming_a_forbidden_action_is_rejected_and_held() -> None:
    class Plan(Decision):
        action: str

    agent = Agent("walk-policy", allowed_actions=["reply"])

    @agent.reasoning
    def plan(text: str) -> Plan:
        return Plan(action="refund", confidence=1.0, rationale="asked to")

    @agent.action
    def act(plan: Plan) -> None:
        raise AssertionError("never acted on")

    result = RunResult(status="completed", run_id="r", run_key="k", tenant="acme")
    walker = RunWalk(agent.compile(), FakeRunner(), result, {"text": "t"}, RunScope(), {})
    asyncio.run(walker.walk())
    assert result.status == "held" and result.paths == {"plan": "rejected"}
    assert result.steps["act"] == "skipped"


# -- the ladder alone -------------------------------------------------------------------------


async def _no_fallback() -> tuple[Decision | None, list[Any]]:
    return None, []


@pytest.mark.parametrize(
    ("verdict", "path", "held"),
    [
        (Reviewed("approve"), LadderPath.HUMAN, False),
        (Reviewed("reject"), LadderPath.HELD, True),
        (None, LadderPath.HELD, True),
    ],
)
def test_the_ladder_asks_a_person_below_the_threshold(
    verdict: Any, path: LadderPath, held: bool
) -> None:
    async def ask(proposed: Decision) -> Any:
        return verdict

    unsure = Decision(confidence=0.4, rationale="?")
    options = StepOptions(threshold=0.8, review=Review())
    outcome = asyncio.run(
        ladder.climb(options, unsure, 0.8, ask_fallback=_no_fallback, ask_review=ask)
    )
    assert (outcome.path, outcome.held) == (path, held)


def test_a_default_below_the_threshold_is_taken_but_held() -> None:
    weak_default = Decision(confidence=0.5, rationale="default")
    options = StepOptions(threshold=0.8, default=lambda: weak_default)
    outcome = asyncio.run(ladder.without_model(options, 0.8, ask_fallback=_no_fallback))
    assert outcome is not None
    assert (outcome.path, outcome.held, outcome.decision) == (
        LadderPath.DEFAULT,
        True,
        weak_default,
    )


# -- durable review ---------------------------------------------------------------------------


def test_a_pending_review_stops_the_run_there_and_logs_the_decision_as_awaiting() -> None:
    graph, sent = triage(threshold=0.8, review=Review(timeout="3d"))
    runner = FakeRunner(verdict=REVIEW_PENDING)
    result, records = walk(graph, runner, "hello")
    assert result.status == "awaiting_review" and sent == []
    assert result.steps == {
        "ticket": "completed",
        "route": "awaiting_review",
        "send": "skipped",
        "remember": "skipped",
    }
    assert result.paths == {"route": "awaiting_review"}
    (row,) = records.decisions
    route_call = next(c for c in runner.calls if c.step == "route")
    # Logged under the id the continued run finds and updates: one row per decision.
    assert (row.path, row.id, row.confidence) == ("awaiting_review", route_call.decision_id, 0.3)
    assert records.reviews == []  # nothing answered yet: the review stays to be continued


def test_an_answered_review_continues_the_run_and_settles_the_logged_row() -> None:
    graph, sent = triage(threshold=0.8, review=Review(timeout="3d"))
    waiting = FakeRunner(verdict=REVIEW_PENDING)
    _, first = walk(graph, waiting, "hello")
    logged = first.decisions[0]
    proposed = Route(queue="billing", confidence=0.3, rationale="words")

    def cached(call: StepCall) -> Attempt:
        return Attempt(outcome="completed", trace=StepTrace(), value=proposed, cached=True)

    corrected = Reviewed("correct", {"queue": "shipping"})
    corrected.proposed = proposed.model_dump()
    runner = FakeRunner({"route": cached}, verdict=corrected)
    runner.logged = logged
    result, records = walk(graph, runner, "hello")
    assert result.status == "completed" and sent == ["shipping"]
    (row,) = records.decisions
    assert (row.id, row.path, row.reviewer) == (logged.id, "human", "ana")
    assert row.output["queue"] == "shipping" and row.correction == {"queue": "shipping"}
    assert records.reviews == ["review-1"]


def test_a_review_past_its_deadline_takes_the_default_or_holds_without_one() -> None:
    safe = Route(queue="other", confidence=1.0, rationale="safe")
    graph, sent = triage(threshold=0.8, review=Review(timeout="1h"), default=safe)
    result, records = walk(graph, FakeRunner(verdict=Reviewed(None)), "hello")
    assert (result.status, result.paths["route"], sent) == ("completed", "default", ["other"])
    assert records.reviews == ["review-1"]
    graph, sent = triage(threshold=0.8, review=Review(timeout="1h"))
    result, _ = walk(graph, FakeRunner(verdict=Reviewed(None)), "hello")
    assert (result.status, result.paths["route"], sent) == ("held", "held", [])
