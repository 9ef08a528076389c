"""The tool loop without a model: scripted turns drive `run_loop`, tools run directly."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from agents import Agent, Decision
from agents.declare.tool import Tool
from agents.errors import DeclarationError, ToolLoopExhausted
from agents.resources.llm import LLM, LLMCall
from agents.resources.toolloop import DirectToolRunner, Turn, run_loop


class Routing(Decision):
    category: str


def lookup_order(order_id: str) -> dict[str, Any]:
    """The order's status."""
    time.sleep(0.2)
    return {"order": order_id, "status": "refund requested"}


async def customer_history(customer: str) -> list[str]:
    """The customer's last tickets."""
    await asyncio.sleep(0.2)
    return [f"{customer}: charged twice"]


def broken(order_id: str) -> str:
    """Always fails."""
    raise RuntimeError("database is down; token sk-live-0123456789abcdef0123")


def turn(*calls: tuple[str, dict[str, Any] | str]) -> Turn:
    return Turn.model_validate(
        {
            "calls": [
                {
                    "id": f"call_{i}",
                    "name": name,
                    "arguments": args if isinstance(args, str) else json.dumps(args),
                }
                for i, (name, args) in enumerate(calls)
            ]
        }
    )


ANSWER = {"category": "billing", "confidence": 0.9, "rationale": "the order says refund"}


def drive(
    script: list[Turn], tools: list[Callable[..., Any]], max_turns: int = 6, budget: int = 3
) -> tuple[Routing, LLM, list[list[dict[str, Any]]]]:
    llm = LLM(tenant="acme")
    seen: list[list[dict[str, Any]]] = []

    async def ask(messages: list[dict[str, Any]]) -> Turn:
        seen.append([dict(m) for m in messages])
        llm.calls.append(
            LLMCall(
                endpoint="e",
                model="m",
                output_type="Routing",
                tokens_in=3,
                tokens_out=2,
                latency_ms=1.0,
            )
        )
        return script[len(seen) - 1]

    messages = [{"role": "user", "content": "where is order 12?"}]
    answer = asyncio.run(
        run_loop(
            llm,
            messages,
            Routing,
            [Tool.of(t) for t in tools],
            max_turns=max_turns,
            budget=budget,
            runner=DirectToolRunner(),
            ask=ask,
        )
    )
    return answer, llm, seen


def test_two_tools_in_one_turn_run_concurrently_and_the_answer_follows() -> None:
    script = [
        turn(("lookup_order", {"order_id": "12"}), ("customer_history", {"customer": "c-1"})),
        turn(("final_result", ANSWER)),
    ]
    started = time.perf_counter()
    answer, llm, seen = drive(script, [lookup_order, customer_history])
    assert time.perf_counter() - started < 0.38  # 0.2 s each, side by side
    assert answer == Routing(**ANSWER)
    tool_messages = [m for m in seen[1] if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ["call_0", "call_1"]
    assert "refund requested" in tool_messages[0]["content"]
    calls = llm.calls[-1].tool_calls
    assert [(c["turn"], c["tool"], c["status"]) for c in calls] == [
        (1, "lookup_order", "ok"),
        (1, "customer_history", "ok"),
    ]
    assert calls[0]["arguments"] == {"order_id": "12"}


def test_a_failing_tool_and_a_bad_call_go_back_to_the_model_which_recovers() -> None:
    script = [
        turn(("broken", {"order_id": "12"})),
        turn(("lookup_order", {"order_id": 12, "extra": True})),
        turn(("refund", {"amount": 10_000})),
        turn(("final_result", ANSWER)),
    ]
    answer, llm, seen = drive(script, [broken, lookup_order], budget=3)
    assert answer.category == "billing"
    replies = [m["content"] for m in seen[3] if m["role"] == "tool"]
    assert replies[0].startswith("error: the tool failed: RuntimeError")
    assert "sk-live" not in replies[0]  # scrubbed before the model (and the log) see it
    assert replies[1].startswith("error: invalid arguments")
    assert replies[2].startswith("error: no tool 'refund'")  # an injected "call refund"
    statuses = [c["status"] for c in llm.calls[-1].tool_calls]
    assert statuses == ["error", "invalid", "unknown"]


def test_max_turns_without_an_answer_ends_the_loop_with_a_clear_error() -> None:
    script = [turn(("lookup_order", {"order_id": str(i)})) for i in range(3)]
    with pytest.raises(ToolLoopExhausted, match="max_turns=3"):
        drive(script, [lookup_order], max_turns=3)


def test_an_answer_that_does_not_validate_is_fed_back_within_the_budget() -> None:
    bad = {"category": "billing", "confidence": "very", "rationale": "?"}
    answer, _, seen = drive([turn(("final_result", bad)), turn(("final_result", ANSWER))], [])
    assert answer.category == "billing"
    assert seen[1][-1]["content"].startswith("error: the answer is invalid: confidence")
    with pytest.raises(ToolLoopExhausted, match="never validated"):
        drive([turn(("final_result", bad))] * 3, [], budget=2)


def test_tools_are_declared_per_reasoning_step_and_checked_before_anything_runs() -> None:
    agent = Agent("tool-declare")

    @agent.perception
    def ticket(raw: str) -> str:
        return raw

    @agent.action
    def refund(route: Routing, idempotency_key: str) -> None:
        return None

    def writes(order_id: str, idempotency_key: str) -> None:
        """Has a side effect."""

    def vague(order_id) -> str:  # type: ignore[no-untyped-def]
        return ""

    @agent.reasoning(tools=[lookup_order, refund, writes, vague, ticket, lookup_order])
    def route(ticket: str) -> Routing:
        raise AssertionError

    with pytest.raises(DeclarationError) as caught:
        agent.compile()
    text = str(caught.value)
    assert "tool 'refund' is the agent's action step" in text
    assert "tool 'ticket' is the agent's perception step" in text
    assert "tool 'writes' asks for 'idempotency_key'" in text
    assert "tool 'vague' parameter 'order_id' has no type hint" in text
    assert "tool name 'lookup_order' is declared 2 times" in text

    other = Agent("tool-declare-ok")

    @other.perception
    def text_of(raw: str) -> str:
        return raw

    @other.reasoning(tools=[lookup_order, customer_history], max_turns=4)
    def decide(text_of: str) -> Routing:
        raise AssertionError

    node = other.compile().node("decide")
    assert [t.name for t in node.tools] == ["lookup_order", "customer_history"]
    assert node.tools[1].is_async and node.step.options.max_turns == 4
