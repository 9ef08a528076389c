"""What the Prefect view says about a batch: its final state counts failed and degraded inputs,
its tags and flow-level Sentry events name the tenant it served, and nothing of a failure lands
in Prefect's local result files."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prefect import tags
from typer.testing import CliRunner

from agents import LLM, Agent
from agents.cli import app
from agents.modelserver import ModelServer
from agents.settings import reload_settings
from agents.testing.sentry import SentryReceiver
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")
cli = CliRunner()


def _flow_run(flow_run_id: str | None) -> Any:
    from prefect import get_client

    assert flow_run_id
    with get_client(sync_client=True) as client:
        return client.read_flow_run(uuid.UUID(flow_run_id))


def picky_agent(name: str) -> Agent:
    """Fails every input whose text says `boom`."""
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        if "boom" in raw:
            raise ValueError("the ticket exploded")
        return Ticket(text=raw)

    @agent.learning
    def seen(ticket: Ticket) -> None:
        return None

    return agent


def test_failed_inputs_end_the_flow_run_failed_counting_them_and_batch_returns_all(
    sqlite_url: str,
) -> None:
    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    agent = picky_agent("truth-picky")
    texts = ["fine", "boom 1", "fine too", "boom 2", "boom 3"]
    results = agent.batch(
        [{"raw": t, "subject": f"s{i}"} for i, t in enumerate(texts)], tenant=tenant
    )

    assert [r.status for r in results] == ["completed", "failed", "completed", "failed", "failed"]
    flow_run = _flow_run(results[0].flow_run_id)
    assert flow_run.state.type.value == "FAILED"
    assert flow_run.state.name == "Failed"
    assert flow_run.state.message == "3 of 5 inputs failed"

    listed = cli.invoke(app, ["runs", "--tenant", tenant, "--status", "failed", "--json"])
    assert listed.exit_code == 0, listed.output
    rows = [json.loads(line) for line in listed.output.splitlines() if line.startswith("{")]
    assert sorted(r["subject"] for r in rows) == ["s1", "s3", "s4"]
    assert {r["status"] for r in rows} == {"failed"}


def test_a_batch_with_nothing_failed_ends_completed(sqlite_url: str) -> None:
    results = picky_agent("truth-fine").batch([{"raw": "fine"}, {"raw": "ok"}], tenant="acme")
    state = _flow_run(results[0].flow_run_id).state
    assert (state.type.value, state.name) == ("COMPLETED", "Completed")


@pytest.fixture
def model_down(model_server: ModelServer, monkeypatch: pytest.MonkeyPatch) -> ModelServer:
    """Every model request answers 503, once (no retry)."""
    monkeypatch.setenv("STALWART_MODEL_MAX_ATTEMPTS", "1")
    monkeypatch.setenv("STALWART_BREAKER_FAILURE_THRESHOLD", "1000")
    reload_settings()
    model_server.faults.status_code = 503
    return model_server


def test_inputs_that_fell_to_the_safe_default_end_the_flow_run_degraded(
    sqlite_url: str, model_down: ModelServer
) -> None:
    escalate = Routing(category="other", confidence=0.0, rationale="escalated: no model")
    agent = Agent("truth-degraded")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5, default=escalate)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    results = agent.batch([{"raw": "refund"}, {"raw": "parcel"}], tenant="acme")
    assert [(r.status, r.paths["route"]) for r in results] == [("held", "default")] * 2
    state = _flow_run(results[0].flow_run_id).state
    assert state.type.value == "COMPLETED"
    assert state.name == "Degraded"
    assert state.message == "2 of 2 inputs took the safe default: the model was unavailable"


def test_the_model_down_without_a_default_fails_the_flow_run(
    sqlite_url: str, model_down: ModelServer
) -> None:
    agent = Agent("truth-no-default")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    (result,) = agent.batch([{"raw": "refund"}], tenant="acme")
    assert result.status == "failed" and "ProviderUnavailable" in (result.error or "")
    state = _flow_run(result.flow_run_id).state
    assert (state.type.value, state.message) == ("FAILED", "1 of 1 input failed")


@pytest.fixture
def sentry(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentryReceiver]:
    from agents.observe import init_sentry

    with SentryReceiver() as receiver:
        monkeypatch.setenv("SENTRY_DSN", receiver.dsn)
        reload_settings()
        try:
            yield receiver
        finally:
            monkeypatch.delenv("SENTRY_DSN")
            reload_settings()
            init_sentry(None, force=True)


def test_tags_and_every_event_name_the_tenant_the_run_served(
    sqlite_url: str, sentry: SentryReceiver
) -> None:
    """Flow runs of a deployment tagged `tenant:demo` (here: a tags context, which Prefect
    copies onto the flow run the same way) that served `acme`."""
    from agents.observe import flush

    agent = picky_agent("truth-tenant")
    with tags("tenant:demo", "reference-agent"):
        results = agent.batch([{"raw": "boom"}, {"raw": "fine"}], tenant="acme")
        with pytest.raises(Exception, match="expected a list"):
            asyncio.run(agent.flow(inputs={"not": "a list"}, tenant="acme"))  # type: ignore[arg-type]
    flush()
    events = sentry.wait_for(2, timeout=10)
    flow_run = _flow_run(results[0].flow_run_id)
    assert "tenant:acme" in flow_run.tags and "tenant:demo" not in flow_run.tags
    assert "reference-agent" in flow_run.tags
    kinds = sorted("step" if dict(e["tags"]).get("step") else "flow" for e in events)
    assert kinds == ["flow", "step"], events  # the failed batch is not reported twice
    assert {dict(e["tags"])["tenant"] for e in events} == {"acme"}


def test_no_failure_lands_in_prefect_local_result_files(sqlite_url: str) -> None:
    """A failed step, a failed batch and a flow run that raised: nothing under the local
    storage path (`PREFECT_LOCAL_STORAGE_PATH`, the tests' stand-in for ~/.prefect/storage)."""
    storage = Path(os.environ["PREFECT_LOCAL_STORAGE_PATH"])
    before = set(storage.rglob("*")) if storage.exists() else set()
    agent = picky_agent("truth-no-files")
    (result,) = agent.batch([{"raw": "boom"}], tenant="acme")
    assert result.status == "failed"
    with pytest.raises(Exception, match="expected a list"):
        asyncio.run(agent.flow(inputs="not a list", tenant="acme"))  # type: ignore[arg-type]
    after = set(storage.rglob("*")) if storage.exists() else set()
    assert after - before == set()
