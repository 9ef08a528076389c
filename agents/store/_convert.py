"""Conversions at the store's boundary: JSON values and time bounds in, aware UTC datetimes out.

Owns the rules every store module follows: what a storable JSON value is (`to_json_value`),
the one UTC loader (`UTCDateTime`, the type of every datetime column: aware UTC datetimes in and
out, on SQLite, which keeps them naive, as on PostgreSQL), and how a `since` bound or an age is
read (`parse_since`, `parse_age`, on the one duration parser `agents.durations`).

Example:
    >>> parse_since("2026-11-01")
    datetime.datetime(2026, 11, 1, 0, 0, tzinfo=datetime.timezone.utc)
    >>> as_utc(datetime(2024, 1, 1)).isoformat()
    '2024-01-01T00:00:00+00:00'
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from pydantic import BaseModel

from agents.durations import parse_timedelta

__all__ = [
    "UTCDateTime",
    "as_utc",
    "parse_age",
    "parse_since",
    "require_tenant",
    "to_json_value",
]

_UNITS = frozenset("smhdw")


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


class UTCDateTime(sa.TypeDecorator[datetime]):
    """`DateTime(timezone=True)` whose values are aware UTC datetimes, written and read back.

    Example:
        >>> from datetime import timedelta, timezone
        >>> paris = datetime(2026, 11, 1, 9, tzinfo=timezone(timedelta(hours=1)))
        >>> UTCDateTime().process_bind_param(paris, None).isoformat()
        '2026-11-01T08:00:00+00:00'
        >>> UTCDateTime().process_result_value(datetime(2026, 11, 1, 8), None).isoformat()
        '2026-11-01T08:00:00+00:00'

    The type of every datetime column of the tables, hence the one UTC loader: a value bound to
    it (a row written, a `created_at >= since` filter) is converted by `as_utc` (naive means
    UTC), and every value loaded through it (ORM objects and selected columns alike) comes back
    aware and in UTC, from SQLite (which keeps datetimes naive) as from PostgreSQL (which answers
    in the session's time zone). The DDL is that of `DateTime(timezone=True)`.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        return None if value is None else as_utc(value)


def parse_age(value: str | timedelta) -> timedelta:
    """`30s`, `30m`, `12h`, `7d` or `2w` (or a timedelta) → a positive timedelta.

    Example:
        >>> parse_age("90d")
        datetime.timedelta(days=90)
        >>> parse_age("1.5h")
        datetime.timedelta(seconds=5400)
        >>> parse_age("90")
        Traceback (most recent call last):
        ...
        ValueError: '90' is not a duration: use e.g. 30m, 12h, 7d or 2w

    The string is read by the one duration parser (`agents.durations.parse_timedelta`); an age
    must name its unit (a bare number is refused: `--older-than 90` is not 90 seconds) and be
    positive.

    Raises:
        ValueError: not a duration with a unit, or not positive.
    """
    age = value if isinstance(value, timedelta) else _read_age(value)
    if age is None:
        raise ValueError(f"{value!r} is not a duration: use e.g. 30m, 12h, 7d or 2w")
    if age <= timedelta(0):
        raise ValueError(f"{value!r} is not a positive duration")
    return age


def _read_age(text: str) -> timedelta | None:
    """The duration a number with its unit (s, m, h, d or w) names, else None."""
    if text.strip()[-1:].lower() not in _UNITS:
        return None
    try:
        return parse_timedelta(text)
    except (ValueError, OverflowError):  # not a number, negative, or too large
        return None


def parse_since(
    value: datetime | timedelta | str | None, *, now: datetime | None = None
) -> datetime | None:
    """A `since` bound → an aware UTC datetime (None stays None).

    Example:
        >>> parse_since("2026-11-01")
        datetime.datetime(2026, 11, 1, 0, 0, tzinfo=datetime.timezone.utc)
        >>> now = datetime(2026, 11, 2, tzinfo=UTC)
        >>> parse_since("1d", now=now).isoformat()
        '2026-11-01T00:00:00+00:00'

    Accepts a datetime (naive means UTC), a timedelta or an age string (`30m`, `6h`, `1d`, `2w`,
    read by `parse_age`: that long before now), or an ISO date or datetime string
    (`2026-11-01`, `2026-11-01T08:00:00+01:00`).

    Raises:
        ValueError: a string that is neither an age nor an ISO date, or a negative age.
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    reference = as_utc(now) if now is not None else datetime.now(UTC)
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"since={value!r}: a negative age would be in the future")
        return reference - value
    if _read_age(value) is not None:
        return reference - parse_age(value)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"since={value!r}: use a duration (30m, 6h, 1d, 2w) or an ISO date (2026-11-01)"
        ) from None
    return as_utc(parsed)


def require_tenant(tenant: str) -> None:
    """Every store read and write is scoped to one non-empty tenant."""
    if not isinstance(tenant, str) or not tenant.strip():
        raise ValueError("A non-empty tenant is required: Stalwart never reads across tenants.")
