"""Running agents: flows, tasks, concurrency, retries, caching, held decisions, tenants."""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from typing import Any

import pytest
from pydantic import BaseModel
from sqlmodel import select

from agents import Agent, Decision, DeclarationError, Memory, RunContext
from agents.store import DecisionRecord, queries, session
from tests.support.models import Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")


class Routing(Decision):
    queue: str


class Sent(BaseModel):
    queue: str
    key: str


def make_agent(name: str, calls: dict[str, int], *, confidence: float = 0.9) -> Agent:
    agent = Agent(name)
    lock = threading.Lock()

    def count(step: str) -> None:
        with lock:
            calls[step] = calls.get(step, 0) + 1

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        count("ticket")
        return Ticket(text=raw["text"])

    @agent.reasoning(threshold=0.7)
    def route(ticket: Ticket) -> Routing:
        count("route")
        queue = "billing" if "refund" in ticket.text else "other"
        return Routing(queue=queue, confidence=confidence, rationale="keyword rule")

    @agent.action
    def send(route: Routing, idempotency_key: str) -> Sent:
        count("send")
        return Sent(queue=route.queue, key=idempotency_key)

    @agent.learning
    def remember(send: Sent, memory: Memory) -> None:
        count("remember")
        memory.update("routed", lambda n: (n or 0) + 1)

    return agent


def test_a_run_executes_every_step_as_a_task_and_records_it(state_db: str) -> None:
    calls: dict[str, int] = {}
    agent = make_agent("rt-basic", calls)
    result = agent.run(tenant="acme", subject="cust-1", raw={"text": "refund please"})
    assert result.status == "completed", result.error
    assert result.outputs["route"].queue == "billing"
    assert result.outputs["send"].key and len(result.outputs["send"].key) == 64
    assert calls == {"ticket": 1, "route": 1, "send": 1, "remember": 1}
    assert result.steps == dict.fromkeys(["ticket", "route", "send", "remember"], "completed")
    runs = queries.runs(tenant="acme", agent="rt-basic")
    assert [r.id for r in runs] == [result.run_id]
    assert runs[0].status == "completed" and runs[0].subject == "cust-1"
    steps = queries.steps(tenant="acme", agent_run_id=result.run_id)
    assert sorted(s.step for s in steps) == ["remember", "route", "send", "ticket"]
    assert Memory(tenant="acme", agent="rt-basic", subject="cust-1").get("routed") == 1


def test_prefect_sees_named_tasks_tags_and_the_dag_artifact(sqlite_url: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
    )

    agent = make_agent("rt-prefect", {})
    result = agent.run(tenant="acme", subject="cust-7", raw={"text": "hello"})
    assert result.flow_run_id

    async def inspect() -> tuple[Any, list[Any], list[Any]]:
        async with get_client() as client:
            flow_run = await client.read_flow_run(result.flow_run_id)
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[result.flow_run_id]))
            )
            artifacts = await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[result.flow_run_id])
                )
            )
            return flow_run, task_runs, artifacts

    expected = sorted(f"rt-prefect.{s}[cust-7]" for s in ["ticket", "route", "send", "remember"])
    deadline = time.monotonic() + 15
    while True:  # the server records task runs from events, a moment after the run ends
        flow_run, task_runs, artifacts = asyncio.run(inspect())
        names = sorted(tr.name for tr in task_runs)
        if names == expected or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"agent:rt-prefect", "tenant:acme", "subject:cust-7"} <= set(flow_run.tags)
    assert names == expected
    # Task runs carry no tags: each tag costs a concurrency-slot API call per task run.
    assert all(tr.tags == [] for tr in task_runs)
    assert any("```mermaid" in (a.data or "") for a in artifacts)


def test_independent_steps_run_concurrently(sqlite_url: str) -> None:
    agent = Agent("rt-concurrent")
    spans: dict[str, tuple[float, float]] = {}

    @agent.perception(cache=False)
    async def left(raw: str) -> str:
        start = time.monotonic()
        await asyncio.sleep(0.6)
        spans["left"] = (start, time.monotonic())
        return raw

    @agent.perception(cache=False)
    def right(raw: str) -> str:
        start = time.monotonic()
        time.sleep(0.6)
        spans["right"] = (start, time.monotonic())
        return raw

    @agent.reasoning(cache=False)
    def both(left: str, right: str) -> Routing:
        spans["both"] = (time.monotonic(), time.monotonic())
        return Routing(queue=left + right, confidence=1, rationale="r")

    result = agent.run(tenant="acme", raw="x")
    assert result.status == "completed", result.error
    (l0, l1), (r0, r1) = spans["left"], spans["right"]
    assert l0 < r1 and r0 < l1, "left and right did not overlap"
    assert spans["both"][0] >= max(l1, r1), "the consumer started before its inputs were ready"


