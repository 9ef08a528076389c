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
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import bindparam, update
from sqlmodel import col, select

from agents.store._group import database_of, shared
from agents.store._writes import conflict_ignoring
from agents.store.engine import session
from agents.store.tables import LLMCacheEntry, utcnow

__all__ = [
    "CachedAnswer",
    "alookup",
    "astore",
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
        (answer,) = _lookup_together(database_of(url), [key])
        return answer
    except Exception as exc:  # best effort: a cache problem only costs a model call
        logger.warning("LLM cache lookup failed (asking the model instead): %s", exc)
        return None


async def alookup(key: str, *, url: str | None = None) -> CachedAnswer | None:
    """Async `lookup`: the lookups of one event loop made while a lookup runs share the next
    transaction (one query, one commit for their hit counts; `agents.store._group`)."""
    try:
        answer: CachedAnswer | None = await shared(_lookup_together, database_of(url), key)
        return answer
    except Exception as exc:  # best effort: a cache problem only costs a model call
        logger.warning("LLM cache lookup failed (asking the model instead): %s", exc)
        return None


#: Statements built once (see `_writes._ignoring`): the answers stored under several keys,
#: and their hit counts raised by the same number.
_LOOKUP = select(LLMCacheEntry.key, LLMCacheEntry.response).where(
    col(LLMCacheEntry.key).in_(bindparam("keys", expanding=True))
)
_COUNT_HITS = (
    update(LLMCacheEntry)
    .where(col(LLMCacheEntry.key).in_(bindparam("hit_keys", expanding=True)))
    .values(hits=col(LLMCacheEntry.hits) + bindparam("hit_count"))
)


def _lookup_together(url: str, keys: list[str]) -> list[CachedAnswer | None]:
    """The answers cached under several keys, their hits counted, in one transaction."""
    with session(url) as s:
        rows = s.connection().execute(_LOOKUP, {"keys": sorted(set(keys))})
        stored: dict[str, str] = {key: answer for key, answer in rows}
        answers = [CachedAnswer.from_json(stored[k]) if k in stored else None for k in keys]
        hits = Counter(k for k, a in zip(keys, answers, strict=True) if a is not None)
        by_count: dict[int, list[str]] = {}
        for k, n in sorted(hits.items()):
            by_count.setdefault(n, []).append(k)
        for n, counted in by_count.items():
            s.connection().execute(_COUNT_HITS, {"hit_keys": counted, "hit_count": n})
    return answers


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
    try:
        _store_together(database_of(url), [_row(key, answer, tenant, endpoint, model)])
    except Exception as exc:  # best effort
        logger.warning("LLM cache store failed (the answer is not cached): %s", exc)


async def astore(
    key: str,
    answer: CachedAnswer,
    *,
    tenant: str,
    endpoint: str,
    model: str,
    url: str | None = None,
) -> None:
    """Async `store`: the answers of one event loop stored while a store transaction runs
    share the next one (group commit, `agents.store._group`). Best effort, like `store`."""
    try:
        row = _row(key, answer, tenant, endpoint, model)
        await shared(_store_together, database_of(url), row)
    except Exception as exc:  # best effort
        logger.warning("LLM cache store failed (the answer is not cached): %s", exc)


def _row(key: str, answer: CachedAnswer, tenant: str, endpoint: str, model: str) -> dict[str, Any]:
    return {
        "key": key,
        "tenant": tenant,
        "endpoint": endpoint[:_COLUMN_MAX],
        "model": model[:_COLUMN_MAX],
        "response": answer.to_json(),
        "hits": 0,
        "created_at": utcnow(),
    }


def _store_together(url: str, rows: list[dict[str, Any]]) -> list[None]:
    """Several answers inserted in one transaction, each only if its key is not stored yet
    (the first writer wins, within the group too)."""
    first: dict[str, dict[str, Any]] = {}
    for row in rows:
        first.setdefault(row["key"], row)
    with session(url) as s:
        s.connection().execute(
            conflict_ignoring(s, LLMCacheEntry), [first[k] for k in sorted(first)]
        )
    return [None] * len(rows)
