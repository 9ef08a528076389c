"""Writes that may run twice: inserts that skip rows already there (by primary key).

A write retried after a lost connection (see `engine.retrying`) may find its first attempt
committed. These inserts make the second attempt a no-op instead of an integrity error, on
PostgreSQL and SQLite alike (`INSERT ... ON CONFLICT DO NOTHING` / `DO UPDATE`).

Example:
    >>> from agents.store.engine import session
    >>> from agents.store.tables import StepResult
    >>> with session("sqlite://") as s:
    ...     insert_ignoring(s, StepResult, [{"key": "k", "content": b"x"}])
    ...     insert_ignoring(s, StepResult, [{"key": "k", "content": b"y"}])  # already there
    >>> with session("sqlite://") as s:
    ...     s.get(StepResult, "k").content
    b'x'
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, SQLModel

from agents.store.engine import retrying, session

__all__ = ["conflict_ignoring", "insert_ignoring", "insert_once", "upsert"]


def _primary_key(model: type[SQLModel]) -> tuple[str, ...]:
    table = model.metadata.tables[str(model.__tablename__)]
    return tuple(c.name for c in table.primary_key.columns)


def _insert(s: Session, model: type[SQLModel]) -> Any:
    return _dialect_insert(s.get_bind().dialect.name, model)


def _dialect_insert(dialect: str, model: type[SQLModel]) -> Any:
    if dialect == "postgresql":
        return postgresql.insert(model)
    if dialect == "sqlite":
        return sqlite.insert(model)
    return None


@functools.cache
def _ignoring(
    dialect: str, model: type[SQLModel], keys: tuple[str, ...], returning: tuple[str, ...] = ()
) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO NOTHING [RETURNING ...]`, built once per dialect,
    model, keys and returned columns: building a statement and its cache key on every call
    cost more than executing it."""
    statement = _dialect_insert(dialect, model)
    if statement is None:
        return None
    statement = statement.on_conflict_do_nothing(index_elements=keys)
    if returning:
        table = model.metadata.tables[str(model.__tablename__)]
        statement = statement.returning(*(table.c[name] for name in returning))
    return statement


@functools.cache
def _upserting(
    dialect: str, model: type[SQLModel], keys: tuple[str, ...], columns: tuple[str, ...]
) -> Any:
    """`INSERT ... ON CONFLICT (keys) DO UPDATE SET columns`, built once (see `_ignoring`)."""
    statement = _dialect_insert(dialect, model)
    if statement is None:
        return None
    excluded = statement.excluded
    return statement.on_conflict_do_update(
        index_elements=keys, set_={c: excluded[c] for c in columns}
    )


def conflict_ignoring(
    s: Session,
    model: type[SQLModel],
    columns: Sequence[str] | None = None,
    *,
    returning: Sequence[str] = (),
) -> Any:
    """An INSERT of `model` rows that skips a row whose `columns` (default: the primary key)
    are already stored; `returning` columns tell which rows went in. Built once per dialect
    and arguments: execute it with the rows as parameters.

    Example:
        >>> from agents.store.engine import session
        >>> from agents.store.tables import StepResult
        >>> with session("sqlite://") as s:
        ...     statement = conflict_ignoring(s, StepResult, returning=["key"])
        ...     went_in = s.connection().execute(statement, [{"key": "c", "content": b"x"}])
        ...     list(went_in.scalars())
        ['c']
    """
    keys = tuple(columns) if columns is not None else _primary_key(model)
    statement = _ignoring(s.get_bind().dialect.name, model, keys, tuple(returning))
    if statement is None:  # pragma: no cover - only SQLite and PostgreSQL are supported
        raise NotImplementedError(f"No INSERT ... ON CONFLICT for {s.get_bind().dialect.name}.")
    return statement


def insert_ignoring(s: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]]) -> None:
    """Insert rows, skipping any whose primary key is already stored (one statement).

    Example:
        >>> from agents.store.engine import session
        >>> from agents.store.tables import StepResult
        >>> with session("sqlite://") as s:
        ...     insert_ignoring(s, StepResult, [])
    """
    if not rows:
        return
    statement = _ignoring(s.get_bind().dialect.name, model, _primary_key(model))
    if statement is None:  # pragma: no cover - other databases: a plain insert
        statement = insert(model)
    # A Core executemany on the session's connection: the ORM's bulk-insert path cost several
    # times as much for the same statement.
    s.connection().execute(statement, list(rows))


def upsert(
    s: Session, model: type[SQLModel], rows: Sequence[dict[str, Any]], columns: Sequence[str]
) -> None:
    """Insert rows; for a primary key already stored, overwrite `columns` with the new values.

    Example:
        >>> from agents.store.engine import session
        >>> from agents.store.tables import StepResult
        >>> with session("sqlite://") as s:
        ...     upsert(s, StepResult, [{"key": "u", "content": b"1"}], ["content"])
        ...     upsert(s, StepResult, [{"key": "u", "content": b"2"}], ["content"])
        >>> with session("sqlite://") as s:
        ...     s.get(StepResult, "u").content
        b'2'
    """
    if not rows:
        return
    statement = _upserting(s.get_bind().dialect.name, model, _primary_key(model), tuple(columns))
    if statement is None:  # pragma: no cover - other databases: a plain insert
        statement = insert(model)
    s.connection().execute(statement, list(rows))


def insert_once(row: SQLModel, *, url: str | None = None) -> None:
    """Insert one row in its own transaction, surviving a lost connection, never twice.

    For rows with a client-side primary key (the `new_id()` default): a retry after the
    connection dropped finds the row already stored and adds nothing.

    Example:
        >>> from agents.store.tables import StepResult
        >>> insert_once(StepResult(key="once", content=b"x"), url="sqlite://")
    """
    model = type(row)
    values = {name: getattr(row, name) for name in model.model_fields}

    def write(_retry: bool) -> None:
        with session(url) as s:
            insert_ignoring(s, model, [values])

    retrying(write, what=f"{model.__name__} insert")
