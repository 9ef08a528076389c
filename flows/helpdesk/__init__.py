"""The helpdesk ticket-triage acts on: an adapter interface, an HTTP adapter and a simulated one.

Example:
    >>> from flows.helpdesk import SimulatedHelpdesk
    >>> with SimulatedHelpdesk() as desk:  # doctest: +SKIP
    ...     # flow runs started with STALWART_HELPDESK_URL=desk.url deliver their actions here
    ...     desk.state.summary().duplicate_tickets
    0

`Helpdesk` is the interface (implement it for a real helpdesk), `HttpHelpdesk` its HTTP adapter
(`Idempotency-Key` header), `InProcessHelpdesk` the default when `STALWART_HELPDESK_URL` is unset,
`SimulatedHelpdesk` a loopback server that counts deliveries per key and effects per ticket.
"""

from flows.helpdesk.adapter import (
    Helpdesk,
    HelpdeskError,
    HttpHelpdesk,
    InProcessHelpdesk,
    current_helpdesk,
)
from flows.helpdesk.settings import HelpdeskSettings, helpdesk_settings
from flows.helpdesk.simulated import HelpdeskState, HelpdeskSummary, SimulatedHelpdesk

__all__ = (
    "Helpdesk",
    "HelpdeskError",
    "HelpdeskSettings",
    "HelpdeskState",
    "HelpdeskSummary",
    "HttpHelpdesk",
    "InProcessHelpdesk",
    "SimulatedHelpdesk",
    "current_helpdesk",
    "helpdesk_settings",
)
