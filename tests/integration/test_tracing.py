"""Run traces: Sentry transactions in the shape of its AI Agents insights and the same spans over
OTLP, against the bundled model server over HTTP, a local Sentry receiver and a local OTLP/HTTP
receiver; and `stalwart runs` leading from a subject to a run's evidence."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from typer.testing import CliRunner

from agents import LLM, Agent
from agents.observe import otel, shutdown_sentry, tracing
from agents.settings import reload_settings
from agents.store import queries
from agents.store.decisions import find_decisions
from agents.testing.otlp import OTLPReceiver
from agents.testing.sentry import SentryReceiver
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")

PLANTED = "sk-proj-" + "Q" * 40
PRICES = {"stalwart-test": [0.5, 1.5]}  # USD per 1k tokens: costs that are not zero

#: Steering rules: a ticket naming an order calls `lookup_order` first, then answers billing.
RULES: list[dict[str, Any]] = [
    {
        "when": {"contains": ["order"]},
        "call": [{"tool": "lookup_order", "arguments": {"order_id": {"regex": r"order (\d+)"}}}],
    },
    {"when": {"contains": ["refund"]}, "set": {"category": "billing", "confidence": 0.93}},
    {"set": {"category": "technical", "confidence": 0.9}},
]


def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's status and what the customer asked for."""
    return {"order": order_id, "request": "refund"}


def traced_agent(name: str, *, failing_action: bool = False) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5, tools=[lookup_order])
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def reply(route: Routing) -> str:
        if failing_action:
            raise ConnectionError(f"mail server refused key {PLANTED}")
        return route.category

    return agent


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[SentryReceiver, OTLPReceiver]]:
    """Sentry and OTLP receivers made the sinks in force; tracing on at rate 1, content on."""
    with SentryReceiver() as sentry, OTLPReceiver() as collector:
        monkeypatch.setenv("SENTRY_DSN", sentry.dsn)
        monkeypatch.setenv("STALWART_SENTRY_TRACES_SAMPLE_RATE", "1.0")
        monkeypatch.setenv("STALWART_OTLP_ENDPOINT", collector.endpoint)
        monkeypatch.setenv("STALWART_TRACE_CONTENT", "true")
        monkeypatch.setenv("STALWART_MODEL_PRICES", json.dumps(PRICES))
        reload_settings()
        try:
            yield sentry, collector
        finally:
            for name in (
                "SENTRY_DSN",
                "STALWART_SENTRY_TRACES_SAMPLE_RATE",
                "STALWART_OTLP_ENDPOINT",
                "STALWART_TRACE_CONTENT",
                "STALWART_MODEL_PRICES",
            ):
                monkeypatch.delenv(name, raising=False)
            reload_settings()
            shutdown_sentry()
            otel.shutdown()


def sent(receiver: SentryReceiver, collector: OTLPReceiver, spans: int) -> list[dict[str, Any]]:
    tracing.flush(5)
    collector.wait_for(spans, timeout=10)
    return receiver.transactions()


