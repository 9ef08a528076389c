"""The fallback ladder below a confidence threshold: fallback model, human review (approve,
correct, reject, deadline), safe default — through real HTTP to the model server."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest

from agents import LLM, Agent, Review
from agents.modelserver import ModelServer
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")


def ladder_agent(name: str, acted: list[str], **ladder: Any) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.7, **ladder)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def send(route: Routing) -> str:
        acted.append(route.category)
        return route.category

    return agent


def test_below_threshold_the_fallback_model_decides(
    state_db: str, model_server: ModelServer
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    model_server.faults.update(confidence_by_model={"stalwart-test": 0.4, "strong": 0.95})
    acted: list[str] = []
    agent = ladder_agent("ladder-fallback", acted, fallback_model="strong")
    result = agent.run(tenant=tenant, raw="I want a refund")
    assert result.status == "completed", result.error
    assert result.paths["route"] == "fallback_model"
    assert result.outputs["route"].confidence == pytest.approx(0.95)
    assert acted == ["billing"]
    assert model_server.stats.requests_by_model == {"stalwart-test": 1, "strong": 1}
    from agents import decisions

    logged = decisions.query(tenant=tenant, agent="ladder-fallback")
    assert [(d.path, d.model) for d in logged] == [("fallback_model", "strong")]


def test_a_fallback_decision_costs_each_call_at_its_own_model_price(
    state_db: str, model_server: ModelServer
) -> None:
    from agents import decisions
    from agents.pricing import cost_of
    from agents.settings import temporary_settings

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    model_server.faults.update(confidence_by_model={"stalwart-test": 0.4, "strong": 0.95})
    prices = {"stalwart-test": (0.001, 0.002), "strong": (0.1, 0.2)}
    with temporary_settings(model_prices=prices):
        result = ladder_agent("ladder-cost", [], fallback_model="strong").run(
            tenant=tenant, raw="I want a refund"
        )
        assert result.paths["route"] == "fallback_model"
        (row,) = decisions.query(tenant=tenant, agent="ladder-cost")
        # Tokens of both calls; priced all at the strong model's rate it would cost the most,
        # all at the primary's rate the least. Each at its own model's rate lies between.
        cheapest = cost_of("stalwart-test", row.tokens_in, row.tokens_out)
        dearest = cost_of("strong", row.tokens_in, row.tokens_out)
        assert row.tokens_in > 0 and cheapest < row.cost < dearest


@pytest.mark.parametrize(
    ("answer", "path", "category", "acts"),
    [
        ({"verdict": "approve", "reviewer": "ana"}, "human", "billing", True),
        (
            {"verdict": "correct", "correction": {"category": "shipping"}, "reviewer": "bo"},
            "human",
            "shipping",
            True,
        ),
        ({"verdict": "reject", "reviewer": "cy"}, "default", "other", False),
        (None, "default", "other", False),
    ],
    ids=["approve", "correct", "reject", "timeout"],
)
def test_human_review_approves_corrects_or_rejects_and_the_default_catches_the_rest(
    state_db: str,
    model_server: ModelServer,
    answer: dict[str, Any] | None,
    path: str,
    category: str,
    acts: bool,
) -> None:
    from agents import decisions, reviews

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    model_server.faults.update(force_confidence=0.4)
    acted: list[str] = []
    escalate = Routing(category="other", confidence=0.0, rationale="escalated to a person")
    agent = ladder_agent(
        f"ladder-review-{path}-{category}",
        acted,
        review=Review(timeout=2 if answer is None else "1h"),
        default=escalate,
    )
    first = agent.run(tenant=tenant, raw="I want a refund")
    assert (first.status, first.paths["route"], acted) == ("awaiting_review", "awaiting_review", [])
    (waiting,) = reviews.pending(tenant=tenant, agent=agent.name)
    assert waiting.confidence == pytest.approx(0.4) and waiting.proposed["category"] == "billing"
    if answer is None:
        time.sleep(2.2)  # nobody answers before the deadline
        assert reviews.pending(tenant=tenant, agent=agent.name) == []
    else:
        reviews.answer(waiting.id, tenant=tenant, **answer)
    (result,) = agent.resume(tenant=tenant)
    assert result.paths["route"] == path
    assert result.outputs["route"].category == category
    if acts:
        assert result.status == "completed" and acted == [category]
    else:
        # The safe default is not confident enough to act on: the run is held, nothing done.
        assert result.status == "held" and acted == []
        assert result.steps["send"] == "skipped"
    # One model call in all: the continued run took the decision from its persisted result.
    assert model_server.stats.requests_total == 1
    (logged,) = decisions.query(tenant=tenant, agent=agent.name)
    assert logged.path == path
    if answer and path == "human":
        assert logged.reviewer == answer["reviewer"]
    if answer and answer["verdict"] == "correct":
        assert logged.correction == {"category": "shipping"}
    assert agent.resume(tenant=tenant) == []  # continued once, never again


def test_a_decision_below_threshold_with_no_ladder_is_held(
    sqlite_url: str, model_server: ModelServer
) -> None:
    model_server.faults.update(force_confidence=0.3)
    acted: list[str] = []
    result = ladder_agent("ladder-none", acted).run(tenant="acme", raw="hmm")
    assert (result.status, result.paths["route"], acted) == ("held", "held", [])
