"""`SimulatedHelpdesk`: a real loopback HTTP helpdesk that records every delivery it gets.

This module owns the simulated outside system of ticket-triage: it honours `Idempotency-Key`
(a second delivery under a key returns the first receipt and is counted as a re-delivery, not
an effect), counts per key how often it was delivered and per ticket how many distinct effects
it had, and can lose answers on purpose. It also answers the adapter's reads, never changing
anything: orders, and each customer's recent tickets (those it handled, then the bundled ones).
It is served by a `LoopbackServer` (`agents.testing.loopback`): uvicorn in a daemon thread on
127.0.0.1, port 0 by default. Flow runs reach it through `HttpHelpdesk`
(`STALWART_HELPDESK_URL`), exactly as a real API.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agents.testing.loopback import LoopbackServer
from flows.helpdesk.adapter import (
    RECENT_TICKETS,
    HttpHelpdesk,
    bundled_order,
    bundled_tickets,
    handled_ticket,
)


@dataclass
class HelpdeskSummary:
    """What the helpdesk saw, in the reliability suite's terms.

    Example:
        >>> found = HelpdeskSummary(deliveries=3, keys=2, effects=2, tickets=2,
        ...                         duplicate_tickets=0)
        >>> found.redeliveries
        1
    """

    deliveries: int
    """Every POST received with a key (repeats included)."""
    keys: int
    """Distinct idempotency keys received."""
    effects: int
    """Deliveries that took effect (one per key at most)."""
    tickets: int
    """Distinct tickets with at least one effect."""
    duplicate_tickets: int
    """Tickets acted on more than once (more than one distinct effect): the failure mode."""

    @property
    def redeliveries(self) -> int:
        """Deliveries absorbed by the key (a retry or rerun that did not act again)."""
        return self.deliveries - self.effects


@dataclass
class HelpdeskState:
    """Everything the simulated helpdesk knows; shared by the server thread and the caller."""

    deliveries: Counter[str] = field(default_factory=Counter)
    receipts: dict[str, dict[str, Any]] = field(default_factory=dict)
    effects: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    handled: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: defaultdict(list))
    """Per customer, the tickets acted on (actions naming a `customer`), oldest first."""
    lose_next: int = 0
    """Apply the next N new actions, then answer 503 as if the answer were lost on the way."""
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def deliver(self, ticket: str, key: str, action: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Apply one delivery; return (HTTP status, body)."""
        with self.lock:
            self.deliveries[key] += 1
            if key in self.receipts:
                return 200, {**self.receipts[key], "effect": False}
            receipt = {
                "receipt_id": f"h-{next(self._ids):06d}",
                "ticket_id": ticket,
                "idempotency_key": key,
                "action": action.get("action"),
                "queue": action.get("queue"),
                "at": time.time(),
            }
            self.receipts[key] = receipt
            self.effects[ticket].append(key)
            if action.get("customer"):
                self.handled[str(action["customer"])].append(
                    handled_ticket({**action, "ticket_id": ticket})
                )
            if self.lose_next > 0:
                self.lose_next -= 1
                return 503, {"error": "upstream timeout"}
            return 201, {**receipt, "effect": True}

    def summary(self) -> HelpdeskSummary:
        """The counts the reliability table reports."""
        with self.lock:
            return HelpdeskSummary(
                deliveries=sum(self.deliveries.values()),
                keys=len(self.deliveries),
                effects=len(self.receipts),
                tickets=len(self.effects),
                duplicate_tickets=sum(1 for keys in self.effects.values() if len(keys) > 1),
            )

    def recent_tickets(self, customer: str, limit: int = RECENT_TICKETS) -> list[dict[str, Any]]:
        """The customer's tickets, newest first: those handled here, then the bundled ones."""
        with self.lock:
            handled = [dict(t) for t in reversed(self.handled.get(customer, []))]
        return [*handled, *bundled_tickets(customer)][: max(0, limit)]

    def effects_by_ticket(self) -> dict[str, int]:
        """Per ticket, how many distinct effects it had."""
        with self.lock:
            return {ticket: len(keys) for ticket, keys in self.effects.items()}


def build_app(state: HelpdeskState) -> Starlette:
    """The helpdesk's HTTP API over `state`."""

    async def act(request: Request) -> JSONResponse:
        key = request.headers.get("idempotency-key", "")
        if not key:
            return JSONResponse({"error": "an Idempotency-Key header is required"}, 400)
        try:
            action = await request.json()
        except ValueError:
            return JSONResponse({"error": "the body is not JSON"}, 422)
        if not isinstance(action, dict):
            return JSONResponse({"error": "the body must be a JSON object"}, 422)
        status, body = state.deliver(str(request.path_params["ticket"]), key, action)
        return JSONResponse(body, status)

    async def order(request: Request) -> JSONResponse:
        found = bundled_order(str(request.path_params["order_id"]))
        if found is None:
            return JSONResponse({"error": "no such order"}, 404)
        return JSONResponse(found)

    async def tickets(request: Request) -> JSONResponse:
        try:
            limit = int(request.query_params.get("limit", RECENT_TICKETS))
        except ValueError:
            return JSONResponse({"error": "limit must be an integer"}, 422)
        return JSONResponse(state.recent_tickets(str(request.path_params["customer"]), limit))

    async def summary(_: Request) -> JSONResponse:
        found = state.summary()
        return JSONResponse({**found.__dict__, "redeliveries": found.redeliveries})

    return Starlette(
        routes=[
            Route("/tickets/{ticket}/actions", act, methods=["POST"]),
            Route("/orders/{order_id}", order, methods=["GET"]),
            Route("/customers/{customer}/tickets", tickets, methods=["GET"]),
            Route("/summary", summary, methods=["GET"]),
        ]
    )


class SimulatedHelpdesk(LoopbackServer):
    """The simulated helpdesk, served on loopback from a background thread.

    Its life cycle (`start`, `stop`, `url`, `port`, use as `with`) is `LoopbackServer`'s.

    Attributes:
        state: The live record: `state.summary()`, `state.effects_by_ticket()`, and
            `state.lose_next` to lose answers on purpose.

    Example:
        >>> with SimulatedHelpdesk() as desk:
        ...     receipt = desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k")
        ...     again = desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k")
        ...     (receipt["effect"], again["effect"], desk.state.summary().redeliveries)
        (True, False, 1)
    """

    def __init__(self, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = HelpdeskState()
        super().__init__(
            lambda: build_app(self.state),
            host=host,
            port=port,
            label="The simulated helpdesk",
            thread_name="simulated-helpdesk",
        )

    def __repr__(self) -> str:
        return f"SimulatedHelpdesk({self.host}:{self.port})"

    def adapter(self) -> HttpHelpdesk:
        """An `HttpHelpdesk` talking to this server."""
        return HttpHelpdesk(self.url)