def test_a_traced_run_is_one_ai_agent_transaction_and_the_same_spans_over_otlp(
    sqlite_url: str, steered_model_server: Any, receivers: tuple[SentryReceiver, OTLPReceiver]
) -> None:
    receiver, collector = receivers
    steered_model_server(RULES)
    agent = traced_agent("traced")
    texts = [f"order {n}: refund please, my password=hunter2 and {PLANTED}" for n in (1001, 1002)]
    results = agent.batch(
        [{"raw": t, "subject": f"cust-{i}"} for i, t in enumerate(texts)], tenant="acme"
    )
    assert [r.status for r in results] == ["completed", "completed"]
    found = sent(receiver, collector, spans=2 * 6)
    assert len(found) == 2
    runs = {r.id: r for r in queries.runs(tenant="acme")}
    decisions = find_decisions(tenant="acme", limit=100)
    for transaction in found:
        trace = transaction["contexts"]["trace"]
        data = trace["data"]
        run = runs[data["stalwart.run_id"]]
        assert transaction["transaction"] == "invoke_agent traced"
        assert trace["op"] == "gen_ai.invoke_agent" and trace["status"] == "ok"
        assert run.trace_id == trace["trace_id"]
        assert data["gen_ai.agent.name"] == "traced"
        assert data["gen_ai.operation.name"] == "invoke_agent"
        assert data["stalwart.tenant"] == "acme" and data["stalwart.subject"] == run.subject
        assert data["stalwart.run_key"] == run.run_key
        assert data["stalwart.flow_run_id"] == run.flow_run_id
        assert data["stalwart.status"] == "completed"
        assert transaction["tags"]["tenant"] == "acme"
        spans = transaction["spans"]
        steps = {s["data"]["stalwart.step"]: s for s in spans if s["op"] == "stalwart.step"}
        assert set(steps) == {"ticket", "route", "reply"}
        assert {s["parent_span_id"] for s in steps.values()} == {trace["span_id"]}
        assert steps["route"]["data"]["stalwart.layer"] == "reasoning"
        assert {s["data"]["stalwart.outcome"] for s in steps.values()} == {"completed"}
        chats = [s for s in spans if s["op"] == "gen_ai.chat"]
        assert len(chats) == 2  # turn 1 calls the tool, turn 2 answers
        for chat in chats:
            assert chat["parent_span_id"] == steps["route"]["span_id"]
            assert chat["description"] == "chat stalwart-test"
            assert chat["data"]["gen_ai.request.model"] == "stalwart-test"
            assert chat["data"]["gen_ai.system"] == "openai"
            assert chat["data"]["stalwart.endpoint"] and chat["data"]["stalwart.rung"] == "model"
            assert chat["data"]["stalwart.cached"] is False
            assert chat["data"]["stalwart.attempts"] == 1
            assert chat["data"]["gen_ai.usage.input_tokens"] > 0
            assert chat["start_timestamp"] <= chat["timestamp"]
        tools = [s for s in spans if s["op"] == "gen_ai.execute_tool"]
        by_name = {s["data"]["gen_ai.tool.name"]: s for s in tools}
        assert set(by_name) == {"lookup_order", "reply"}
        assert by_name["lookup_order"]["parent_span_id"] == steps["route"]["span_id"]
        assert by_name["lookup_order"]["data"]["stalwart.tool_status"] == "ok"
        action = by_name["reply"]
        assert action["parent_span_id"] == steps["reply"]["span_id"]
        assert action["data"]["stalwart.action_status"] == "completed"
        assert len(action["data"]["stalwart.idempotency_key_digest"]) == 64
        # Tokens and costs in the spans add up to the decision log's.
        logged = [d for d in decisions if d.agent_run_id == run.id]
        assert len(logged) == 1
        assert sum(c["data"]["gen_ai.usage.input_tokens"] for c in chats) == logged[0].tokens_in
        assert sum(c["data"]["gen_ai.usage.output_tokens"] for c in chats) == logged[0].tokens_out
        cost = sum(c["data"]["stalwart.cost_usd"] for c in chats)
        assert cost == pytest.approx(logged[0].cost) and cost > 0
        # Prompts are recorded (STALWART_TRACE_CONTENT) and scrubbed.
        assert "Route this ticket" in chats[0]["data"]["gen_ai.input.messages"]
    text = receiver.raw_text()
    assert PLANTED not in text and "hunter2" not in text
    assert "sk-test-not-a-real-key" not in text  # the endpoint's API key
    # The OTLP receiver got the same spans, with the same ids and GenAI attributes.
    received = collector.spans
    by_id = {s.span_id: s for s in received}
    expected = {t["contexts"]["trace"]["span_id"] for t in found} | {
        s["span_id"] for t in found for s in t["spans"]
    }
    assert set(by_id) == expected
    assert {s.trace_id for s in received} == {t["contexts"]["trace"]["trace_id"] for t in found}
    chat = next(s for s in received if s.name == "chat stalwart-test")
    assert chat.kind == 3  # SPAN_KIND_CLIENT
    assert chat.attributes["gen_ai.operation.name"] == "chat"
    assert chat.attributes["gen_ai.usage.input_tokens"] > 0
    assert chat.resource["service.name"] == "stalwart"
    assert chat.scope == "stalwart"
    assert PLANTED not in collector.raw_text() and "hunter2" not in collector.raw_text()


def test_an_error_links_to_its_runs_trace(
    sqlite_url: str, steered_model_server: Any, receivers: tuple[SentryReceiver, OTLPReceiver]
) -> None:
    receiver, collector = receivers
    steered_model_server(RULES)
    result = traced_agent("traced-fail", failing_action=True).run(
        tenant="acme", subject="cust-7", raw="order 1003: refund please"
    )
    assert result.status == "failed"
    (transaction,) = sent(receiver, collector, spans=6)
    (event,) = receiver.wait_for(1)
    trace = transaction["contexts"]["trace"]
    assert trace["status"] == "internal_error"
    reply = next(s for s in transaction["spans"] if s["description"] == "step reply")
    assert reply["status"] == "internal_error" and reply["data"]["stalwart.outcome"] == "failed"
    action = next(s for s in transaction["spans"] if s["description"] == "execute_tool reply")
    assert action["data"]["stalwart.action_status"] == "failed"
    assert event["contexts"]["trace"]["trace_id"] == trace["trace_id"]
    assert event["contexts"]["trace"]["span_id"] == reply["span_id"]
    assert PLANTED not in receiver.raw_text()