def test_retries_back_off_and_user_errors_are_not_retried(sqlite_url: str) -> None:
    agent = Agent("rt-retries")
    attempts: list[float] = []

    @agent.perception(retries=3, retry_delay=0.2, cache=False)
    def flaky(raw: str) -> str:
        attempts.append(time.monotonic())
        if len(attempts) < 4:
            raise ConnectionError("transient")
        return raw

    @agent.reasoning(retries=3, retry_delay=0.2, cache=False)
    def decide(flaky: str) -> Routing:
        raise DeclarationError.single("rt-retries", "a developer mistake")

    result = agent.run(tenant="acme", raw="x")
    assert len(attempts) == 4
    gaps = [b - a for a, b in itertools.pairwise(attempts)]
    assert gaps[2] > gaps[0], f"no exponential backoff: {gaps}"
    assert result.status == "failed"
    assert result.steps["flaky"] == "completed" and result.steps["decide"] == "failed"
    assert "a developer mistake" in (result.error or "")
    rows = {s.step: s for s in queries.steps(tenant="acme", agent_run_id=result.run_id)}
    assert rows["flaky"].attempts == 4
    assert rows["decide"].attempts == 1


def test_a_second_run_with_the_same_inputs_executes_no_cached_step(state_db: str) -> None:
    calls: dict[str, int] = {}
    agent = make_agent("rt-cache", calls)
    first = agent.run(tenant="acme", subject="c1", raw={"text": "refund"})
    second = agent.run(tenant="acme", subject="c1", raw={"text": "refund"})
    assert calls == {"ticket": 1, "route": 1, "send": 1, "remember": 1}
    assert second.steps == dict.fromkeys(["ticket", "route", "send", "remember"], "cached")
    assert second.outputs["send"] == first.outputs["send"]
    other_tenant = agent.run(tenant="globex", subject="c1", raw={"text": "refund"})
    assert other_tenant.steps["route"] == "completed", "the cache leaked across tenants"
    assert calls["route"] == 2


def test_a_rerun_reads_on_the_event_loop_in_groups_and_writes_no_decision_again(
    state_db: str,
) -> None:
    """A rerun of finished runs reads its cached actions' ledger rows together, on SQLite on
    the event loop (a thread per read held the interpreter lock against the loop), and leaves
    the logged decisions as they are: not written again."""
    import sqlalchemy as sa

    calls: dict[str, int] = {}
    agent = make_agent("rt-rerun-reads", calls)
    items = [{"subject": f"c{i}", "raw": {"text": f"refund {i}"}} for i in range(12)]
    first = asyncio.run(agent.abatch(items, tenant="acme", concurrency=12))
    seen: list[tuple[str, str]] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append((threading.current_thread().name, " ".join(statement.split()).lower()))

    engine = sa.engine.Engine  # every engine: the loop's SQLite calls use one of their own
    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        loop_thread = threading.current_thread().name
        second = asyncio.run(agent.abatch(items, tenant="acme", concurrency=12))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)

    assert all(set(r.steps.values()) == {"cached"} for r in second)
    assert [r.paths for r in second] == [r.paths for r in first]
    assert calls["route"] == 12
    ledger_reads = [
        t for t, sql in seen if sql.startswith("select") and "from action_record" in sql
    ]
    assert ledger_reads, seen[:5]
    if state_db.startswith("sqlite"):
        assert set(ledger_reads) == {loop_thread}, ledger_reads
    assert len(ledger_reads) < len(items), "the ledger reads were not grouped"
    rewrites = [
        sql
        for _, sql in seen
        if sql.startswith(("insert into decision_record", "update decision_record"))
    ]
    assert not rewrites, rewrites[:2]
    with session(state_db) as s:
        logged = s.exec(
            select(DecisionRecord).where(
                DecisionRecord.tenant == "acme", DecisionRecord.agent == "rt-rerun-reads"
            )
        ).all()
    assert len(logged) == 12
    # The rerun decided nothing: its flow run shows no decision table (the first one does).
    tables = asyncio.run(_table_artifacts([first[0].flow_run_id, second[0].flow_run_id]))
    assert tables == {first[0].flow_run_id: 1}, tables


