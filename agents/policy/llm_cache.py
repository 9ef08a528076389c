"""The LLM answer cache: a validated model answer, stored once, reused for the same question.

This module owns the `llm_cache` table's contents. The key (`cache_key`) is the sha256 of the
canonical JSON of (tenant, endpoint base URL, model, messages, output JSON schema, parameters),
so tenants never share answers and any change to the prompt, the output type, the model or a
sampling parameter asks the model again. A row stores the parsed output as JSON, the raw
output (tool-call arguments or content), the token usage and the logprobs; `hits` counts reuses.

Reads and writes are best effort: a database problem is logged and the call goes to the model,
so the cache can make a call cheaper but never make it fail. `LLM.decide` is the only caller;
`LLM(cache=False)`, `decide(..., cache=False)` or `STALWART_LLM_CACHE_ENABLED=false` bypass it.

Example:
    >>> key = cache_key(tenant="acme", base_url="http://127.0.0.1:9/v1", model="m",
    ...                 messages=[{"role": "user", "content": "hi"}], schema={}, params={})
    >>> store(key, CachedAnswer(output={"ok": True}), tenant="acme", endpoint="doc", model="m",
    ...       url="sqlite://")
    >>> lookup(key, url="sqlite://").output
    {'ok': True}
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from agents.store.engine import session
from agents.store.tables import LLMCacheEntry, utcnow

__all__ = [
    "CachedAnswer",
    "cache_key",
    "canonical_json",
    "lookup",
    "prompt_digest",
    "store",
]

logger = logging.getLogger(__name__)

_COLUMN_MAX = 200  # llm_cache.endpoint and llm_cache.model are VARCHAR(200)


def canonical_json(value: Any) -> str:
    """One spelling per value: sorted keys, no spaces, non-JSON values as `str`.

    Example:
        >>> canonical_json({"b": 1, "a": [1, 2]})
        '{"a":[1,2],"b":1}'
    """
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _sha256(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode("utf-8")).hexdigest()


def prompt_digest(messages: Sequence[Mapping[str, Any]], schema: Mapping[str, Any]) -> str:
    """The sha256 (64 hex characters) of the messages and the output schema.

    Example:
        >>> len(prompt_digest([{"role": "user", "content": "hi"}], {"type": "object"}))
        64
    """
    return _sha256({"messages": list(messages), "schema": schema})


def cache_key(
    *,
    tenant: str,
    base_url: str,
    model: str,
    messages: Sequence[Mapping[str, Any]],
    schema: Mapping[str, Any],
    params: Mapping[str, Any],
) -> str:
    """The cache key of one question (sha256, 64 hex characters).

    Args:
        tenant: The tenant asking ("" when none): answers are never shared across tenants.
        base_url: The endpoint's base URL.
        model: The model asked.
        messages: The chat messages sent.
        schema: The JSON schema of the output type.
        params: Everything else that changes the answer (mode, temperature, ...).

    Example:
        >>> a = cache_key(tenant="a", base_url="u", model="m", messages=[], schema={}, params={})
        >>> b = cache_key(tenant="b", base_url="u", model="m", messages=[], schema={}, params={})
        >>> a != b and len(a) == 64
        True
    """
    return _sha256(
        {
            "tenant": tenant,
            "base_url": base_url,
            "model": model,
            "messages": list(messages),
            "schema": schema,
            "params": dict(params),
        }
    )


@dataclass(frozen=True)
class CachedAnswer:
    """What the cache keeps of one answer.

    Attributes:
        output: The validated output, as JSON (`model_dump(mode="json")`).
        raw_output: The model's raw text (tool-call arguments or content), truncated.
        usage: Tokens the original call spent: `{"tokens_in": ..., "tokens_out": ...}`.
        logprobs: `choices[0].logprobs` of the original answer, as JSON, if any.

    Example:
        >>> CachedAnswer(output={"a": 1}).to_json()["output"]
        {'a': 1}
    """

    output: Any
    raw_output: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    logprobs: Any = None

    def to_json(self) -> dict[str, Any]:
        """The row's `response` column."""
        return {
            "output": self.output,
            "raw_output": self.raw_output,
            "usage": dict(self.usage),
            "logprobs": self.logprobs,
        }

    @classmethod
    def from_json(cls, data: Any) -> CachedAnswer | None:
        """Read a `response` column back (None if it is not a cached answer)."""
        if not isinstance(data, Mapping) or "output" not in data:
            return None
        usage = data.get("usage")
        raw = data.get("raw_output")
        return cls(
            output=data["output"],
            raw_output=raw if isinstance(raw, str) else None,
            usage={k: int(v) for k, v in usage.items()} if isinstance(usage, Mapping) else {},
            logprobs=data.get("logprobs"),
        )


def lookup(key: str, *, url: str | None = None) -> CachedAnswer | None:
    """The answer cached under `key` (counting the hit), or None.

    Args:
        key: A `cache_key(...)`.
        url: The state database (default: the settings' URL).

    Example:
        >>> lookup("0" * 64, url="sqlite://") is None
        True
    """
    try:
        with session(url) as s:
            row = s.get(LLMCacheEntry, key)
            if row is None:
                return None
            answer = CachedAnswer.from_json(row.response)
            if answer is not None:
                s.exec(
                    update(LLMCacheEntry)
                    .where(col(LLMCacheEntry.key) == key)
                    .values(hits=col(LLMCacheEntry.hits) + 1)
                )
            return answer
    except Exception as exc:  # best effort: a cache problem only costs a model call
        logger.warning("LLM cache lookup failed (asking the model instead): %s", exc)
        return None


def store(
    key: str,
    answer: CachedAnswer,
    *,
    tenant: str,
    endpoint: str,
    model: str,
    url: str | None = None,
) -> None:
    """Keep an answer under `key`; an answer already stored under it wins (first writer).

    Args:
        key: A `cache_key(...)`.
        answer: What to keep.
        tenant: The tenant that asked ("" when none).
        endpoint: The endpoint's public base URL or name (never a key; truncated to 200).
        model: The model that answered.
        url: The state database (default: the settings' URL).

    Example:
        >>> store("1" * 64, CachedAnswer(output=1), tenant="", endpoint="e", model="m",
        ...       url="sqlite://")
    """
    values: dict[str, Any] = {
        "key": key,
        "tenant": tenant,
        "endpoint": endpoint[:_COLUMN_MAX],
        "model": model[:_COLUMN_MAX],
        "response": answer.to_json(),
        "hits": 0,
        "created_at": utcnow(),
    }
    try:
        with session(url) as s:
            dialect = s.get_bind().dialect.name
            if dialect == "postgresql":
                pg = postgresql.insert(LLMCacheEntry).values(**values)
                s.exec(pg.on_conflict_do_nothing(index_elements=["key"]))
            elif dialect == "sqlite":
                lite = sqlite.insert(LLMCacheEntry).values(**values)
                s.exec(lite.on_conflict_do_nothing(index_elements=["key"]))
            else:
                s.add(LLMCacheEntry(**values))
    except IntegrityError:
        return  # stored concurrently by someone else: theirs is as good
    except Exception as exc:  # best effort
        logger.warning("LLM cache store failed (the answer is not cached): %s", exc)
