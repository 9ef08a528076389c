"""Secrets never reach a log line: every log record is scrubbed as it is made. And Prefect's
one INFO line per finished task run stays in this process unless asked for in the API, and off
the terminal unless asked for there (`log_prefect_to_file`).

A user's step may raise `ValueError(f"bad key {key}")`, and Prefect logs a failing task's
exception message and traceback as they are, to the console and to the Prefect API. Scrubbing
at Sentry alone would miss that path. `install_log_scrubbing()` wraps the log-record factory, so
every record of every logger (Prefect's included) passes `scrub_text` before any handler or
formatter sees it: its message, and its traceback, formatted once and scrubbed.

"Finished in state Completed()" is one line per task run, i.e. per step. Stalwart's task
engine does not log it for a completed step unless `STALWART_TASK_STATE_LOGS` is `local`
(console and log files) or `api`; sent to the API, it is a log row per step for the server to
write while the states themselves already show it, so such records get `send_to_api = False`
(Prefect's own opt-out) unless `api`. A task run that fails logs at ERROR, which is always
sent.

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
import logging.config
import os
import threading
from pathlib import Path
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
        keep_state_lines_local = get_current_settings().task_state_logs != "api"

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = make(*args, **kwargs)
            _scrub_record(record)
            if keep_state_lines_local and _is_task_state_line(record):
                record.send_to_api = False
            return record

        logging.setLogRecordFactory(factory)
        _installed = True


#: The handler `log_prefect_to_file` adds to Prefect's logging configuration.
FILE_HANDLER = "stalwart_file"
#: The environment variable (Prefect's override of its console handler's level) a user sets to
#: choose the terminal's level; `log_prefect_to_file` then leaves it alone.
CONSOLE_LEVEL_VARIABLE = "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"


def log_prefect_to_file(path: Path, *, verbose: bool = False) -> Path:
    """Send this process's log records (Prefect's per-task-run INFO lines included) to `path`,
    and keep only warnings and errors on the terminal unless `verbose`.

    This re-applies Prefect's own logging configuration (its `logging.yml`, or the file
    `PREFECT_LOGGING_SETTINGS_PATH` names, with the `PREFECT_LOGGING_*` overrides) with two
    changes: a file handler on the `prefect` logger, which the `prefect.*` loggers propagate
    to, and the level of Prefect's `console` handler raised to WARNING. The API handlers are
    Prefect's as configured, so what reaches the Prefect API is unchanged (see
    `install_log_scrubbing`). `PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL`, when set, wins over
    both the default and `verbose`. Call it before the first flow run of the process.

    Example:
        >>> log_prefect_to_file(Path("/tmp/run.log"))  # doctest: +SKIP
        PosixPath('/tmp/run.log')
    """
    from prefect.logging.configuration import (
        DEFAULT_LOGGING_SETTINGS_PATH,
        PROCESS_LOGGING_CONFIG,
        load_logging_config,
    )
    from prefect.settings import PREFECT_LOGGING_EXTRA_LOGGERS, PREFECT_LOGGING_SETTINGS_PATH

    chosen = PREFECT_LOGGING_SETTINGS_PATH.value()
    config = load_logging_config(chosen if chosen.exists() else DEFAULT_LOGGING_SETTINGS_PATH)
    path.parent.mkdir(parents=True, exist_ok=True)
    handlers = config.setdefault("handlers", {})
    formatters = config.get("formatters", {})
    handlers[FILE_HANDLER] = {
        "class": "logging.FileHandler",
        "filename": str(path),
        "encoding": "utf-8",
        "level": "NOTSET",
        **({"formatter": "standard"} if "standard" in formatters else {}),
    }
    # Every `prefect.*` logger propagates to `prefect` (the two that do not, `prefect.extra` and
    # `prefect._internal`, are the API's and Prefect's debugging's).
    prefect = config.setdefault("loggers", {}).setdefault("prefect", {})
    prefect["handlers"] = [*prefect.get("handlers", []), FILE_HANDLER]
    if "console" in handlers and not os.environ.get(CONSOLE_LEVEL_VARIABLE):
        handlers["console"]["level"] = "NOTSET" if verbose else "WARNING"
    if _has_user_handlers(logging.getLogger()):
        config.pop("root", None)  # as Prefect's `setup_logging` does: the user's root stays
    config["incremental"] = False
    logging.config.dictConfig(config)
    # As Prefect's `setup_logging` does: the extra loggers share `prefect.extra`'s handlers.
    extra = logging.getLogger("prefect.extra")
    for name in PREFECT_LOGGING_EXTRA_LOGGERS.value():
        for handler in extra.handlers:
            logging.getLogger(name).addHandler(handler)
    PROCESS_LOGGING_CONFIG.clear()
    PROCESS_LOGGING_CONFIG.update(config)
    return path


def _has_user_handlers(root: logging.Logger) -> bool:
    """Whether the root logger has handlers of the application's own (Prefect's test)."""
    from prefect.logging.handlers import PrefectConsoleHandler

    return any(
        handler.formatter is not None
        and not isinstance(handler, PrefectConsoleHandler)
        and not type(handler).__name__.startswith("_")
        and type(handler).__name__ != "LogCaptureHandler"
        for handler in root.handlers
    )
