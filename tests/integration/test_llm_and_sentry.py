"""Reasoning through the real openai client and instructor against the bundled model server,
and failure reports received by a local Sentry endpoint."""

from __future__ import annotations

import pytest

from agents import LLM, Agent
from agents.modelserver import ModelServer
from agents.settings import reload_settings
from agents.testing.sentry import SentryReceiver
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")


def llm_agent(name: str, *, asynchronous: bool = False, retries: int = 0) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    if asynchronous:

        @agent.reasoning(threshold=0.5, retries=retries, retry_delay=0.05)
        async def route(ticket: Ticket, llm: LLM) -> Routing:
            return await llm.adecide(Routing, f"Route this ticket: {ticket.text}")

    else:

        @agent.reasoning(threshold=0.5, retries=retries, retry_delay=0.05)
        def route(ticket: Ticket, llm: LLM) -> Routing:
            return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    return agent


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_reasoning_step_decides_through_the_model_server_and_never_pays_twice(
    sqlite_url: str, model_server: ModelServer, asynchronous: bool
) -> None:
    agent = llm_agent(f"llm-{asynchronous}", asynchronous=asynchronous)
    first = agent.run(tenant="acme", raw="I was charged twice, I need a refund")
    assert first.status == "completed", first.error
    assert first.outputs["route"].category == "billing"  # steered by the bundled rules
    assert 0.5 <= first.outputs["route"].confidence <= 1
    assert model_server.stats.requests_total == 1
    from agents.store import queries

    rows = {s.step: s for s in queries.steps(tenant="acme", agent_run_id=first.run_id)}
    assert rows["route"].tokens_in > 0 and rows["route"].tokens_out > 0
    assert rows["route"].model_ms is not None and rows["ticket"].tokens_in == 0
    again = agent.run(tenant="acme", raw="I was charged twice, I need a refund")
    assert again.steps["route"] == "cached"
    assert model_server.stats.requests_total == 1


def test_schema_invalid_output_is_reasked_and_a_500_is_retried(
    sqlite_url: str, model_server: ModelServer
) -> None:
    model_server.faults.update(fail_next=["schema_invalid", "500"])
    agent = llm_agent("llm-faults", retries=2)
    result = agent.run(tenant="acme", raw="my package never arrived")
    assert result.status == "completed", result.error
    assert result.outputs["route"].category == "shipping"
    # schema_invalid → instructor re-ask; 500 → retried by the LLM layer (one retry layer).
    assert model_server.stats.faults_injected == 2
    assert model_server.stats.requests_total == 3


def test_a_failed_step_reaches_sentry_once_after_its_last_retry_with_no_secret(
    sqlite_url: str, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.observe import flush, init_sentry

    planted = "sk-proj-" + "Z" * 40
    agent = Agent("sentry-demo")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning
    def route(ticket: Ticket) -> Routing:
        return Routing(category="billing", confidence=0.9, rationale="rule")

    @agent.action(retries=1, retry_delay=0.01)
    def send(route: Routing) -> None:
        raise ConnectionError(f"outside system refused key {planted} for a@b.example")

    with SentryReceiver() as receiver:
        monkeypatch.setenv("SENTRY_DSN", receiver.dsn)
        reload_settings()
        try:
            result = agent.run(tenant="acme", subject="cust-9", raw="hello")
            flush()
            events = receiver.wait_for(1, timeout=10)
        finally:
            monkeypatch.delenv("SENTRY_DSN")
            reload_settings()
            init_sentry(None, force=True)
        assert result.status == "failed"
        assert len(receiver.events()) == 1
        tags = dict(events[0]["tags"])
        assert tags["agent"] == "sentry-demo" and tags["step"] == "send"
        assert tags["layer"] == "action" and tags["tenant"] == "acme"
        assert tags["attempt"] == "2"
        assert tags["flow_run_id"] == result.flow_run_id
        assert planted not in receiver.raw_text()
        assert "a@b.example" not in receiver.raw_text()
        assert planted not in (result.error or "")


def test_instructor_is_asked_with_one_schema_class_per_output_type(
    sqlite_url: str, model_server: ModelServer
) -> None:
    """instructor wraps a plain model in a new class per request (a pydantic schema build
    each time); the runtime hands it one wrapper per type, so every answer shares it."""
    import asyncio

    async def ask(text: str) -> Routing:
        return await LLM().adecide(Routing, f"Route this ticket: {text}", cache=False)

    first = asyncio.run(ask("I was charged twice"))
    second = asyncio.run(ask("My parcel is late"))
    third = LLM().decide(Routing, "Route this ticket: refund please", cache=False)
    assert model_server.stats.requests_total == 3
    assert all(isinstance(r, Routing) for r in (first, second, third))
    assert type(first) is type(second) is type(third)
    assert type(first).model_fields.keys() == Routing.model_fields.keys()
