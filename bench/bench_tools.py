"""Tool-loop overhead: what one more model turn with a tool call costs besides the model.

Usage:
    python bench/bench_tools.py [--runs 60] [--latency-ms 0]

One process, the ephemeral Prefect API, SQLite state, the bundled model server on loopback
with `--latency-ms` per request; every run at concurrency 1 so the clocks measure overhead, not
overlap. Side by side, the same ticket (it names an order, so the server's rules call
`lookup_order` once, then answer):

    bare      AsyncOpenAI by hand: request, call the function, request again (2 requests;
              median of per-run times)
    stalwart  a reasoning step with `tools=[lookup_order]` (2 turns, 1 durable tool task run),
              one batch of `--runs` inputs at concurrency 1 (wall / runs)
    one-shot  the same agent without tools (1 request): the baseline a loop adds to

Printed: ms per run of each, and the loop's cost per extra turn = (stalwart - one-shot)
minus the extra model time, next to bare's cost for the same extra turn.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from typing import Any, Literal

from agents import Decision

RULES = [
    {
        "when": {"contains": ["order"]},
        "call": [{"tool": "lookup_order", "arguments": {"order_id": {"regex": r"order (\d+)"}}}],
    },
    {"when": {"contains": ["refund"]}, "set": {"category": "billing", "confidence": 0.93}},
    {"set": {"category": "technical", "confidence": 0.9}},
]


class Routing(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's status and what the customer asked for."""
    return {"order": order_id, "status": "delivered", "request": "refund"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    args = parser.parse_args()

    from agents.modelserver import ModelServer
    from agents.modelserver.faults import Faults

    work = tempfile.mkdtemp(prefix="bench-tools-")
    with ModelServer(port=0, rules=RULES, faults=Faults(latency_ms=args.latency_ms)) as server:
        os.environ.update(
            STALWART_DATABASE_URL=f"sqlite:///{work}/state.db",
            STALWART_MODEL_URL=server.url,
            STALWART_API_KEY="sk-bench-not-a-real-key-000000000000000000",
            STALWART_DATA_DIR=f"{work}/data",
            STALWART_LLM_CACHE_ENABLED="false",
        )
        from agents.settings import reload_settings

        reload_settings()
        rows = {
            "bare": asyncio.run(bare(server.url, args.runs)),
            "stalwart": stalwart(args.runs, tools=True),
            "one-shot": stalwart(args.runs, tools=False),
        }
    model_ms = args.latency_ms
    print(f"\n{args.runs} runs each, C=1, model latency {model_ms:g} ms per request")
    for name, per_run in rows.items():
        print(f"{name:>9}: {per_run:8.1f} ms per run")
    loop_turn = rows["stalwart"] - rows["one-shot"] - model_ms
    bare_turn = rows["bare"] / 2  # its two requests are its whole run: one per turn
    print(f"\nStalwart: one more turn with a tool call costs {loop_turn:.1f} ms besides the model")
    print(f"bare loop: {bare_turn:.1f} ms per turn (request + parse + function call)")
    print(json.dumps({"per_run_ms": rows, "extra_turn_ms": loop_turn, "bare_turn_ms": bare_turn}))


async def bare(model_url: str, runs: int) -> float:
    """Two requests and a function call by hand, the floor of any tool loop."""
    import openai

    from agents.declare.tool import Tool
    from agents.resources.toolloop import tool_specs

    client = openai.AsyncOpenAI(base_url=model_url, api_key="sk-bench", max_retries=0)
    specs = tool_specs([Tool.of(lookup_order)], Routing)
    times: list[float] = []
    for i in range(runs + 2):
        started = time.perf_counter()
        messages: list[dict[str, Any]] = [
            {"role": "user", "content": f"Ticket {i}: where is order {4000 + i}?"}
        ]
        first = await client.chat.completions.create(
            model="m", messages=messages, tools=specs, tool_choice="required"
        )
        calls = first.choices[0].message.tool_calls or []
        messages.append(first.choices[0].message.model_dump(exclude_none=True))
        for c in calls:
            result = lookup_order(**json.loads(c.function.arguments))
            messages.append({"role": "tool", "tool_call_id": c.id, "content": json.dumps(result)})
        second = await client.chat.completions.create(
            model="m", messages=messages, tools=specs, tool_choice="required"
        )
        answer = second.choices[0].message.tool_calls[0].function.arguments  # type: ignore[index]
        Routing.model_validate_json(answer)
        if i >= 2:  # warm-up
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def stalwart(runs: int, *, tools: bool) -> float:
    """Per-run wall time of a 3-step agent whose reasoning step has (or has not) the tool."""
    from pydantic import BaseModel

    from agents import LLM, Agent

    class Ticket(BaseModel):
        id: int
        text: str

    agent = Agent(f"bench-tools-{'loop' if tools else 'one'}")

    @agent.perception
    async def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(id=int(raw["id"]), text=str(raw["text"]))

    @agent.reasoning(tools=[lookup_order] if tools else [], max_turns=4)
    async def route(ticket: Ticket, llm: LLM) -> Routing:
        return await llm.adecide(Routing, f"Ticket {ticket.id}: {ticket.text}")

    @agent.action
    async def send(route: Routing, idempotency_key: str) -> str:
        return route.category

    base = 10_000 if tools else 20_000
    agent.batch([{"raw": {"id": base, "text": "where is order 1?"}}], tenant="warm")
    items = [
        {"raw": {"id": base + i + 1, "text": f"where is order {base + i}?"}} for i in range(runs)
    ]
    started = time.perf_counter()
    results = agent.batch(items, tenant="bench", concurrency=1)
    wall = (time.perf_counter() - started) * 1000
    assert {r.status for r in results} == {"completed"}, [r.error for r in results][:3]
    return wall / runs


if __name__ == "__main__":
    main()
