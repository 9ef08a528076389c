"""Shared CLI plumbing: the console, exits, and finding an agent by name or `module:attribute`."""

from __future__ import annotations

import importlib
import os
import sys
from importlib.metadata import entry_points
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
