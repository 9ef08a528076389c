"""Fault injection: the failures the offline model server produces on purpose.

This module owns the `Faults` configuration and the per-request decision of which fault (if any)
applies. Kinds:

- `"429"`: rate limited, with `Retry-After` and `retry-after-ms` headers;
- `"500"` (or any other status code from 400 to 599 written as a string, e.g. `"401"`): an
  OpenAI-style JSON error with that status;
- `"timeout"`: the answer is delayed by `timeout_sleep_s`, longer than a short client timeout;
- `"drop"`: the connection is closed before a complete response is sent;
- `"malformed"`: the answer's JSON (tool arguments or content) is cut short and unparsable;
- `"schema_invalid"`: the answer is a JSON object missing its required fields.

Precedence per request: the `fail_next` queue, then `status_code`, then `error_rate` (drawn from a
`random.Random(seed)`, so a run is reproducible). A `Faults` object is shared with the server's
thread and mutated by tests between requests; its methods take a lock.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FAULT_KINDS: tuple[str, ...] = ("429", "500", "timeout", "drop", "malformed", "schema_invalid")
CONTENT_FAULTS: frozenset[str] = frozenset({"malformed", "schema_invalid"})
_CONFIG_FIELDS: tuple[str, ...] = (
    "latency_ms",
    "latency_ms_range",
    "error_rate",
    "error_kinds",
    "fail_next",
    "status_code",
    "status_code_times",
    "retry_after_s",
    "timeout_sleep_s",
    "force_confidence",
    "confidence_by_model",
    "seed",
)


def is_status_kind(kind: str) -> bool:
    """Whether `kind` is an HTTP error status written as a string ("400" to "599").

    Example:
        >>> is_status_kind("401"), is_status_kind("drop")
        (True, False)
    """
    return kind.isdigit() and 400 <= int(kind) <= 599


def check_kind(kind: object) -> str:
    """Return `kind` if it names a fault, else raise `ValueError` listing the valid kinds.

    Example:
        >>> check_kind("timeout")
        'timeout'
    """
    if isinstance(kind, str) and (kind in FAULT_KINDS or is_status_kind(kind)):
        return kind
    raise ValueError(
        f"Unknown fault kind {kind!r}: use one of {', '.join(FAULT_KINDS)} "
        "or an HTTP status from '400' to '599'."
    )


@dataclass
class Faults:
    """Fault-injection settings of one model server, mutable at run time.

    Attributes:
        latency_ms: Fixed delay added to every chat completion.
        latency_ms_range: Uniform delay in `[a, b]` ms; replaces `latency_ms` when set.
        error_rate: Probability in [0, 1] that a request gets a fault drawn from `error_kinds`.
        error_kinds: Kinds drawn (uniformly) when `error_rate` fires.
        fail_next: Kinds applied, in order, to the next requests (one each), before anything else.
        status_code: An HTTP error status (400-599) returned instead of an answer.
        status_code_times: How many next requests get `status_code`; None means every request.
        retry_after_s: Seconds announced in `Retry-After` by a 429.
        timeout_sleep_s: Delay of a `"timeout"` fault (bounded; the answer follows if the client
            is still waiting).
        force_confidence: Value forced into any `confidence` field; None leaves it alone.
        confidence_by_model: Forced confidence per requested model name (wins over
            `force_confidence`), to make a primary model unsure and its fallback sure.
        seed: Seed of the `random.Random` behind `error_rate` and `latency_ms_range`.

    Example:
        >>> faults = Faults(fail_next=["429"])
        >>> faults.draw(), faults.draw()
        ('429', None)
    """

    latency_ms: float = 0.0
    latency_ms_range: tuple[float, float] | None = None
    error_rate: float = 0.0
    error_kinds: list[str] = field(default_factory=lambda: ["500"])
    fail_next: list[str] = field(default_factory=list)
    status_code: int | None = None
    status_code_times: int | None = None
    retry_after_s: float = 1.0
    timeout_sleep_s: float = 5.0
    force_confidence: float | None = None
    confidence_by_model: dict[str, float] = field(default_factory=dict)
    seed: int = 0
    _rng: random.Random = field(init=False, repr=False, compare=False)
    _rng_seed: int = field(init=False, repr=False, compare=False)
    _lock: threading.RLock = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._lock = threading.RLock()
        self._rng = random.Random(self.seed)
        self._rng_seed = self.seed
        self.validate()

    def validate(self) -> None:
        """Raise `ValueError` when a setting is out of range or names an unknown fault kind.

        Example:
            >>> Faults(error_rate=0.5).validate()
        """
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError(f"error_rate must be within [0, 1], got {self.error_rate}.")
        if self.latency_ms < 0:
            raise ValueError(f"latency_ms must be >= 0, got {self.latency_ms}.")
        if self.latency_ms_range is not None:
            low, high = self.latency_ms_range
            if not 0 <= low <= high:
                raise ValueError(
                    f"latency_ms_range must be [a, b] with 0 <= a <= b, got {low, high}."
                )
        for kind in [*self.error_kinds, *self.fail_next]:
            check_kind(kind)
        if self.error_rate > 0 and not self.error_kinds:
            raise ValueError("error_rate > 0 needs at least one kind in error_kinds.")
        if self.status_code is not None and not 400 <= self.status_code <= 599:
            raise ValueError(f"status_code must be within 400-599, got {self.status_code}.")
        if self.status_code_times is not None and self.status_code_times < 0:
            raise ValueError("status_code_times must be >= 0 or None.")
        if self.timeout_sleep_s < 0 or self.retry_after_s < 0:
            raise ValueError("timeout_sleep_s and retry_after_s must be >= 0.")

    def draw(self) -> str | None:
        """Decide (and consume) the fault of the next request, or None for a clean answer.

        Example:
            >>> Faults(status_code=401, status_code_times=1).draw()
            '401'
        """
        with self._lock:
            self._sync_seed()
            if self.fail_next:
                return self.fail_next.pop(0)
            if self.status_code is not None and self.status_code_times != 0:
                kind = str(self.status_code)
                if self.status_code_times is not None:
                    self.status_code_times -= 1
                    if self.status_code_times == 0:
                        self.status_code = None
                        self.status_code_times = None
                return kind
            if self.error_rate > 0 and self._rng.random() < self.error_rate:
                return self._rng.choice(self.error_kinds)
            return None

    def latency_s(self) -> float:
        """The delay of the next request in seconds (drawing from the seeded RNG for a range).

        Example:
            >>> Faults(latency_ms=250).latency_s()
            0.25
        """
        with self._lock:
            self._sync_seed()
            if self.latency_ms_range is not None:
                low, high = self.latency_ms_range
                return self._rng.uniform(low, high) / 1000.0
            return self.latency_ms / 1000.0

    def update(self, **changes: Any) -> Faults:
        """Change some settings at once (validated; rolled back if invalid). Returns self.

        Passing `seed` (even the current one) restarts the random sequence.

        Example:
            >>> Faults().update(error_rate=1.0, error_kinds=["drop"]).error_kinds
            ['drop']
        """
        unknown = sorted(set(changes) - set(_CONFIG_FIELDS))
        if unknown:
            raise ValueError(f"Unknown fault setting(s) {unknown}; known: {list(_CONFIG_FIELDS)}.")
        with self._lock:
            before = self.to_dict()
            for name, value in changes.items():
                setattr(self, name, _normalize(name, value))
            try:
                self.validate()
            except (ValueError, TypeError):
                for name, value in before.items():
                    setattr(self, name, _normalize(name, value))
                raise
            if "seed" in changes:
                self._rng = random.Random(self.seed)
                self._rng_seed = self.seed
        return self

    def reset(self) -> None:
        """Back to the defaults (no faults) and a fresh RNG, in place.

        Example:
            >>> faults = Faults(error_rate=1.0)
            >>> faults.reset(); faults.error_rate
            0.0
        """
        with self._lock:
            defaults = Faults()
            for name in _CONFIG_FIELDS:
                setattr(self, name, getattr(defaults, name))
            self._rng = random.Random(self.seed)
            self._rng_seed = self.seed

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-compatible dict.

        Example:
            >>> Faults().to_dict()["error_rate"]
            0.0
        """
        with self._lock:
            data = {name: getattr(self, name) for name in _CONFIG_FIELDS}
        data["latency_ms_range"] = (
            list(data["latency_ms_range"]) if data["latency_ms_range"] is not None else None
        )
        data["error_kinds"] = list(data["error_kinds"])
        data["fail_next"] = list(data["fail_next"])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Faults:
        """Settings from a dict such as the body of `POST /_stalwart/faults`.

        Example:
            >>> Faults.from_dict({"fail_next": ["drop"]}).fail_next
            ['drop']
        """
        return cls().update(**dict(data))

    def _sync_seed(self) -> None:
        if self._rng_seed != self.seed:
            self._rng = random.Random(self.seed)
            self._rng_seed = self.seed


def _normalize(name: str, value: Any) -> Any:
    if name == "latency_ms_range" and value is not None:
        low, high = value
        return (float(low), float(high))
    if name in ("error_kinds", "fail_next"):
        if isinstance(value, str):
            value = [value]
        return [str(item) for item in value]
    return value
