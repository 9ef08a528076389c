"""ticket-triage: read a support ticket and the customer's history, route it, act once, learn.

Run it over the bundled sample (offline, the bundled model server answers):

    stalwart run ticket-triage --input flows/data/tickets.jsonl
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from agents import LLM, Agent, Decision, Memory

triage = Agent("ticket-triage", description="Route support tickets; act once; remember.")

Category = Literal["billing", "technical", "account", "shipping", "other"]
Urgency = Literal["low", "normal", "high"]


class Ticket(BaseModel):
    """What the agent sees: the ticket plus what it remembers about the customer."""

    id: str
    subject_line: str
    body: str
    customer: str
    previous_tickets: int = 0
    last_category: str | None = None


class Routing(Decision):
    """Where the ticket goes and how urgent it is."""

    category: Category = Field(description="The team that owns the problem.")
    urgency: Urgency = Field(description="How fast a person must look at it.")


class Dispatch(BaseModel):
    """What was done: the queue the ticket went to, under which idempotency key."""

    ticket_id: str
    queue: str
    urgency: str
    idempotency_key: str


@triage.perception
def ticket(raw: dict[str, Any], memory: Memory) -> Ticket:
    """Parse the raw ticket and add the customer's history from memory."""
    history = memory.get("history", {}) or {}
    return Ticket(
        id=str(raw["id"]),
        subject_line=str(raw.get("subject", "")),
        body=str(raw.get("body", "")),
        customer=str(raw.get("customer", "")),
        previous_tickets=int(history.get("tickets", 0)),
        last_category=history.get("last_category"),
    )


@triage.reasoning(threshold=0.7, retries=2, retry_delay=0.5)
def route(ticket: Ticket, llm: LLM) -> Routing:
    """Ask the model for category and urgency, with a confidence and a rationale."""
    history = f"The customer filed {ticket.previous_tickets} earlier tickets" + (
        f", last about {ticket.last_category}." if ticket.last_category else "."
    )
    return llm.decide(
        Routing,
        f"Subject: {ticket.subject_line}\n\n{ticket.body}\n\n{history}",
        system="You triage customer support tickets. Pick the owning team and the urgency.",
    )


@triage.action(retries=3, retry_delay=0.5)
def dispatch(route: Routing, ticket: Ticket, idempotency_key: str) -> Dispatch:
    """Send the ticket to its queue (the key makes a repeated send a no-op downstream)."""
    return Dispatch(
        ticket_id=ticket.id,
        queue=route.category,
        urgency=route.urgency,
        idempotency_key=idempotency_key,
    )


@triage.learning
def remember(dispatch: Dispatch, memory: Memory) -> None:
    """Update the customer's history: ticket count and last category."""

    def bump(history: dict[str, Any] | None) -> dict[str, Any]:
        history = dict(history or {})
        history["tickets"] = int(history.get("tickets", 0)) + 1
        history["last_category"] = dispatch.queue
        return history

    memory.update("history", bump)


#: The deployable Prefect flow (parameters: inputs, tenant, concurrency); see prefect.yaml.
ticket_triage_flow = triage.flow
