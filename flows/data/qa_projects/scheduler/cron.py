"""Minimal cron parsing."""


def parse_field(text: str, low: int, high: int) -> list[int]:
    """`*`, `*/n`, `a-b` or a number, as the list of values it allows."""
    if text == "*":
        return list(range(low, high + 1))
    if text.startswith("*/"):
        return list(range(low, high + 1, int(text[2:])))
    if "-" in text:
        start, end = map(int, text.split("-"))
        return list(range(start, end + 1))
    return [int(text)]
