"""Report statistics."""


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def median(values: list[float]) -> float:
    """The median (the bug: even-length lists return the upper middle value)."""
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def percent(part: float, whole: float) -> float:
    return round(100 * part / whole, 1)
