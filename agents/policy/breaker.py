"""Circuit breakers: stop calling a model endpoint that keeps failing, and share that verdict.

This module owns one breaker per (endpoint base URL, model) — `breaker_key` — kept in a
process-wide registry (thread-safe) and mirrored to the `circuit_state` table so every worker
process sees it:

- **closed**: requests go through. `breaker_failure_threshold` consecutive *transient* failures
  (429, 5xx, timeouts, dropped connections; see `agents.policy.retry`) open it. Any other
  outcome (an answer, even an invalid one, or a fatal 4xx) proves the endpoint reachable and
  resets the count.
- **open**: requests are refused without touching the network, for `breaker_reset_seconds`.
- **half_open**: after that, exactly one probe request is allowed (others are still refused);
  its success closes the breaker, its failure opens it again.

Every state change is upserted into `circuit_state` (best effort: a database problem is
logged, never raised). A breaker re-reads its row at most once per `DB_SYNC_INTERVAL_S` and
adopts a state written by another process more recently than its own last change: a worker
whose breaker is closed honours an `open` row, and a probe that succeeded elsewhere closes it.

Example:
    >>> reset_breakers()
    >>> key = breaker_key("http://127.0.0.1:9/v1", "stalwart-test")
    >>> key
    'http://127.0.0.1:9/v1#stalwart-test'
    >>> breaker_state(key, sync=False)
    'closed'
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import col, delete

from agents.settings import get_current_settings
from agents.store.engine import session
from agents.store.tables import CircuitState

__all__ = [
    "DB_SYNC_INTERVAL_S",
    "BreakerState",
    "CircuitBreaker",
    "Permit",
    "breaker_key",
    "breaker_state",
    "get_breaker",
    "public_url",
    "reset_breakers",
]

logger = logging.getLogger(__name__)

BreakerState = Literal["closed", "open", "half_open"]
"""The three states of a circuit breaker, as stored in `circuit_state.state`."""

DB_SYNC_INTERVAL_S = 1.0
"""A breaker reads its `circuit_state` row at most this often (seconds)."""

_KEY_MAX = 300  # circuit_state.endpoint is VARCHAR(300)
_LAST_ERROR_MAX = 2_000
_CLOCK_SLACK_S = 1e-3  # datetimes round-trip through the database with microsecond precision


def public_url(base_url: str) -> str:
    """The base URL without credentials, query or fragment, and without a trailing slash.

    Example:
        >>> public_url("https://user:secret@api.example.com/v1/?key=x")
        'https://api.example.com/v1'
    """
    parts = urlsplit(base_url.strip())
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def breaker_key(base_url: str, model: str) -> str:
    """The key of the breaker guarding `model` at `base_url` (at most 300 characters).

    Credentials, query and fragment of the URL are dropped: the key is stored and logged.

    Example:
        >>> breaker_key("https://user:secret@api.example.com/v1/?x=1", "gpt-4o-mini")
        'https://api.example.com/v1#gpt-4o-mini'
    """
    key = f"{public_url(base_url)}#{model}"
    if len(key) <= _KEY_MAX:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: _KEY_MAX - len(digest) - 1]}~{digest}"


def _to_datetime(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


@dataclass(frozen=True)
class Permit:
    """Leave to send one request through a breaker; report how it went exactly once.

    Attributes:
        breaker: The breaker that granted it.
        probe: Whether this is the single half-open probe.

    Example:
        >>> reset_breakers()
        >>> permit = get_breaker("http://127.0.0.1:9/v1#m").allow(sync=False)
        >>> permit is not None and not permit.probe
        True
        >>> permit.success()
    """

    breaker: CircuitBreaker
    probe: bool = False

    def success(self) -> None:
        """The endpoint answered (or refused for good): it is reachable."""
        self.breaker.record_success(probe=self.probe)

    def failure(self, error: str) -> None:
        """The request failed transiently (`error` is a short, secret-free description)."""
        self.breaker.record_failure(error, probe=self.probe)

    def release(self) -> None:
        """The request ended without a verdict (cancelled, or a non-endpoint error)."""
        self.breaker.release(probe=self.probe)


class CircuitBreaker:
    """The breaker of one endpoint key. Use `get_breaker(key)`; all methods are thread-safe.

    Thresholds are read from the settings in force at each event, so `temporary_settings` and
    `reload_settings` apply at once.

    Example:
        >>> from agents.settings import temporary_settings
        >>> reset_breakers()
        >>> breaker = get_breaker("http://127.0.0.1:9/v1#doc-model")
        >>> with temporary_settings(breaker_failure_threshold=2, database_url="sqlite://"):
        ...     for _ in range(2):
        ...         breaker.allow(sync=False).failure("HTTP 503")
        ...     breaker.state, breaker.allow(sync=False)
        ('open', None)
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._lock = threading.Lock()
        self._persist_lock = threading.Lock()
        self._state: BreakerState = "closed"
        self._failures = 0
        self._opened_at: float | None = None
        self._changed_at = 0.0
        self._last_error: str | None = None
        self._probe_in_flight = False
        self._synced_at: float | None = None  # monotonic time of the last database read

    @property
    def state(self) -> BreakerState:
        """The state in this process ("open" stays "open" until a request asks for a probe)."""
        with self._lock:
            return self._state

    @property
    def failures(self) -> int:
        """Consecutive transient failures counted so far."""
        with self._lock:
            return self._failures

    def is_quiet(self) -> bool:
        """Whether `allow()` would touch no database now: the breaker is closed and its row was
        read (or claimed for reading, `claim_sync`) less than `DB_SYNC_INTERVAL_S` ago. A
        success reported on a closed breaker never touches it either.

        An async caller may then make them on its event loop instead of a worker thread.

        Example:
            >>> reset_breakers()
            >>> breaker = get_breaker("http://127.0.0.1:9/v1#quiet")
            >>> breaker.is_quiet()  # never read from the database yet
            False
            >>> from agents.settings import temporary_settings
            >>> with temporary_settings(database_url="sqlite://"):
            ...     breaker.allow().success()
            >>> breaker.is_quiet()
            True
        """
        with self._lock:
            synced = self._synced_at
            return (
                self._state == "closed"
                and synced is not None
                and time.monotonic() - synced < DB_SYNC_INTERVAL_S
            )

    def allow(self, *, sync: bool = True) -> Permit | None:
        """A permit to send one request now, or None while the breaker refuses requests.

        Args:
            sync: Re-read the `circuit_state` row first (at most once per
                `DB_SYNC_INTERVAL_S`), to honour other processes' verdicts.

        Example:
            >>> reset_breakers()
            >>> get_breaker("http://127.0.0.1:9/v1#m").allow(sync=False) is not None
            True
        """
        if sync:
            self.sync()
        changed = False
        with self._lock:
            if self._state == "closed":
                return Permit(self)
            if self._state == "open":
                reset_s = get_current_settings().breaker_reset_seconds
                opened_at = self._opened_at if self._opened_at is not None else 0.0
                if time.time() - opened_at < reset_s:
                    return None
                self._set_state("half_open")
                changed = True
            if self._probe_in_flight:
                return None
            self._probe_in_flight = True
        if changed:
            self._persist()
        return Permit(self, probe=True)

    def record_success(self, *, probe: bool = False) -> None:
        """Count a request that reached the endpoint: reset the count, close if not closed."""
        with self._lock:
            if probe:
                self._probe_in_flight = False
            self._failures = 0
            if self._state == "closed" or (self._state == "open" and not probe):
                # A late answer to a request sent before the breaker opened does not close it.
                return
            self._set_state("closed")
            self._opened_at = None
        self._persist()

    def record_failure(self, error: str, *, probe: bool = False) -> None:
        """Count a transient failure: open the breaker at the threshold, or after a probe."""
        threshold = get_current_settings().breaker_failure_threshold
        with self._lock:
            if probe:
                self._probe_in_flight = False
            self._failures += 1
            self._last_error = error[:_LAST_ERROR_MAX]
            opens = (self._state == "half_open" and probe) or (
                self._state == "closed" and self._failures >= threshold
            )
            if not opens:
                return
            self._set_state("open")
            self._opened_at = self._changed_at
            failures, last_error = self._failures, self._last_error
        logger.warning(
            "Circuit breaker for %s opened after %d consecutive transient failure(s): %s",
            self.key,
            failures,
            last_error,
        )
        self._persist()

    def release(self, *, probe: bool = False) -> None:
        """Give a permit back without a verdict (frees the half-open probe slot)."""
        if probe:
            with self._lock:
                self._probe_in_flight = False

    def claim_sync(self) -> bool:
        """Whether the caller is the one to read the row now (then `sync(force=True)`): it was
        last read or claimed `DB_SYNC_INTERVAL_S` ago or more. Until the next interval the row
        counts as fresh, so of many callers arriving together one reads it and the others go
        on with the state in memory.

        Example:
            >>> reset_breakers()
            >>> breaker = get_breaker("http://127.0.0.1:9/v1#claimed")
            >>> breaker.claim_sync(), breaker.claim_sync()
            (True, False)
        """
        now = time.monotonic()
        with self._lock:
            if self._synced_at is not None and now - self._synced_at < DB_SYNC_INTERVAL_S:
                return False
            self._synced_at = now
            return True

    def sync(self, *, force: bool = False) -> None:
        """Adopt the `circuit_state` row if another process changed it after this one did.

        Args:
            force: Read now, even if the row was read less than `DB_SYNC_INTERVAL_S` ago.
        """
        if not self.claim_sync() and not force:
            return
        try:
            with session() as s:
                row = s.get(CircuitState, self.key)
        except Exception as exc:  # best effort: the breaker works in-process without it
            logger.warning("Cannot read circuit_state for %s: %s", self.key, exc)
            return
        if row is None:
            return
        updated_at = row.updated_at.timestamp()
        with self._lock:
            if updated_at <= self._changed_at + _CLOCK_SLACK_S:
                return
            stored = row.state if row.state in ("closed", "open", "half_open") else "closed"
            if stored == "closed":
                if self._state != "closed":
                    self._state, self._failures, self._opened_at = "closed", 0, None
                    self._probe_in_flight = False
            elif not (self._state == "half_open" and self._probe_in_flight):
                # Another worker opened it (or is probing it): stay away until its reset time.
                # (While this process's own probe is out, that probe decides.)
                self._state = "open"
                self._failures = row.failures
                opened = row.opened_at if row.opened_at is not None else row.updated_at
                self._opened_at = opened.timestamp()
                self._last_error = row.last_error
            self._changed_at = updated_at

    def _set_state(self, state: BreakerState) -> None:
        """Change state (lock held); the caller persists after releasing the lock."""
        self._state = state
        self._changed_at = max(time.time(), self._changed_at + 2 * _CLOCK_SLACK_S)

    def _persist(self) -> None:
        """Upsert the current state into `circuit_state` (the latest state always wins)."""
        with self._persist_lock:
            with self._lock:
                values: dict[str, Any] = {
                    "endpoint": self.key,
                    "state": self._state,
                    "failures": self._failures,
                    "opened_at": (
                        _to_datetime(self._opened_at) if self._opened_at is not None else None
                    ),
                    "last_error": self._last_error,
                    "updated_at": _to_datetime(self._changed_at),
                }
            changes = {k: v for k, v in values.items() if k != "endpoint"}
            try:
                with session() as s:
                    dialect = s.get_bind().dialect.name
                    if dialect == "postgresql":
                        pg = postgresql.insert(CircuitState).values(**values)
                        s.exec(pg.on_conflict_do_update(index_elements=["endpoint"], set_=changes))
                    elif dialect == "sqlite":
                        lite = sqlite.insert(CircuitState).values(**values)
                        s.exec(
                            lite.on_conflict_do_update(index_elements=["endpoint"], set_=changes)
                        )
                    else:  # portable fallback: delete then insert, in one transaction
                        s.exec(delete(CircuitState).where(col(CircuitState.endpoint) == self.key))
                        s.add(CircuitState(**values))
            except Exception as exc:  # best effort: never fail a model call over bookkeeping
                logger.warning("Cannot write circuit_state for %s: %s", self.key, exc)

    def __repr__(self) -> str:
        return f"CircuitBreaker({self.key!r}, state={self.state!r})"


_registry_lock = threading.Lock()
_registry: dict[str, CircuitBreaker] = {}


def get_breaker(key: str) -> CircuitBreaker:
    """The process-wide breaker for an endpoint key (created closed on first use).

    Example:
        >>> get_breaker("http://127.0.0.1:9/v1#m") is get_breaker("http://127.0.0.1:9/v1#m")
        True
    """
    with _registry_lock:
        breaker = _registry.get(key)
        if breaker is None:
            breaker = _registry[key] = CircuitBreaker(key)
        return breaker


def breaker_state(endpoint_key: str, *, sync: bool = True) -> BreakerState:
    """The state this process acts on for an endpoint key.

    Args:
        endpoint_key: A `breaker_key(...)`.
        sync: Read the `circuit_state` row first (forced), as a request would.

    Example:
        >>> reset_breakers()
        >>> breaker_state("http://127.0.0.1:9/v1#m", sync=False)
        'closed'
    """
    breaker = get_breaker(endpoint_key)
    if sync:
        breaker.sync(force=True)
    return breaker.state


def reset_breakers() -> None:
    """Forget every in-process breaker (tests; the `circuit_state` rows are left alone).

    Example:
        >>> reset_breakers()
    """
    with _registry_lock:
        _registry.clear()
