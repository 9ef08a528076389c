"""A small agent with a review rung, deployed by tests/e2e/test_review_deployment.py and run by
a real worker. Its reasoning needs no model: "unsure" tickets get a confidence of 0.3. Its
action appends to $STALWART_TEST_OUT/calls.log, the outside system the test counts."""

from __future__ import annotations

import os
from typing import Any

from pydantic import BaseModel

from agents import Agent, Decision, Review

agent = Agent("review-e2e-agent")


class Ticket(BaseModel):
    id: int
    text: str


class Routing(Decision):
    queue: str


@agent.perception
def ticket(raw: dict[str, Any]) -> Ticket:
    return Ticket(id=int(raw["id"]), text=str(raw["text"]))


@agent.reasoning(threshold=0.8, review=Review(timeout="3d"))
def route(ticket: Ticket) -> Routing:
    unsure = "unsure" in ticket.text
    return Routing(queue="q-model", confidence=0.3 if unsure else 0.95, rationale="keyword rule")


@agent.action
def send(route: Routing, ticket: Ticket, idempotency_key: str) -> str:
    with open(os.path.join(os.environ["STALWART_TEST_OUT"], "calls.log"), "a") as f:
        f.write(f"{ticket.id} {route.queue} {idempotency_key}\n")
    return route.queue


review_flow = agent.flow
