"""Two tenants run the same agent on the same subject with the same input; neither can read,
reuse or change the other's data through any public path (API, cache, ledger, CLI)."""

from __future__ import annotations

import io
import json
import threading
from typing import Any

import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from agents import Agent, Decision, Memory, RunContext, decisions
from agents.cli import app
from agents.store import queries

pytestmark = pytest.mark.faults  # scenario 7's fixed example; the properties are beside it

runner = CliRunner()
SUBJECT = "shared-customer"


class Seen(BaseModel):
    text: str
    history: int


class Verdict(Decision):
    queue: str


def _agent(calls: dict[str, int]) -> Agent:
    agent = Agent("iso-agent")
    lock = threading.Lock()

    def count(step: str) -> None:
        with lock:
            calls[step] = calls.get(step, 0) + 1

    @agent.perception
    def seen(raw: dict[str, Any], memory: Memory) -> Seen:
        count("seen")
        return Seen(text=raw["text"], history=int(memory.get("count", 0) or 0))

    @agent.reasoning
    def verdict(seen: Seen) -> Verdict:
        count("verdict")
        return Verdict(queue="billing", confidence=0.9, rationale=f"history {seen.history}")

    @agent.action
    def send(verdict: Verdict, idempotency_key: str) -> str:
        count("send")
        return idempotency_key

    @agent.learning
    def remember(send: str, memory: Memory, context: RunContext) -> None:
        memory.update("count", lambda n: (n or 0) + 1)
        memory.set("note", f"private to {context.tenant}")
        context.set_outcome(f"sent by {context.tenant}")

    return agent


def _cli_json(*args: str) -> list[dict[str, Any]]:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.output.splitlines() if line.strip()]


@pytest.mark.usefixtures("prefect_api")
def test_no_public_path_crosses_tenants(state_db: str) -> None:
    calls: dict[str, int] = {}
    agent = _agent(calls)
    raw = {"text": "refund please"}
    first = agent.run(tenant="tenant-a", subject=SUBJECT, raw=raw)
    assert first.status == "completed", first.error
    second = agent.run(tenant="tenant-b", subject=SUBJECT, raw=raw)
    assert second.status == "completed", second.error

    # Results cache and action ledger: B reused nothing of A's, and its action really ran.
    assert set(second.steps.values()) == {"completed"}
    assert calls == {"seen": 2, "verdict": 2, "send": 2}
    assert second.outputs["seen"].history == 0  # A's memory was invisible to B's perception
    assert second.outputs["send"] != first.outputs["send"]  # idempotency keys differ by tenant

    # Memory through the API: same agent and subject, different tenants.
    a_memory = Memory(tenant="tenant-a", agent="iso-agent", subject=SUBJECT)
    b_memory = Memory(tenant="tenant-b", agent="iso-agent", subject=SUBJECT)
    assert a_memory.get("note") == "private to tenant-a"
    assert b_memory.get("note") == "private to tenant-b"
    a_memory.set("only-a", 1)
    assert b_memory.get("only-a") is None
    assert Memory(tenant="tenant-c", agent="iso-agent", subject=SUBJECT).get("count") is None

    # Runs, steps, memory rows and actions through the query API.
    a_runs = queries.runs(tenant="tenant-a", agent="iso-agent")
    b_runs = queries.runs(tenant="tenant-b", agent="iso-agent")
    assert {r.id for r in a_runs} == {first.run_id}
    assert {r.id for r in b_runs} == {second.run_id}
    assert queries.steps(tenant="tenant-b", agent_run_id=first.run_id) == []
    assert {m.tenant for m in queries.memory(tenant="tenant-b")} == {"tenant-b"}
    assert {a.tenant for a in queries.actions(tenant="tenant-b")} == {"tenant-b"}
    assert queries.runs(tenant="tenant-c") == []

    # The decision log: query, get, export and outcomes.
    a_decisions = decisions.query(tenant="tenant-a", agent="iso-agent")
    b_decisions = decisions.query(tenant="tenant-b", agent="iso-agent")
    assert len(a_decisions) == len(b_decisions) == 1
    assert a_decisions[0].outcome == "sent by tenant-a"
    assert decisions.get(a_decisions[0].id, tenant="tenant-b") is None
    assert not decisions.set_outcome(a_decisions[0].id, tenant="tenant-b", outcome="hijacked")
    exported = io.StringIO()
    decisions.export_jsonl(decisions.query(tenant="tenant-b"), exported)
    exported_ids = {json.loads(line)["id"] for line in exported.getvalue().splitlines()}
    assert exported_ids == {b_decisions[0].id}

    # The CLI: runs, memory and decisions of one tenant only.
    assert {r["tenant"] for r in _cli_json("runs", "--tenant", "tenant-b")} == {"tenant-b"}
    cli_memory = _cli_json("memory", "--tenant", "tenant-b", "--subject", SUBJECT)
    assert cli_memory and all("tenant-a" not in json.dumps(row) for row in cli_memory)
    cli_decisions = _cli_json("decisions", "--tenant", "tenant-b")
    assert {row["id"] for row in cli_decisions} == {b_decisions[0].id}

    # No path accepts a missing tenant.
    for call in (
        lambda: queries.runs(tenant=""),
        lambda: queries.memory(tenant=""),
        lambda: decisions.query(tenant=""),
        lambda: Memory(tenant="", agent="iso-agent", subject=SUBJECT),
    ):
        with pytest.raises((TypeError, ValueError)):
            call()
