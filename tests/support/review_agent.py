"""An agent with a durable review rung, run in-process by test_reviews and in a subprocess for
its kill test: every step execution and every call to the outside system is logged to files in
$STALWART_TEST_OUT, so the test can count them across processes and kills.

Run as a script it continues the tenant's answered reviews (`agent.resume`); with
STALWART_TEST_HANG=1 its learning step hangs after the action, so the test can kill it between
the action and the end of the continued run.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from agents import LLM, Agent, Review
from tests.support import steplog
from tests.support.models import Routing
from tests.support.steplog import log

#: Steering rules for the bundled model server: "unsure" tickets get a low confidence.
RULES: list[dict[str, Any]] = [
    {"when": {"contains": ["unsure"]}, "set": {"confidence": 0.3}},
    {"when": {"contains": ["refund", "invoice"]}, "set": {"category": "billing"}},
    {"when": {"contains": ["parcel"]}, "set": {"category": "shipping"}},
    {"set": {"category": "technical", "confidence": 0.95}},
]

ESCALATE = Routing(category="other", confidence=1.0, rationale="escalated: nobody answered")


class Ticket(BaseModel):
    id: int
    text: str


def outside_post(key: str, category: str) -> None:
    """The outside system: logs every call; applies each idempotency key's effect once."""
    log("calls", key)
    db = sqlite3.connect(os.path.join(steplog.OUT, "outside.db"), timeout=30)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY, category TEXT)")
        db.execute("INSERT OR IGNORE INTO effects VALUES (?, ?)", (key, category))
    db.close()


def effects() -> dict[str, str]:
    path = os.path.join(steplog.OUT, "outside.db")
    if not os.path.exists(path):
        return {}
    db = sqlite3.connect(path, timeout=30)
    try:
        return dict(db.execute("SELECT key, category FROM effects").fetchall())
    finally:
        db.close()


def build(name: str, timeout: float | str = "3d") -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(id=int(raw["id"]), text=str(raw["text"]))

    @agent.reasoning(threshold=0.8, review=Review(timeout=timeout), default=ESCALATE)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        log("route", str(ticket.id))
        return llm.decide(Routing, f"Route ticket {ticket.id}: {ticket.text}")

    @agent.action
    def send(route: Routing, ticket: Ticket, idempotency_key: str) -> str:
        outside_post(idempotency_key, route.category)
        log("sent", f"{ticket.id}:{route.category}")
        return route.category

    @agent.learning
    def remember(send: str, ticket: Ticket) -> None:
        log("remember", str(ticket.id))
        if os.environ.get("STALWART_TEST_HANG") == "1":
            time.sleep(600)  # killed here, after the action, before the run ends

    return agent


def tickets(count: int, unsure_every: int) -> list[dict[str, Any]]:
    """`count` tickets; every `unsure_every`-th one is unsure (needs a person)."""
    texts = ["please refund the invoice", "my parcel is late", "the app crashes"]
    items = []
    for i in range(count):
        text = texts[i % 3] + (" (unsure)" if i % unsure_every == unsure_every - 1 else "")
        items.append({"raw": {"id": i, "text": text}, "subject": f"cust-{i}"})
    return items


if __name__ == "__main__":
    agent = build(os.environ["STALWART_TEST_AGENT"])
    results = agent.resume(tenant=os.environ["STALWART_TEST_TENANT"], concurrency=8)
    print(json.dumps(Counter(r.status for r in results)), flush=True)
