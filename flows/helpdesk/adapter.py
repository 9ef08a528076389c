"""The `Helpdesk` interface ticket-triage acts through, its HTTP adapter and an in-process default.

This module owns the adapter contract (deliver one action under an idempotency key; a repeated
key must not take effect twice) and how HTTP answers map onto it. Which helpdesk a flow run uses
comes from `STALWART_HELPDESK_URL` (see `flows.helpdesk.settings`); the loopback server the
reliability suite counts deliveries with lives in `flows.helpdesk.simulated`.
"""

from __future__ import annotations

import threading
from typing import Any, Protocol, runtime_checkable

import httpx

from flows.helpdesk.settings import helpdesk_settings


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


class InProcessHelpdesk:
    """The default when no helpdesk is configured: remembers keys in this process only.

    Example:
        >>> desk = InProcessHelpdesk()
        >>> desk.deliver({"ticket_id": "T1"}, idempotency_key="k")["effect"]
        True
        >>> desk.deliver({"ticket_id": "T1"}, idempotency_key="k")["effect"]
        False
    """

    def __init__(self) -> None:
        self._seen: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def deliver(self, action: dict[str, Any], *, idempotency_key: str) -> dict[str, Any]:
        """Record the action under its key; a repeat returns the first receipt."""
        with self._lock:
            if idempotency_key in self._seen:
                return {**self._seen[idempotency_key], "effect": False}
            receipt = {"ticket_id": action.get("ticket_id"), "idempotency_key": idempotency_key}
            self._seen[idempotency_key] = receipt
            return {**receipt, "effect": True}


class HttpHelpdesk:
    """`POST {base_url}/tickets/{ticket_id}/actions` with an `Idempotency-Key` header.

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
