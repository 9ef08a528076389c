"""Shared CLI plumbing: the console, exits, finding an agent by name or `module:attribute`, and
Prefect's side of a command that runs agents: its log file and a clean end."""

from __future__ import annotations

import importlib
import os
import sys
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console

from agents.declare.agent import Agent

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
ENTRY_POINT_GROUP = "stalwart.agents"


def exit_with_error(message: str, code: int = 1) -> NoReturn:
    """Print a red error line to stderr and exit non-zero."""
    err_console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code)


def exit_with_success(message: str | None = None) -> NoReturn:
    if message:
        console.print(message)
    raise typer.Exit(0)


def registered_agents() -> dict[str, str]:
    """Agent names registered through the `stalwart.agents` entry-point group → their target."""
    return {ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)}


def load_agent(spec: str) -> Agent:
    """Find an agent by registered name or `module:attribute` (the current directory is on the
    path, so a project's own modules load without installing)."""
    target = registered_agents().get(spec, spec)
    if ":" not in target:
        names = ", ".join(sorted(registered_agents())) or "none"
        exit_with_error(
            f"unknown agent {spec!r}: use a registered name ({names}) or module:attribute"
        )
    module_name, _, attribute = target.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        exit_with_error(f"cannot import {module_name!r} for agent {spec!r}: {exc}")
    found: Any = module
    for part in attribute.split("."):
        found = getattr(found, part, None)
    if not isinstance(found, Agent):
        exit_with_error(f"{target!r} is not a stalwart Agent (got {type(found).__name__})")
    return found


def log_file_for(command: str) -> Path:
    """Where a command's Prefect log goes: `<data dir>/logs/<command>-<UTC time>.log`.

    Example:
        >>> log_file_for("run").name  # doctest: +SKIP
        'run-20261206-091320.log'
    """
    from agents.settings import get_current_settings

    stamp = f"{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.getpid()}"
    return get_current_settings().data_dir / "logs" / f"{command}-{stamp}.log"


def quiet_prefect(command: str, verbose: bool) -> Path:
    """Send Prefect's INFO lines (one per task run) to a log file, the terminal keeping warnings
    and errors (everything with `verbose`); the file's path."""
    from agents.observe.logs import log_prefect_to_file

    return log_prefect_to_file(log_file_for(command), verbose=verbose)


#: Task-run state types the temporary server still has to move on.
_UNFINISHED = ["SCHEDULED", "PENDING", "RUNNING"]


def let_prefect_record(flow_run_ids: Iterable[str | None], timeout: float = 60.0) -> float:
    """Wait until the temporary Prefect server has recorded the task runs of these flow runs;
    the seconds waited.

    The temporary server is stopped when this process exits: a SIGTERM, then a kill 5 s later.
    Its task-run recorder writes the task runs from the events the client streamed, in
    batches, behind the batch itself. Stopped mid-write, the write is cancelled inside its
    database transaction: the pooled aiosqlite connection is then closed from a cancelled task
    (`sqlalchemy.pool` logs `Exception terminating connection ... CancelledError` with a
    traceback), and those task runs never reach the UI. So: send the client's buffered events,
    then wait until no task run of these flow runs is unfinished and their count holds still
    for a flush interval. A dedicated server (`PREFECT_API_URL`) keeps running: no wait.
    """
    from prefect.client.orchestration import get_client
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    started = time.monotonic()
    if PREFECT_API_URL.value():
        return 0.0
    ids = sorted({i for i in flow_run_ids if i})
    EventsWorker.drain_all(timeout=timeout)
    if not ids:
        return time.monotonic() - started
    flow_runs = {"id": {"any_": ids}}
    every = {"flow_runs": flow_runs}
    unfinished = {"flow_runs": flow_runs, "task_runs": {"state": {"type": {"any_": _UNFINISHED}}}}
    last = -1
    with get_client(sync_client=True) as client:
        while time.monotonic() - started < timeout:
            total = client.request("POST", "/task_runs/count", json=every).json()
            waiting = client.request("POST", "/task_runs/count", json=unfinished).json()
            if total == last and not waiting:
                break
            last = total
            time.sleep(1.0)  # the recorder's flush interval (agents.execution.recording)
    return time.monotonic() - started
