"""Durations as people write them: `90s`, `30m`, `4h`, `2d`, `1w`, or a number of seconds."""

from __future__ import annotations

import math
from datetime import timedelta

__all__ = ["parse_duration", "parse_timedelta"]

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: float | str | timedelta) -> float:
    """Seconds from a number, a `timedelta`, or a string like `90s`, `30m`, `4h`, `2d`, `1w`.

    Example:
        >>> parse_duration("4h")
        14400.0
        >>> parse_duration("1w") == parse_duration("7d")
        True
        >>> parse_duration(" 45 ")
        45.0
        >>> parse_duration("soon")
        Traceback (most recent call last):
        ...
        ValueError: duration 'soon': use a number of seconds or a number with s, m, h, d or w
    """
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    text = str(value).strip().lower()
    try:
        if text and text[-1] in _UNITS:
            seconds = float(text[:-1]) * _UNITS[text[-1]]
        else:
            seconds = float(text)
    except ValueError:
        raise ValueError(
            f"duration {value!r}: use a number of seconds or a number with s, m, h, d or w"
        ) from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"duration {value!r}: must be a finite number, not negative")
    return seconds


def parse_timedelta(value: float | str | timedelta) -> timedelta:
    """`parse_duration` as a `timedelta`.

    Example:
        >>> parse_timedelta("2d")
        datetime.timedelta(days=2)
    """
    return timedelta(seconds=parse_duration(value))
