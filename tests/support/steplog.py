"""Where the cross-process test agents (review_agent, tool_agent) log what they execute: one
file per name in $STALWART_TEST_OUT (`OUT`, which a test points at its tmp_path), so a test can
count executions across processes and kills."""

from __future__ import annotations

import os

OUT = os.environ.get("STALWART_TEST_OUT", ".")


def log(name: str, line: str) -> None:
    """Append `line` to the `name` log."""
    with open(os.path.join(OUT, f"{name}.log"), "a") as f:
        f.write(line + "\n")


def lines(name: str) -> list[str]:
    """Every entry of the `name` log so far (none when nothing was logged)."""
    path = os.path.join(OUT, f"{name}.log")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return f.read().split()