def test_sampling_keeps_whole_runs_and_unsampled_runs_send_nothing(
    sqlite_url: str, model_server: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    agent = Agent("sampled")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def reply(route: Routing) -> str:
        return route.category

    with SentryReceiver() as receiver:
        monkeypatch.setenv("SENTRY_DSN", receiver.dsn)
        monkeypatch.setenv("STALWART_SENTRY_TRACES_SAMPLE_RATE", "0.5")
        reload_settings()
        try:
            results = agent.batch(
                [{"raw": f"ticket {n}: my parcel is late"} for n in range(40)], tenant="acme"
            )
            tracing.flush(5)
        finally:
            monkeypatch.delenv("SENTRY_DSN")
            monkeypatch.delenv("STALWART_SENTRY_TRACES_SAMPLE_RATE")
            reload_settings()
            shutdown_sentry()
        assert {r.status for r in results} == {"completed"}
        found = receiver.transactions()
    traced = {r.id: r.trace_id for r in queries.runs(tenant="acme") if r.trace_id}
    assert 0 < len(found) < 40  # P(all or none of 40 at 0.5) is 2e-12
    assert len(found) == len(traced)
    for transaction in found:
        run_id = transaction["contexts"]["trace"]["data"]["stalwart.run_id"]
        assert traced[run_id] == transaction["contexts"]["trace"]["trace_id"]
        steps = [s["description"] for s in transaction["spans"] if s["op"] == "stalwart.step"]
        assert sorted(steps) == ["step reply", "step route", "step ticket"]
        assert sum(s["op"] == "gen_ai.chat" for s in transaction["spans"]) == 1
        assert sum(s["op"] == "gen_ai.execute_tool" for s in transaction["spans"]) == 1


def test_runs_leads_from_a_subject_to_the_evidence_of_its_runs_and_only_its_tenants(
    sqlite_url: str, steered_model_server: Any, receivers: tuple[SentryReceiver, OTLPReceiver]
) -> None:
    from agents.cli import app

    steered_model_server(RULES)
    agent = traced_agent("looked-up")
    done = agent.run(tenant="acme", subject="cust-42", raw="order 1042: refund please")
    agent.run(tenant="globex", subject="cust-42", raw="order 1043: refund please")
    assert done.status == "completed"
    cli = CliRunner()
    out = cli.invoke(app, ["runs", "--tenant", "acme", "--subject", "cust-42", "--json"])
    assert out.exit_code == 0, out.output
    (row,) = [json.loads(line) for line in out.output.splitlines() if line.strip()]
    run = queries.runs(tenant="acme", subject="cust-42")[0]
    assert row["id"] == done.run_id == run.id and row["trace_id"] == run.trace_id
    assert row["flow_run_url"].endswith(f"/runs/flow-run/{done.flow_run_id}")
    steps = queries.steps(tenant="acme", agent_run_id=run.id)
    assert row["task_run_ids"] == {s.step: s.task_run_id for s in steps if s.task_run_id}
    assert set(row["task_run_ids"]) == {"ticket", "route", "reply"}
    decisions = find_decisions(tenant="acme", limit=10)
    assert row["decision_ids"] == [d.id for d in decisions if d.agent_run_id == run.id]
    assert len(row["decision_ids"]) == 1
    by_decision = cli.invoke(
        app, ["runs", "--tenant", "acme", "--decision", row["decision_ids"][0], "--json"]
    )
    assert json.loads(by_decision.output)["id"] == run.id
    # Another tenant's runs, and its evidence, stay out of sight.
    theirs = queries.runs(tenant="globex")[0].id
    other = cli.invoke(app, ["runs", "--tenant", "acme", "--run", theirs, "--json"])
    assert other.exit_code == 0 and other.output.strip() == ""
    assert queries.run_evidence(tenant="acme", run_ids=[theirs])[theirs].task_run_ids == {}
    table = cli.invoke(app, ["runs", "--tenant", "acme", "--subject", "cust-42"])
    assert table.exit_code == 0 and run.trace_id and run.trace_id in table.output


def test_tracing_off_imports_no_opentelemetry_sdk_and_records_nothing(tmp_path: Any) -> None:
    script = (
        "import sys\n"
        "from agents.observe import tracing\n"
        "trace = tracing.begin_run(agent='a', tenant='t', subject=None, run_key='k',\n"
        "                          run_id='r', flow_run_id=None)\n"
        "print(trace is None, 'opentelemetry.sdk' in sys.modules)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("SENTRY")}
    env.pop("STALWART_OTLP_ENDPOINT", None)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["True", "False"]
