"""Observability: how Stalwart reports what went wrong.

This package owns failure reporting (`agents.observe.sentry`: Sentry initialisation, scrubbing of
secrets and PII, capture-once semantics and Prefect failure hooks). Import from here.

Example:
    >>> from agents.observe import scrub_text
    >>> scrub_text("token=abc123")
    'token=***'
"""

from __future__ import annotations

from agents.observe.sentry import (
    EMAIL_PLACEHOLDER,
    REDACTED,
    capture_failure,
    exception_from_state,
    flow_failure_hook,
    flush,
    init_sentry,
    is_sensitive_key,
    scrub_event,
    scrub_text,
    shutdown_sentry,
    task_failure_hook,
)

__all__ = [
    "EMAIL_PLACEHOLDER",
    "REDACTED",
    "capture_failure",
    "exception_from_state",
    "flow_failure_hook",
    "flush",
    "init_sentry",
    "is_sensitive_key",
    "scrub_event",
    "scrub_text",
    "shutdown_sentry",
    "task_failure_hook",
]
