"""Observability: how Stalwart reports what went wrong.

This package owns failure reporting (`agents.observe.sentry`: Sentry initialisation, capture-once
semantics and Prefect failure hooks), run tracing (`agents.observe.tracing`, sent to Sentry and,
through `agents.observe.otel`, to OTLP), log scrubbing (`agents.observe.logs`) and drift
monitoring (`agents.observe.drift`). Import the reporting API from here. `scrub_text` is
re-exported from its home, `agents.redact`, which owns secret scrubbing.

Example:
    >>> from agents.observe import scrub_text
    >>> scrub_text("token=abc123")
    'token=***'
"""

from __future__ import annotations

from agents.observe.sentry import (
    capture_failure,
    exception_from_state,
    flow_failure_hook,
    flush,
    init_sentry,
    scrub_event,
    shutdown_sentry,
    task_failure_hook,
)
from agents.redact import scrub_text

__all__ = [
    "capture_failure",
    "exception_from_state",
    "flow_failure_hook",
    "flush",
    "init_sentry",
    "scrub_event",
    "scrub_text",
    "shutdown_sentry",
    "task_failure_hook",
]
