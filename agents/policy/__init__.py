"""Policy: how Stalwart governs model calls — retries, circuit breakers and the answer cache.

This package owns the rules `agents.resources.llm.LLM` applies around every model request,
each in its own module:

- `retry`: which failures are transient, fatal or bad output; backoff with full jitter that
  honours `Retry-After`; and `is_retryable_by_step`, the runner's Prefect `retry_condition_fn`
  (retries live in one layer: the LLM).
- `breaker`: one circuit breaker per (endpoint base URL, model), shared by the threads of a
  process and, through the `circuit_state` table, by every worker.
- `llm_cache`: validated answers kept in the `llm_cache` table, keyed per tenant.

Example:
    >>> from agents.policy import is_retryable_by_step, ProviderRejected
    >>> is_retryable_by_step(ProviderRejected("HTTP 401 from endpoint 'configured'"))
    False
"""

from __future__ import annotations

from agents.errors import ModelOutputError, ProviderRejected, ProviderUnavailable
from agents.policy.breaker import (
    BreakerState,
    CircuitBreaker,
    Permit,
    breaker_key,
    breaker_state,
    get_breaker,
    reset_breakers,
)
from agents.policy.llm_cache import CachedAnswer, cache_key, prompt_digest
from agents.policy.retry import (
    ErrorKind,
    classify,
    is_retryable_by_step,
    is_transient,
    retry_after_seconds,
    retry_wait_seconds,
    unwrap,
)

__all__ = [
    "BreakerState",
    "CachedAnswer",
    "CircuitBreaker",
    "ErrorKind",
    "ModelOutputError",
    "Permit",
    "ProviderRejected",
    "ProviderUnavailable",
    "breaker_key",
    "breaker_state",
    "cache_key",
    "classify",
    "get_breaker",
    "is_retryable_by_step",
    "is_transient",
    "prompt_digest",
    "reset_breakers",
    "retry_after_seconds",
    "retry_wait_seconds",
    "unwrap",
]
