"""The `Helpdesk` interface ticket-triage acts through, its HTTP adapter and an in-process default.

This module owns the adapter contract (deliver one action under an idempotency key; a repeated
key must not take effect twice; look up an order or a customer's recent tickets, reading only)
and how HTTP answers map onto it. What the helpdesk knows before any ticket is triaged (orders,
earlier tickets) is the bundled `flows/data/helpdesk.json`. Which helpdesk a flow run uses
comes from `STALWART_HELPDESK_URL` (see `flows.helpdesk.settings`); the loopback server the
reliability suite counts deliveries with lives in `flows.helpdesk.simulated`.
"""

from __future__ import annotations

import copy
import functools
import json
import threading
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

import httpx

from flows.helpdesk.settings import helpdesk_settings

#: Orders and earlier tickets the bundled helpdesks (in process, simulated) start from.
HELPDESK_DATA = Path(__file__).parent.parent / "data" / "helpdesk.json"
#: `recent_tickets` returns at most this many tickets unless asked for fewer.
RECENT_TICKETS = 5


class HelpdeskError(Exception):
    """The helpdesk refused the action or did not answer (the caller retries with the same key)."""


@runtime_checkable
class Helpdesk(Protocol):
    """The outside system ticket-triage changes. Implement it for a real helpdesk.

    Example:
        >>> def route(helpdesk: Helpdesk) -> dict[str, Any]:
        ...     action = {"ticket_id": "T1", "action": "queue", "queue": "billing"}
        ...     return helpdesk.deliver(action, idempotency_key="k-1")
        >>> route(InProcessHelpdesk())["effect"]
        True
    """

    def deliver(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Apply `action` once per key; a repeated key returns the first receipt (`effect` False).

        Raises:
            HelpdeskError: the action may or may not have landed; retry with the same key.
        """
        ...

    def order(self, order_id: str) -> dict[str, Any] | None:
        """The order with this number (status, items, a note), or None when there is none.

        Raises:
            HelpdeskError: the helpdesk did not answer.
        """
        ...

    def recent_tickets(self, customer: str, *, limit: int = RECENT_TICKETS) -> list[dict[str, Any]]:
        """The customer's most recent tickets, newest first (id, subject or queue, status).

        Raises:
            HelpdeskError: the helpdesk did not answer.
        """
        ...


@functools.cache
def _bundled(path: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def bundled_order(order_id: str, *, path: Path = HELPDESK_DATA) -> dict[str, Any] | None:
    """An order of the bundled data (a copy), or None.

    Example:
        >>> bundled_order("48213")["status"], bundled_order("0000")
        ('cancelled', None)
    """
    found = _bundled(path)["orders"].get(order_id.strip().lstrip("#"))
    return copy.deepcopy(found) if found is not None else None


def bundled_tickets(customer: str, *, path: Path = HELPDESK_DATA) -> list[dict[str, Any]]:
    """A customer's earlier tickets in the bundled data (copies), newest first.

    Example:
        >>> [t["queue"] for t in bundled_tickets("cust-061")], bundled_tickets("nobody")
        (['shipping'], [])
    """
    return copy.deepcopy(list(_bundled(path)["tickets"].get(customer, [])))


def handled_ticket(action: dict[str, Any]) -> dict[str, Any]:
    """How a delivered action shows among its customer's recent tickets.

    Example:
        >>> handled_ticket({"ticket_id": "T1", "queue": "billing", "action": "queue"})
        {'ticket_id': 'T1', 'queue': 'billing', 'action': 'queue', 'status': 'handled'}
    """
    return {
        "ticket_id": action.get("ticket_id"),
        "queue": action.get("queue"),
        "action": action.get("action"),
        "status": "handled",
    }


class InProcessHelpdesk:
    """The default when no helpdesk is configured: remembers keys in this process only.

    Its orders and earlier tickets are the bundled data's; the tickets it has handled (actions
    that name a `customer`) join that customer's recent tickets.

    Example:
        >>> desk = InProcessHelpdesk()
        >>> desk.deliver({"ticket_id": "T1", "customer": "c9", "queue": "billing"},
        ...              idempotency_key="k")["effect"]
        True
        >>> desk.deliver({"ticket_id": "T1"}, idempotency_key="k")["effect"]
        False
        >>> [t["ticket_id"] for t in desk.recent_tickets("c9")], desk.order("48213")["status"]
        (['T1'], 'cancelled')
    """

    def __init__(self, *, data: Path = HELPDESK_DATA) -> None:
        self._seen: dict[str, dict[str, Any]] = {}
        self._handled: dict[str, list[dict[str, Any]]] = {}
        self._data = data
        self._lock = threading.Lock()

    def deliver(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Record the action under its key; a repeat returns the first receipt."""
        with self._lock:
            if idempotency_key in self._seen:
                return {**self._seen[idempotency_key], "effect": False}
            receipt = {"ticket_id": action.get("ticket_id"), "idempotency_key": idempotency_key}
            self._seen[idempotency_key] = receipt
            if action.get("customer"):
                self._handled.setdefault(str(action["customer"]), []).append(handled_ticket(action))
            return {**receipt, "effect": True}

    def order(self, order_id: str) -> dict[str, Any] | None:
        """The bundled order with this number, or None."""
        return bundled_order(order_id, path=self._data)

    def recent_tickets(self, customer: str, *, limit: int = RECENT_TICKETS) -> list[dict[str, Any]]:
        """The tickets handled here for the customer (newest first), then the bundled ones."""
        with self._lock:
            handled = [dict(t) for t in reversed(self._handled.get(customer, []))]
        return [*handled, *bundled_tickets(customer, path=self._data)][: max(0, limit)]


