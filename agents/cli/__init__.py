"""`stalwart`: the command line, one module per command group (typer + rich)."""

from __future__ import annotations

import sys
from typing import Any

__all__ = ["app", "main"]


def main() -> None:
    """Entry point of the `stalwart` script.

    `stalwart worker` goes straight to `agents.worker`: Prefect's worker process then loads
    neither the CLI nor the runtime, memory it would never use (docs/measurements.md).
    """
    if sys.argv[1:2] == ["worker"]:
        from agents.worker import main as worker_main

        worker_main(sys.argv[2:])
        return
    from agents.cli._app import main as app_main

    app_main()


def __getattr__(name: str) -> Any:
    if name == "app":
        from agents.cli._app import app

        return app
    raise AttributeError(f"module 'agents.cli' has no attribute {name!r}")
