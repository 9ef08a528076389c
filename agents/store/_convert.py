"""Conversions at the store's boundary: JSON values in, timezone-aware UTC datetimes out.

Owns two rules every store module follows: what a storable JSON value is (`to_json_value`), and
that datetimes read back are aware and in UTC on SQLite (which keeps them naive) as on
PostgreSQL (`install_utc_loaders`).
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel
from sqlalchemy.orm.attributes import set_committed_value

from agents.store.tables import ActionRecord, AgentRun, MemoryItem, StepResult, StepRun

_TABLES: tuple[type[Any], ...] = (AgentRun, StepRun, StepResult, MemoryItem, ActionRecord)
_installed = False


def to_json_value(value: Any, *, what: str = "value") -> Any:
    """Check and convert a value to plain JSON (dict/list/str/int/float/bool/None).

    Pydantic models are dumped with `model_dump(mode="json")`; tuples become lists.

    Args:
        value: the value to store.
        what: how to name the value in an error message.

    Raises:
        TypeError: the value (or something inside it) is not JSON.

    Example:
        >>> to_json_value({"a": (1, 2.5, None)})
        {'a': [1, 2.5, None]}
    """
    return _convert(value, what)


def _convert(value: Any, where: str) -> Any:
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{where} is {value!r}: NaN and infinity are not JSON.")
        return value
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a key {key!r} of type {type(key).__name__}: JSON object keys "
                    "must be strings."
                )
            out[key] = _convert(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, list | tuple):
        return [_convert(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}, which is not JSON: store dict, list, str, int, "
        "float, bool, None or a pydantic model (convert other objects first)."
    )


def as_utc(value: datetime) -> datetime:
    """The same instant as an aware UTC datetime (naive values are taken to be UTC already).

    Example:
        >>> as_utc(datetime(2024, 1, 1)).isoformat()
        '2024-01-01T00:00:00+00:00'
    """
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def _datetime_columns(table: type[Any]) -> tuple[str, ...]:
    mapper = sa.inspect(table)
    return tuple(
        attr.key for attr in mapper.column_attrs if isinstance(attr.columns[0].type, sa.DateTime)
    )


def install_utc_loaders() -> None:
    """Make every datetime loaded into a Stalwart table object aware and in UTC (idempotent).

    Example:
        >>> install_utc_loaders()
    """
    global _installed
    if _installed:
        return
    for table in _TABLES:
        columns = _datetime_columns(table)

        def on_load(target: Any, *_args: Any, _columns: tuple[str, ...] = columns) -> None:
            for name in _columns:
                value = target.__dict__.get(name)
                if isinstance(value, datetime) and value.tzinfo is not UTC:
                    set_committed_value(target, name, as_utc(value))

        sa.event.listen(table, "load", on_load)
        sa.event.listen(table, "refresh", on_load)
    _installed = True


def require_tenant(tenant: str) -> None:
    """Every store read and write is scoped to one non-empty tenant."""
    if not isinstance(tenant, str) or not tenant.strip():
        raise ValueError("A non-empty tenant is required: Stalwart never reads across tenants.")
