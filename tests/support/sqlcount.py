"""Counting what a block of code asks a database: its transactions (COMMITs) and statements."""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa

from agents.store.engine import get_engine, without_lock_waits


@contextlib.contextmanager
def counted(url: str) -> Iterator[Counter[str]]:
    """Count the COMMITs (`"commit"`) and the statements, by verb and table (`"INSERT
    action_record"`, `"SELECT memory_item"`, ...), that this process sends to `url`'s engine
    while the block runs (through either of its engines: on SQLite, group commits made on an
    event loop use their own)."""
    engines = store_engines(url)
    counts: Counter[str] = Counter()

    def on_commit(_conn: Any) -> None:
        counts["commit"] += 1

    def on_statement(_conn: Any, _cursor: Any, text: str, *_: Any) -> None:
        counts[_kind(text)] += 1

    for engine in engines:
        sa.event.listen(engine, "commit", on_commit)
        sa.event.listen(engine, "before_cursor_execute", on_statement)
    try:
        yield counts
    finally:
        for engine in engines:
            sa.event.remove(engine, "commit", on_commit)
            sa.event.remove(engine, "before_cursor_execute", on_statement)


def store_engines(url: str) -> list[sa.Engine]:
    """The engines the store's calls to `url` use: its engine and, for a SQLite file, the
    no-wait one its group commits use on an event loop (the same engine otherwise)."""
    with without_lock_waits():
        loops = get_engine(url)
    return list({id(e): e for e in (get_engine(url), loops)}.values())


def _kind(text: str) -> str:
    words = text.replace("(", " ").replace(",", " ").replace('"', " ").split()
    if not words:
        return "?"
    verb = words[0].upper()
    if verb == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1]}"
    upper = [w.upper() for w in words]
    anchor = {"INSERT": "INTO", "SELECT": "FROM", "DELETE": "FROM"}.get(verb)
    if anchor in upper and upper.index(anchor) + 1 < len(words):
        return f"{verb} {words[upper.index(anchor) + 1]}"
    return verb
