"""An agent whose reasoning step consults two tools, for tests/integration/test_tools.py: every
tool execution is logged to files in $STALWART_TEST_OUT so the test can count them across
processes and kills. Run as a script it runs a batch (`python -m tests.support.tool_agent N`);
with STALWART_TEST_SLOW_TOOL set, `customer_history` sleeps that long (so a kill lands mid-loop).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from agents import LLM, Agent, Memory
from tests.support.models import Routing
from tests.support.steplog import log

#: Steering rules: an order number calls lookup_order, a customer id calls customer_history;
#: a refund in either result makes the ticket billing.
RULES: list[dict[str, Any]] = [
    {
        "when": {"contains": ["order"]},
        "call": [{"tool": "lookup_order", "arguments": {"order_id": {"regex": r"order (\d+)"}}}],
    },
    {
        "when": {"contains": ["cust-"]},
        "call": [{"tool": "customer_history", "arguments": {"customer": {"regex": r"cust-\d+"}}}],
    },
    {"when": {"contains": ["refund"]}, "set": {"category": "billing", "confidence": 0.93}},
    {"set": {"category": "technical", "confidence": 0.9}},
]


class Ticket(BaseModel):
    id: int
    text: str


def lookup_order(order_id: str, memory: Memory) -> dict[str, Any]:
    """The order's status and what the customer asked for."""
    log("lookup_order", order_id)
    seen = memory.get("orders_seen", 0)
    customer = f"cust-{int(order_id) - 1000}"
    return {"order": order_id, "customer": customer, "request": "refund", "seen": seen}


def customer_history(customer: str) -> list[str]:
    """The customer's last tickets, newest first."""
    log("customer_history", customer)
    time.sleep(float(os.environ.get("STALWART_TEST_SLOW_TOOL", "0")))
    return [f"{customer}: asked about a late parcel"]


def build(name: str, max_turns: int = 6, **reasoning: Any) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(id=int(raw["id"]), text=str(raw["text"]))

    @agent.reasoning(tools=[lookup_order, customer_history], max_turns=max_turns, **reasoning)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        log("route", str(ticket.id))
        return llm.decide(Routing, f"Ticket {ticket.id}: {ticket.text}")

    @agent.action
    def send(route: Routing, ticket: Ticket, idempotency_key: str) -> str:
        log("sent", f"{ticket.id}:{route.category}")
        return route.category

    return agent


def tickets(count: int, *, with_customer: bool = True) -> list[dict[str, Any]]:
    """Tickets naming an order (and the customer: then both tools are called in turn 1; else
    the order's lookup names the customer and `customer_history` comes in turn 2)."""
    return [
        {
            "raw": {
                "id": i,
                "text": f"where is order {1000 + i}?"
                + (f" I am cust-{i}" if with_customer else ""),
            },
            "subject": f"cust-{i}",
        }
        for i in range(count)
    ]


if __name__ == "__main__":
    agent = build(os.environ["STALWART_TEST_AGENT"])
    items = tickets(int(sys.argv[1]), with_customer=False)
    results = agent.batch(items, tenant=os.environ["STALWART_TEST_TENANT"])
    print(json.dumps(Counter(r.status for r in results)), flush=True)
