"""Regex samples: a short string that matches a JSON-schema `pattern`, for the offline model.

This module owns one job: given a regular expression (as found in a string schema's `pattern`),
produce a deterministic string that `re.search` accepts. It walks the parse tree of Python's own
regex parser, choosing the smallest repeat counts and the first alternative; lookarounds and
back-references are not supported, in which case it returns `None` and the caller falls back.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Sequence
from typing import Any

_parser: Any = importlib.import_module("re._parser")

_CATEGORY_SAMPLES: dict[str, str] = {
    "CATEGORY_DIGIT": "0",
    "CATEGORY_NOT_DIGIT": "a",
    "CATEGORY_SPACE": " ",
    "CATEGORY_NOT_SPACE": "a",
    "CATEGORY_WORD": "a",
    "CATEGORY_NOT_WORD": "-",
    "CATEGORY_LINEBREAK": "\n",
    "CATEGORY_NOT_LINEBREAK": "a",
}
_NEGATED_CANDIDATES = "aA0_- .x"


class _Unsupported(ValueError):
    """The pattern uses a construct this sampler does not generate."""


def sample_pattern(pattern: str) -> str | None:
    """A deterministic string matching `pattern`, or `None` when none could be produced.

    Args:
        pattern: A regular expression, as in a JSON schema's `pattern` keyword.

    Returns:
        A string `s` with `re.search(pattern, s)` true, or `None`.

    Example:
        >>> sample_pattern(r"^[A-Z]{3}-\\d{4}$")
        'AAA-0000'
    """
    try:
        tree = _parser.parse(pattern)
        text = _emit(list(tree))
        matched = re.search(pattern, text) is not None
    except (_Unsupported, re.error, TypeError, ValueError, OverflowError):
        return None
    return text if matched else None


def _emit(items: Sequence[Any]) -> str:
    parts: list[str] = []
    for op, arg in items:
        name = str(op)
        if name == "LITERAL":
            parts.append(chr(arg))
        elif name == "NOT_LITERAL":
            parts.append("a" if arg != ord("a") else "b")
        elif name == "ANY":
            parts.append("a")
        elif name == "IN":
            parts.append(_emit_class(list(arg)))
        elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
            low, high, sub = arg
            count = min(max(low, 1), high)
            parts.append(_emit(list(sub)) * count)
        elif name == "SUBPATTERN":
            parts.append(_emit(list(arg[-1])))
        elif name == "ATOMIC_GROUP":
            parts.append(_emit(list(arg)))
        elif name == "BRANCH":
            parts.append(_emit(list(arg[1][0])))
        elif name in ("AT", "ASSERT", "ASSERT_NOT"):
            continue
        else:
            raise _Unsupported(name)
    return "".join(parts)


def _emit_class(items: list[Any]) -> str:
    if items and str(items[0][0]) == "NEGATE":
        for candidate in _NEGATED_CANDIDATES:
            if not _in_class(candidate, items[1:]):
                return candidate
        raise _Unsupported("negated class")
    op, arg = items[0]
    name = str(op)
    if name == "LITERAL":
        return chr(arg)
    if name == "RANGE":
        return chr(arg[0])
    if name == "CATEGORY":
        sample = _CATEGORY_SAMPLES.get(str(arg).replace("_UNI", ""))
        if sample is not None:
            return sample
    raise _Unsupported(name)


def _in_class(char: str, items: list[Any]) -> bool:
    for op, arg in items:
        name = str(op)
        if name == "LITERAL" and chr(arg) == char:
            return True
        if name == "RANGE" and arg[0] <= ord(char) <= arg[1]:
            return True
        if name == "CATEGORY":
            sample = _CATEGORY_SAMPLES.get(str(arg).replace("_UNI", ""))
            if sample is None or _category_contains(str(arg), char):
                return True
    return False


def _category_contains(category: str, char: str) -> bool:
    base = category.replace("_UNI", "")
    checks = {
        "CATEGORY_DIGIT": char.isdigit(),
        "CATEGORY_SPACE": char.isspace(),
        "CATEGORY_WORD": char.isalnum() or char == "_",
        "CATEGORY_LINEBREAK": char == "\n",
    }
    if base.startswith("CATEGORY_NOT_"):
        return not checks.get(base.replace("NOT_", ""), True)
    return checks.get(base, True)