class HttpHelpdesk:
    """`POST {base_url}/tickets/{ticket_id}/actions` with an `Idempotency-Key` header; reads
    with `GET {base_url}/orders/{order_id}` and `GET {base_url}/customers/{customer}/tickets`.

    Each call opens a short-lived client, so one adapter is safe across threads and processes.

    Example:
        >>> HttpHelpdesk("http://127.0.0.1:8710/")
        HttpHelpdesk('http://127.0.0.1:8710')
    """

    def __init__(self, base_url: str, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"HttpHelpdesk({self.base_url!r})"

    def deliver(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Send the action; return the helpdesk's receipt (`effect` False for a repeat)."""
        ticket = str(action.get("ticket_id", ""))
        try:
            response = httpx.post(
                f"{self.base_url}/tickets/{ticket}/actions",
                json=action,
                headers={"Idempotency-Key": idempotency_key},
                timeout=self.timeout,
            )
        except httpx.TransportError as exc:
            # The action may have landed before the connection broke: retry with the same key.
            raise HelpdeskError(f"no answer from {self.base_url}: {exc!r}") from exc
        if response.status_code >= 400:
            raise HelpdeskError(f"POST {ticket}: HTTP {response.status_code} {response.text}")
        receipt: dict[str, Any] = response.json()
        return receipt

    def order(self, order_id: str) -> dict[str, Any] | None:
        """`GET /orders/{order_id}`: the order, or None on 404."""
        number = quote(order_id.strip().lstrip("#"), safe="")
        found = self._get(f"/orders/{number}", missing_ok=True)
        return dict(found) if isinstance(found, dict) else None

    def recent_tickets(self, customer: str, *, limit: int = RECENT_TICKETS) -> list[dict[str, Any]]:
        """`GET /customers/{customer}/tickets?limit=N`: newest first."""
        path = f"/customers/{quote(customer, safe='')}/tickets"
        found = self._get(path, params={"limit": limit})
        return [dict(t) for t in found] if isinstance(found, list) else []

    def _get(
        self, path: str, *, params: dict[str, Any] | None = None, missing_ok: bool = False
    ) -> Any:
        try:
            response = httpx.get(f"{self.base_url}{path}", params=params, timeout=self.timeout)
        except httpx.TransportError as exc:
            raise HelpdeskError(f"no answer from {self.base_url}: {exc!r}") from exc
        if response.status_code == 404 and missing_ok:
            return None
        if response.status_code >= 400:
            raise HelpdeskError(f"GET {path}: HTTP {response.status_code} {response.text}")
        return response.json()


_default = InProcessHelpdesk()


def current_helpdesk() -> Helpdesk:
    """`HttpHelpdesk` on `STALWART_HELPDESK_URL` when set, else this process's in-process one.

    Example:
        >>> isinstance(current_helpdesk(), Helpdesk)
        True
    """
    settings = helpdesk_settings()
    if settings.url:
        return HttpHelpdesk(settings.url, timeout=settings.timeout_seconds)
    return _default
