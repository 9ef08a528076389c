"""Retry policy for model calls: which failures are worth another attempt, and how long to wait.

This module owns three decisions, and nothing else (the loop that applies them is
`agents.resources.llm`):

- **Classification** (`classify`). instructor wraps every failure of a call in
  `InstructorRetryException` whose `__cause__` is the real error; `unwrap` digs it out.
  *Transient* (worth retrying): HTTP 408, 409, 429 and 5xx, `openai.APITimeoutError`,
  `openai.APIConnectionError` (refused, reset or dropped connections) and unparsable response
  bodies. *Fatal* (retrying cannot help): every other 4xx (400, 401, 403, 404, 422, ...) and
  client-side configuration errors. *Output*: the model answered, but its JSON never validated
  after the re-asks. Anything else is *unknown* and left alone.
- **Waiting** (`retry_wait_seconds`): exponential backoff with full jitter, or the server's
  `retry-after-ms` / `Retry-After` header when it sent one, capped.
- **Layering** (`is_retryable_by_step`): retries live in one layer, the LLM. The runner's
  Prefect `retry_condition_fn` uses this predicate so a step never retries what the LLM already
  retried (`ProviderUnavailable`, `ModelOutputError`) or what can never succeed (`UserError`,
  `ProviderRejected` included).

Example:
    >>> classify(TimeoutError())
    'unknown'
    >>> retry_wait_seconds(3, base=0.5, cap=30.0, retry_after=2.0)
    2.0
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import openai
from pydantic import ValidationError

from agents.errors import ModelOutputError, ProviderUnavailable, ToolLoopExhausted, UserError

__all__ = [
    "FATAL_STATUS_CODES",
    "TRANSIENT_STATUS_CODES",
    "ErrorKind",
    "classify",
    "is_retryable_by_step",
    "is_transient",
    "retry_after_seconds",
    "retry_unless_user_error",
    "retry_wait_seconds",
    "status_code_of",
    "unwrap",
]

ErrorKind = Literal["transient", "fatal", "output", "unknown"]
"""What a failure of a model call means for retrying it."""

TRANSIENT_STATUS_CODES: frozenset[int] = frozenset({408, 409, 429})
"""4xx statuses worth retrying (every 5xx is too)."""

FATAL_STATUS_CODES: frozenset[int] = frozenset({400, 401, 403, 404, 422})
"""The usual permanent refusals; any other 4xx not in `TRANSIENT_STATUS_CODES` is fatal too."""

_OUTPUT_ERROR_NAMES: frozenset[str] = frozenset(
    {"ResponseParsingError", "AsyncValidationError", "IncompleteOutputException"}
)
_CONFIG_ERROR_NAMES: frozenset[str] = frozenset({"ConfigurationError", "ModeError", "ClientError"})
_MAX_UNWRAP_DEPTH = 8


def unwrap(exc: BaseException) -> BaseException:
    """The error behind instructor's wrappers (`InstructorRetryException` and friends).

    Follows `__cause__` through instructor's exception classes only, so a `ProviderRejected`
    raised `from` an openai error stays itself.

    Example:
        >>> err = ValueError("x")
        >>> unwrap(err) is err
        True
    """
    current = exc
    for _ in range(_MAX_UNWRAP_DEPTH):
        cause = current.__cause__
        if cause is None or not type(current).__module__.startswith("instructor"):
            break
        current = cause
    return current


def status_code_of(exc: BaseException) -> int | None:
    """The HTTP status of an API error (after unwrapping), else None.

    Example:
        >>> status_code_of(ValueError()) is None
        True
    """
    inner = unwrap(exc)
    status = getattr(inner, "status_code", None)
    return status if isinstance(status, int) else None


def classify(exc: BaseException) -> ErrorKind:
    """Whether a failed model call is transient, fatal, bad output, or unknown.

    Args:
        exc: What `create_with_completion` raised (wrapped or not).

    Returns:
        "transient" (retry it), "fatal" (never retry), "output" (the model answered with
        output that did not validate after the re-asks) or "unknown" (not a model-call error:
        let it propagate untouched).

    Example:
        >>> import httpx, openai
        >>> request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
        >>> classify(openai.APITimeoutError(request))
        'transient'
        >>> classify(openai.AuthenticationError(
        ...     "no", response=httpx.Response(401, request=request), body=None))
        'fatal'
    """
    inner = unwrap(exc)
    if isinstance(inner, openai.APIConnectionError):  # APITimeoutError is a subclass
        return "transient"
    if isinstance(inner, openai.APIStatusError):
        status = inner.status_code
        if status in TRANSIENT_STATUS_CODES or status >= 500:
            return "transient"
        return "fatal"
    if isinstance(inner, openai.APIResponseValidationError):
        return "transient"  # a garbled body (a proxy's HTML page): the next one may be fine
    if isinstance(inner, ValidationError | json.JSONDecodeError):
        return "output"
    name = type(inner).__name__
    if name in _OUTPUT_ERROR_NAMES:
        return "output"
    if isinstance(inner, openai.OpenAIError) or name in _CONFIG_ERROR_NAMES:
        return "fatal"  # client-side: missing key, unsupported mode, ...
    return "unknown"


def is_transient(exc: BaseException) -> bool:
    """Whether another attempt of the same request may succeed.

    Example:
        >>> is_transient(RuntimeError("boom"))
        False
    """
    return classify(exc) == "transient"


def _header(headers: Mapping[str, str] | Any, name: str) -> str | None:
    try:
        value = headers.get(name)
    except AttributeError:
        return None
    return value if isinstance(value, str) else None


def retry_after_seconds(exc: BaseException, *, now: float | None = None) -> float | None:
    """The wait a server asked for: `retry-after-ms`, else `Retry-After` (seconds or a date).

    Args:
        exc: A failed call (wrapped or not) carrying an HTTP response.
        now: The current UNIX time, for `Retry-After` dates (default: the clock).

    Returns:
        Seconds to wait (>= 0), or None when the response has no usable header.

    Example:
        >>> import httpx, openai
        >>> request = httpx.Request("POST", "http://127.0.0.1/v1/chat/completions")
        >>> response = httpx.Response(429, request=request, headers={"Retry-After": "2"})
        >>> retry_after_seconds(openai.RateLimitError("slow down", response=response, body=None))
        2.0
    """
    response = getattr(unwrap(exc), "response", None)
    headers = getattr(response, "headers", None)
    if headers is None:
        return None
    millis = _header(headers, "retry-after-ms")
    if millis is not None:
        try:
            value = float(millis) / 1000.0
        except ValueError:
            value = -1.0
        if value >= 0:
            return value
    text = _header(headers, "retry-after")
    if text is None:
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            when = parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        value = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, value)


def retry_wait_seconds(
    attempt: int,
    *,
    base: float,
    cap: float,
    retry_after: float | None = None,
    rng: random.Random | None = None,
) -> float:
    """How long to wait after failed attempt number `attempt` (1-based).

    The server's `Retry-After` wins when present; otherwise exponential backoff with full
    jitter: uniform(0, base * 2**(attempt-1)). Both are capped at `cap`.

    Args:
        attempt: The number of the attempt that just failed (1 for the first).
        base: Backoff base in seconds.
        cap: Longest wait in seconds.
        retry_after: The wait the server asked for, if any.
        rng: Random source (default: the `random` module's).

    Example:
        >>> retry_wait_seconds(1, base=0.5, cap=30.0, retry_after=120.0)
        30.0
        >>> 0.0 <= retry_wait_seconds(4, base=0.5, cap=30.0) <= 4.0
        True
    """
    if retry_after is not None:
        return min(cap, max(0.0, retry_after))
    ceiling = min(cap, base * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(0.0, ceiling) if ceiling > 0 else 0.0


def is_retryable_by_step(exc: BaseException) -> bool:
    """The runner's Prefect `retry_condition_fn` verdict on a failed step.

    False for `UserError` (a mistake: retrying cannot help; `ProviderRejected` included), and
    for `ProviderUnavailable` and `ModelOutputError` (already retried inside `LLM.decide`:
    retries live in one layer). True for everything else, which follows the step's `retries`.

    Example:
        >>> from agents.errors import ProviderUnavailable, UserError
        >>> is_retryable_by_step(UserError("bad")), is_retryable_by_step(ValueError("flaky"))
        (False, True)
        >>> is_retryable_by_step(ProviderUnavailable("down"))
        False
    """
    return not isinstance(
        exc, UserError | ProviderUnavailable | ModelOutputError | ToolLoopExhausted
    )


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """A developer's mistake is never retried, nor a provider failure the LLM layer already
    retried (retries live in one layer); everything else follows the step's retries."""
    error = getattr(state, "data", None)
    return not isinstance(error, BaseException) or is_retryable_by_step(error)
