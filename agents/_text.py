"""Small text helpers shared by the runtime's reports."""

from __future__ import annotations

__all__ = ["one_line"]


def one_line(text: str, width: int) -> str:
    """`text` with its whitespace runs collapsed to single spaces, cut to `width` characters.

    Example:
        >>> one_line("exited\\n  with status -9", 80)
        'exited with status -9'
        >>> one_line("abcdef", 4)
        'abc…'
    """
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
