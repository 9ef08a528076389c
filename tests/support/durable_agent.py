"""An agent run in subprocesses by test_durability: it logs every step execution to files in
$STALWART_TEST_OUT so the parent can count executions across processes and kills."""

from __future__ import annotations

import json
import os
import sqlite3
import sys
import time
from collections import Counter
from typing import Any

from pydantic import BaseModel

from agents import Agent, Decision, Memory, RunContext

OUT = os.environ.get("STALWART_TEST_OUT", ".")
agent = Agent("durable")


def log(name: str, line: str) -> None:
    with open(os.path.join(OUT, f"{name}.log"), "a") as f:
        f.write(line + "\n")


class Ticket(BaseModel):
    id: int


class Routing(Decision):
    queue: str


class Sent(BaseModel):
    id: int
    key: str


def outside_post(key: str) -> None:
    """The simulated outside system: records every call, applies each key's effect once."""
    log("calls", key)
    db = sqlite3.connect(os.path.join(OUT, "outside.db"), timeout=30)
    with db:
        db.execute("CREATE TABLE IF NOT EXISTS effects (key TEXT PRIMARY KEY)")
        db.execute("INSERT OR IGNORE INTO effects VALUES (?)", (key,))
    db.close()


@agent.perception
def ticket(raw: dict[str, Any]) -> Ticket:
    log("ticket", str(raw["id"]))
    return Ticket(id=int(raw["id"]))


@agent.reasoning
def route(ticket: Ticket) -> Routing:
    log("route", str(ticket.id))
    time.sleep(float(os.environ.get("STALWART_TEST_SLEEP", "0")))
    return Routing(queue=f"q{ticket.id % 3}", confidence=0.9, rationale="modulo rule")


@agent.action
def send(route: Routing, ticket: Ticket, idempotency_key: str) -> Sent:
    outside_post(idempotency_key)
    return Sent(id=ticket.id, key=idempotency_key)


@agent.learning
def remember(send: Sent, memory: Memory, context: RunContext) -> None:
    log("remember", str(send.id))
    memory.update("sent", lambda n: (n or 0) + 1)
    # A rerun that takes `route` from the cache must still find its decision.
    context.set_outcome({"sent": send.key}, step="route")


if __name__ == "__main__":
    count, concurrency = int(sys.argv[1]), int(sys.argv[2])
    items = [{"raw": {"id": i}, "subject": f"s{i % 10}"} for i in range(count)]
    tenant = os.environ.get("STALWART_TEST_TENANT", "durable-tenant")
    results = agent.batch(items, tenant=tenant, concurrency=concurrency)
    print(json.dumps(Counter(r.status for r in results)), flush=True)
