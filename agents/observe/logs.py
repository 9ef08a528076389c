"""Secrets never reach a log line: every log record is scrubbed as it is made. And Prefect's
one INFO line per finished task run stays in this process unless asked for in the API.

A user's step may raise `ValueError(f"bad key {key}")`, and Prefect logs a failing task's
exception message and traceback as they are, to the console and to the Prefect API. Scrubbing
at Sentry alone would miss that path. `install_log_scrubbing()` wraps the log-record factory, so
every record of every logger (Prefect's included) passes `scrub_text` before any handler or
formatter sees it: its message, and its traceback, formatted once and scrubbed.

"Finished in state Completed()" is logged once per task run, i.e. once per step: sent to the
API, it is a log row per step for the server to write while the states themselves already show
it. Those records get `send_to_api = False` (Prefect's own opt-out) unless
`STALWART_TASK_STATE_LOGS=api`; the console and log files still get them, and a task run that
fails logs at ERROR, which is always sent.

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
from agents.settings import get_current_settings

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


def _is_task_state_line(record: logging.LogRecord) -> bool:
    return (
        record.levelno == logging.INFO
        and record.name == "prefect.task_runs"
        and isinstance(record.msg, str)
        and record.msg.startswith("Finished in state ")
    )


def install_log_scrubbing() -> None:
    """Scrub every log record of this process from now on, and keep task-run state lines out
    of the Prefect API unless `STALWART_TASK_STATE_LOGS=api` (idempotent, thread-safe)."""
    global _installed
    with _lock:
        if _installed:
            return
        make = logging.getLogRecordFactory()
        keep_state_lines_local = get_current_settings().task_state_logs == "local"

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            _scrub_record(record)
            if keep_state_lines_local and _is_task_state_line(record):
                record.send_to_api = False
            return record

        logging.setLogRecordFactory(factory)
        _installed = True
