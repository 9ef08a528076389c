"""`stalwart`: the command line, one module per command group (typer + rich)."""

from __future__ import annotations

from agents.cli._app import app, main

__all__ = ["app", "main"]
