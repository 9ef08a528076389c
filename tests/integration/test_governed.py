"""Governed reasoning end to end through real HTTP: fatal provider errors fail fast and reach
Sentry once; 30% transient faults over 200 runs still complete every run with one action each;
each flow run publishes its decisions as a table artifact."""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator

import pytest

from agents import LLM, Agent
from agents.modelserver import ModelServer
from agents.settings import reload_settings
from agents.testing.sentry import SentryReceiver
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")
PLANTED_KEY = "sk-proj-" + "Q7" * 24


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[ModelServer]:
    with ModelServer(port=0) as server:
        monkeypatch.setenv("STALWART_MODEL_URL", server.url)
        monkeypatch.setenv("STALWART_API_KEY", PLANTED_KEY)
        monkeypatch.setenv("STALWART_MODEL_TIMEOUT_SECONDS", "0.5")
        monkeypatch.setenv("STALWART_MODEL_MAX_ATTEMPTS", "10")
        monkeypatch.setenv("STALWART_MODEL_RETRY_BASE_SECONDS", "0.01")
        monkeypatch.setenv("STALWART_MODEL_RETRY_MAX_WAIT_SECONDS", "0.05")
        monkeypatch.setenv("STALWART_BREAKER_FAILURE_THRESHOLD", "1000")
        reload_settings()
        from agents.policy.breaker import reset_breakers

        reset_breakers()
        yield server
    for name in (
        "STALWART_MODEL_URL",
        "STALWART_API_KEY",
        "STALWART_MODEL_TIMEOUT_SECONDS",
        "STALWART_MODEL_MAX_ATTEMPTS",
        "STALWART_MODEL_RETRY_BASE_SECONDS",
        "STALWART_MODEL_RETRY_MAX_WAIT_SECONDS",
        "STALWART_BREAKER_FAILURE_THRESHOLD",
    ):
        monkeypatch.delenv(name)
    reload_settings()


def triage(name: str, actions: Counter[str], lock: threading.Lock) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5, retries=2, retry_delay=0.01)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def send(route: Routing, idempotency_key: str) -> str:
        with lock:
            actions[idempotency_key] += 1
        return route.category

    return agent


@pytest.mark.parametrize("status", ["400", "401"])
def test_a_rejected_request_fails_fast_once_with_one_sentry_event_and_no_key(
    sqlite_url: str, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch, status: str
) -> None:
    from agents.observe import flush, init_sentry

    model_server.faults.update(status_code=int(status))
    actions: Counter[str] = Counter()
    agent = triage(f"gov-fatal-{status}", actions, threading.Lock())
    with SentryReceiver() as receiver:
        monkeypatch.setenv("SENTRY_DSN", receiver.dsn)
        reload_settings()
        try:
            result = agent.run(tenant="acme", raw="my invoice is wrong")
            flush()
            receiver.wait_for(1, timeout=10)
        finally:
            monkeypatch.delenv("SENTRY_DSN")
            reload_settings()
            init_sentry(None, force=True)
        assert result.status == "failed" and result.steps["send"] == "skipped"
        assert model_server.stats.requests_total == 1, "a rejected request was retried"
        assert status in (result.error or "") and "stalwart-test" in (result.error or "")
        events = receiver.events()
        assert len(events) == 1, [
            (
                e.get("tags"),
                [v.get("mechanism") for v in (e.get("exception") or {}).get("values", [])],
            )
            for e in events
        ]
        assert PLANTED_KEY not in receiver.raw_text() and PLANTED_KEY not in (result.error or "")
        assert not actions


