"""What governance costs per decision: the policy checks and the decision log, in ms and as a
share of a 50 ms model call.

Measured directly on the runtime's own functions (no Prefect, no model), N decisions each:
  - policy: allowed-action check + the fallback ladder's direct path (`_refusal`, `_ladder`);
  - record: building the decision-log row (redacted snapshot, digests, cost);
  - write: flushing those rows to the state database in batches (`RecordWriter`);
  - llm cache: one lookup and one store in `llm_cache` (what a model call adds).

Usage: python bench/bench_policy.py [--decisions 2000] [--database-url URL]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from typing import Any, Literal

from pydantic import BaseModel


class RouteArgs(BaseModel):
    queue: Literal["billing", "technical", "other"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=2000)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    url = args.database_url or f"sqlite:///{tempfile.mkdtemp()}/policy.db"
    os.environ["STALWART_DATABASE_URL"] = url

    from agents import Agent, Decision
    from agents.declare.decision import LadderPath
    from agents.execution import ladder
    from agents.execution.ladder import LadderOutcome
    from agents.execution.rows import decision_row
    from agents.policy import llm_cache
    from agents.result import RunResult
    from agents.store.records import RecordWriter
    from agents.store.tables import AgentRun

    class Plan(Decision):
        action: str
        arguments: dict[str, Any] = {}

    agent = Agent("policy-bench", allowed_actions={"route": RouteArgs, "escalate": None})

    @agent.perception
    def ticket(raw: dict[str, Any]) -> str:
        return str(raw["body"])

    @agent.reasoning(threshold=0.7)
    def plan(ticket: str) -> Plan:
        return Plan(action="route", arguments={"queue": "billing"}, confidence=0.9, rationale="r")

    graph = agent.compile()
    step = graph.steps["plan"]

    async def no_fallback() -> tuple[Decision | None, list[Any]]:
        return None, []

    async def nobody(proposed: Decision) -> None:
        return None

    n = args.decisions
    decision = Plan(
        action="route", arguments={"queue": "billing"}, confidence=0.9, rationale="refund asked"
    )
    inputs = {"ticket": "I was charged twice for order 1234, please refund. " * 4}

    async def policy() -> float:
        started = time.perf_counter()
        for _ in range(n):
            assert ladder.refusal(graph.allowed_actions, decision) is None
            await ladder.climb(
                step.options,
                decision,
                step.options.threshold,
                ask_fallback=no_fallback,
                ask_review=nobody,
            )
        return (time.perf_counter() - started) * 1000 / n

    policy_ms = asyncio.run(policy())

    result = RunResult(status="completed", run_id="r" * 32, run_key="k", tenant="bench")
    outcome = LadderOutcome(decision=decision, path=LadderPath.DIRECT)
    started = time.perf_counter()
    rows = [decision_row(graph.name, step, result, inputs, outcome, [], 1) for _ in range(n)]
    record_ms = (time.perf_counter() - started) * 1000 / n

    writer = RecordWriter()
    writer.start_run(
        AgentRun(
            tenant="bench",
            agent="policy-bench",
            run_key="k",
            status="running",
            inputs_digest="0" * 64,
        )
    )
    writer.flush()
    started = time.perf_counter()
    for i in range(0, n, 32):  # the runner flushes every 100 ms: ~32 decisions at 300 runs/s
        writer.end_run("x", status="completed", decisions=rows[i : i + 32])
        writer.flush()
    write_ms = (time.perf_counter() - started) * 1000 / n

    answer = llm_cache.CachedAnswer(output=decision.model_dump(mode="json"), usage={})
    started = time.perf_counter()
    for i in range(n // 4):
        key = llm_cache.cache_key(
            tenant="bench",
            base_url="http://127.0.0.1:1/v1",
            model="m",
            messages=[{"role": "user", "content": f"ticket {i}"}],
            schema={},
            params={},
        )
        llm_cache.lookup(key)
        llm_cache.store(key, answer, tenant="bench", endpoint="bench", model="m")
    cache_ms = (time.perf_counter() - started) * 1000 / (n // 4)

    total = policy_ms + record_ms + write_ms + cache_ms
    print(f"# Cost of governance per decision ({n} decisions, {url.split(':')[0]})\n")
    print("| part | ms per decision | % of a 50 ms model call |")
    print("|---|---|---|")
    for name, value in [
        ("policy (allowed actions + ladder, direct path)", policy_ms),
        ("decision-log row (redacted snapshot, digests, cost)", record_ms),
        ("decision-log write (batched)", write_ms),
        ("LLM cache lookup + store", cache_ms),
        ("total", total),
    ]:
        print(f"| {name} | {value:.3f} | {value / 50 * 100:.1f}% |")


if __name__ == "__main__":
    main()
