"""Secrets never reach a log line: every log record is scrubbed as it is made.

A user's step may raise `ValueError(f"bad key {key}")`, and Prefect logs a failing task's
exception message and traceback as they are, to the console and to the Prefect API. Scrubbing
at Sentry alone would miss that path. `install_log_scrubbing()` wraps the log-record factory, so
every record of every logger (Prefect's included) passes `scrub_text` before any handler or
formatter sees it: its message, and its traceback, formatted once and scrubbed.

Example:
    >>> import logging
    >>> install_log_scrubbing()
    >>> logging.getLogger("demo").makeRecord(
    ...     "demo", logging.INFO, __file__, 1, "dsn %s", ("https://k:pw@host/1",), None
    ... ).getMessage()
    'dsn https://***@host/1'
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from agents.redact import scrub_text

_installed = False
_lock = threading.Lock()


def _scrub_record(record: logging.LogRecord) -> None:
    try:
        message = record.getMessage()
    except Exception:  # a broken format string is the logger's problem, not a secret
        return
    scrubbed = scrub_text(message)
    if scrubbed != message:
        record.msg, record.args = scrubbed, None
    if record.exc_info and not record.exc_text:
        # Formatters reuse `exc_text` when set: the traceback is rendered once, scrubbed.
        record.exc_text = scrub_text(logging.Formatter().formatException(record.exc_info))


def install_log_scrubbing() -> None:
    """Scrub every log record of this process from now on (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        make = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            _scrub_record(record)
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