async def _table_artifacts(flow_run_ids: list[str | None]) -> dict[str, int]:
    """Table artifacts by flow run."""
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        found = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=flow_run_ids))
        )
    counts: dict[str, int] = {}
    for artifact in found:
        if artifact.type == "table":
            key = str(artifact.flow_run_id)
            counts[key] = counts.get(key, 0) + 1
    return counts


def test_a_decision_below_threshold_is_held_and_no_action_runs(sqlite_url: str) -> None:
    calls: dict[str, int] = {}
    agent = make_agent("rt-held", calls, confidence=0.4)
    result = agent.run(tenant="acme", raw={"text": "unclear"})
    assert result.status == "held"
    assert result.steps == {
        "ticket": "completed",
        "route": "held",
        "send": "skipped",
        "remember": "skipped",
    }
    assert "send" not in calls


def test_a_batch_keeps_order_isolates_failures_and_bounds_concurrency(sqlite_url: str) -> None:
    agent = Agent("rt-batch")
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    @agent.perception(cache=False)
    async def seen(raw: dict[str, Any]) -> int:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        await asyncio.sleep(0.02)
        with lock:
            in_flight -= 1
        if raw["n"] == 3:
            raise ValueError("bad ticket 3")
        return int(raw["n"])

    @agent.reasoning(cache=False)
    def decide(seen: int, context: RunContext) -> Routing:
        return Routing(queue=f"{context.subject}:{seen}", confidence=1, rationale="r")

    items: list[dict[str, Any]] = [{"raw": {"n": n}, "subject": f"s{n}"} for n in range(40)]
    items[7] = {"wrong": 1}
    results = agent.batch(items, tenant="acme", concurrency=5)
    assert len(results) == 40
    assert results[3].status == "failed" and "bad ticket 3" in (results[3].error or "")
    assert results[7].status == "failed" and "run input 'raw' is missing" in (
        results[7].error or ""
    )
    ok = [r for i, r in enumerate(results) if i not in (3, 7)]
    assert all(r.status == "completed" for r in ok)
    assert [r.outputs["decide"].queue for r in ok] == [
        f"s{n}:{n}" for n in range(40) if n not in (3, 7)
    ]
    assert 1 < peak <= 5
    assert len(queries.runs(tenant="acme", agent="rt-batch", limit=100)) == 40


def test_tenants_never_see_each_others_runs_or_memory(sqlite_url: str) -> None:
    agent = make_agent("rt-tenants", {})
    agent.run(tenant="acme", subject="shared-id", raw={"text": "refund"})
    agent.run(tenant="globex", subject="shared-id", raw={"text": "other"})
    acme_runs = queries.runs(tenant="acme", agent="rt-tenants")
    assert {r.tenant for r in acme_runs} == {"acme"} and len(acme_runs) == 1
    assert all(m.tenant == "globex" for m in queries.memory(tenant="globex"))
    Memory(tenant="acme", agent="rt-tenants", subject="shared-id").set("secret", "acme-only")
    assert Memory(tenant="globex", agent="rt-tenants", subject="shared-id").get("secret") is None
    with pytest.raises((TypeError, ValueError)):
        queries.runs(tenant="")


def test_a_step_over_its_timeout_fails_the_run_without_hanging(sqlite_url: str) -> None:
    agent = Agent("rt-timeout")

    @agent.perception(timeout=0.5, cache=False)
    async def slow(raw: str) -> str:
        await asyncio.sleep(5)
        return raw

    @agent.reasoning(cache=False)
    def decide(slow: str) -> Routing:
        return Routing(queue=slow, confidence=1, rationale="r")

    started = time.monotonic()
    result = agent.run(tenant="acme", raw="x")
    assert time.monotonic() - started < 4.5
    assert result.status == "failed"
    assert result.steps == {"slow": "failed", "decide": "skipped"}
    assert "Timeout" in (result.error or "")
