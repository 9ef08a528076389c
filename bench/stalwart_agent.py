"""The benchmark workload as a Stalwart agent (imported only by the Stalwart modes).

Four steps, one per layer, doing what the other modes do by hand: parse the ticket, one
`llm.adecide` call (timed into `workload.MODEL_CLOCK`), an action step (its row is the ledger's),
and a learning step that bumps the customer's memory with `Memory.update`.

`build(sync=False)` gives async steps (like the other modes, which use `AsyncOpenAI`);
`build(sync=True)` gives plain functions, as `flows/ticket_triage.py` writes them (Stalwart runs
them in its thread pool, and `llm.decide` uses the sync client).
"""

from __future__ import annotations

import time
from typing import Any

from workload import (
    AGENT_NAME,
    MODEL_CLOCK,
    SYSTEM_PROMPT,
    Category,
    Dispatch,
    Ticket,
    parse_ticket,
    user_prompt,
)

from agents import LLM, Agent, Decision, Memory


class TicketDecision(Decision):
    """Which team owns the ticket (plus Decision's confidence and rationale)."""

    category: Category


def _bump(history: dict[str, Any] | None, category: str) -> dict[str, Any]:
    history = dict(history or {})
    history["tickets"] = int(history.get("tickets", 0)) + 1
    history["last_category"] = category
    return history


def build(*, sync: bool = False) -> Agent:
    """The 4-step agent: async steps by default, sync ones with `sync=True`."""
    return _build_sync() if sync else _build_async()


def _build_async() -> Agent:
    agent = Agent(AGENT_NAME, description="Benchmark: parse, decide, act, learn.")

    @agent.perception
    async def ticket(raw: dict[str, Any]) -> Ticket:
        return parse_ticket(raw)

    @agent.reasoning
    async def decision(ticket: Ticket, llm: LLM) -> TicketDecision:
        started = time.perf_counter()
        answer = await llm.adecide(TicketDecision, user_prompt(ticket), system=SYSTEM_PROMPT)
        MODEL_CLOCK.add(started)
        return answer

    @agent.action
    async def dispatch(decision: TicketDecision, ticket: Ticket, idempotency_key: str) -> Dispatch:
        return Dispatch(
            ticket_id=ticket.id, queue=decision.category, idempotency_key=idempotency_key
        )

    @agent.learning
    async def remember(dispatch: Dispatch, memory: Memory) -> None:
        await memory.aupdate("history", lambda h: _bump(h, dispatch.queue))

    return agent


def _build_sync() -> Agent:
    agent = Agent(AGENT_NAME, description="Benchmark: parse, decide, act, learn (sync steps).")

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        return parse_ticket(raw)

    @agent.reasoning
    def decision(ticket: Ticket, llm: LLM) -> TicketDecision:
        started = time.perf_counter()
        answer = llm.decide(TicketDecision, user_prompt(ticket), system=SYSTEM_PROMPT)
        MODEL_CLOCK.add(started)
        return answer

    @agent.action
    def dispatch(decision: TicketDecision, ticket: Ticket, idempotency_key: str) -> Dispatch:
        return Dispatch(
            ticket_id=ticket.id, queue=decision.category, idempotency_key=idempotency_key
        )

    @agent.learning
    def remember(dispatch: Dispatch, memory: Memory) -> None:
        memory.update("history", lambda h: _bump(h, dispatch.queue))

    return agent