@pytest.mark.slow
def test_thirty_percent_transient_faults_over_200_runs_complete_every_run_acting_once(
    state_db: str, model_server: ModelServer
) -> None:
    model_server.faults.update(
        error_rate=0.3,
        error_kinds=["429", "500", "drop", "timeout", "malformed", "schema_invalid"],
        retry_after_s=0.01,
        timeout_sleep_s=1.0,
        seed=7,
    )
    actions: Counter[str] = Counter()
    agent = triage("gov-faults", actions, threading.Lock())
    tenant = f"faults-{state_db.split(':')[0]}"
    items = [
        {"raw": f"ticket {n}: my invoice is wrong", "subject": f"c{n % 9}"} for n in range(200)
    ]
    results = agent.batch(items, tenant=tenant, concurrency=32)
    assert Counter(r.status for r in results) == {"completed": 200}, [
        r.error for r in results if r.error
    ][:3]
    assert len(actions) == 200 and set(actions.values()) == {1}
    assert model_server.stats.faults_injected > 30
    from agents import decisions

    assert len(decisions.query(tenant=tenant, agent="gov-faults", limit=500)) == 200


def test_each_flow_run_publishes_its_decisions_as_a_table_artifact(
    sqlite_url: str, model_server: ModelServer
) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    agent = triage("gov-artifact", Counter(), threading.Lock())
    results = agent.batch([{"raw": "refund"}, {"raw": "crash"}], tenant="acme")

    async def artifacts() -> list[object]:
        async with get_client() as client:
            return list(
                await client.read_artifacts(
                    artifact_filter=ArtifactFilter(
                        flow_run_id=ArtifactFilterFlowRunId(any_=[results[0].flow_run_id])
                    )
                )
            )

    found = asyncio.run(artifacts())
    tables = [a for a in found if getattr(a, "type", "") == "table"]
    assert tables, [getattr(a, "type", None) for a in found]
    assert "route" in str(tables[0].data)  # type: ignore[attr-defined]


def test_a_learning_step_records_the_outcome_of_its_runs_decision(
    state_db: str, model_server: ModelServer
) -> None:
    from agents import RunContext, decisions

    agent = triage("gov-outcome", Counter(), threading.Lock())

    @agent.learning
    def record(send: str, context: RunContext) -> None:
        context.set_outcome({"routed_to": send, "reopened": False})

    tenant = f"outcome-{state_db.split(':')[0]}"
    result = agent.run(tenant=tenant, raw="my invoice is wrong")
    assert result.status == "completed", result.error
    (logged,) = decisions.query(tenant=tenant, agent="gov-outcome")
    assert logged.outcome == {"routed_to": "billing", "reopened": False}
    assert logged.outcome_at is not None and logged.prompt_version
    assert logged.agent_run_id == result.run_id and logged.tokens_in > 0


@pytest.mark.parametrize("with_default", [True, False])
def test_a_model_down_through_every_retry_takes_the_safe_default_or_fails_the_run(
    sqlite_url: str, model_server: ModelServer, with_default: bool
) -> None:
    """Transient failures that outlast the retries (`ProviderUnavailable`) are no decision:
    the step's safe default is taken and logged with the error, so the input is not lost; a
    step without a default fails its run, as before."""
    from agents import decisions

    model_server.faults.update(status_code=503)
    actions: Counter[str] = Counter()
    name = f"gov-down-{with_default}"
    agent = Agent(name)
    escalate = Routing(category="other", confidence=1.0, rationale="model unavailable")

    @agent.reasoning(threshold=0.5, default=escalate if with_default else None)
    def route(raw: str, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {raw}")

    @agent.action
    def send(route: Routing, idempotency_key: str) -> str:
        actions[idempotency_key] += 1
        return route.category

    result = agent.run(tenant="acme", raw="my parcel is late")
    logged = decisions.query(tenant="acme", agent=name)
    if not with_default:
        assert result.status == "failed" and "ProviderUnavailable" in (result.error or "")
        assert not actions and logged == []
        return
    assert result.status == "completed", result.error
    assert result.paths["route"] == "default" and result.outputs["send"] == "other"
    assert any("no decision from the model" in note for note in result.notes)
    assert list(actions.values()) == [1]
    assert [(d.path, d.error_class, d.output["category"]) for d in logged] == [
        ("default", "ProviderUnavailable", "other")
    ]
    assert model_server.stats.requests_total >= 10  # every retry was spent first
