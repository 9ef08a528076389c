"""Stable digests of values: the same value gives the same key in every process."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["canonical", "digest"]


def canonical(value: Any) -> Any:
    """A JSON-able form of a value for hashing: stable across processes.

    Example:
        >>> canonical({"b": {2, 1}, "a": (1, "x")})
        {'a': [1, 'x'], 'b': [1, 2]}
    """
    if isinstance(value, BaseModel):
        return {"__model__": type(value).__qualname__, **value.model_dump(mode="json")}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((canonical(v) for v in value), key=repr)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {"__dataclass__": type(value).__qualname__, **canonical(vars(value))}
    return repr(value)


def digest(value: Any, size: int = 32) -> str:
    """sha256 of the canonical JSON of `value`, hex, `size` characters.

    Example:
        >>> digest({"a": 1, "b": 2}, 12) == digest({"b": 2, "a": 1}, 12)
        True
    """
    data = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(data.encode()).hexdigest()[:size]
