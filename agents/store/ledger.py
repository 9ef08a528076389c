"""Ledger: the `action_record` table that lets an action with side effects run at most once.

Protocol, per action step: derive a stable `idempotency_key(...)`; `claim(key, ...)` it in its
own committed transaction *before* acting; act (passing the key to the outside system when it
accepts one) while `hold(...)` renews the claim's lease; `complete(key, result)` right after.

A claim that finds the key:

* `completed`: returns the row; the caller reuses the stored result instead of acting again;
* `started` by this same owner (a retry inside one execution): in doubt, `attempts` goes up;
* `started` under a lease that has expired: the holder crashed between acting and recording;
  the claim takes the lease over, `attempts` goes up and the caller acts again with the same
  key (which the outside system can deduplicate);
* `started` under another owner's live lease: the same run is executing twice at once (a
  worker presumed dead came back); the claim watches the row until the holder shows it is
  alive (renews or completes: `ActionInProgress`) or its lease runs out (take over).

Every operation survives a lost database connection (`engine.retrying`), and a retried write
never applies twice: a claim whose insert may have committed finds its own row, `complete`
only moves a `started` row to `completed`, `renew` only extends the caller's own lease.

`aclaim` and `acomplete` are the async twins the runtime calls: the claims (completions) of one
event loop made while one transaction runs share the next (`agents.store._group`), each with its
own outcome; the same rules hold, per key.

Leases use the workers' clocks (UTC): keep them in sync (NTP) well within the lease.

Example:
    >>> from agents.store import ledger
    >>> key = ledger.idempotency_key("acme", "triage", "c-1", "run-1", "notify")
    >>> rec = ledger.claim(key, tenant="acme", agent="triage", subject="c-1", run_key="run-1",
    ...                    step="notify", agent_run_id=None, url="sqlite://")
    >>> rec.status, rec.attempts
    ('started', 1)
    >>> ledger.complete(key, {"sent": True}, url="sqlite://")
    >>> ledger.get(key, url="sqlite://").result
    {'sent': True}
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, or_, update
from sqlmodel import col, select

from agents._ids import new_hex
from agents.errors import ActionInProgress
from agents.settings import get_current_settings
from agents.store._convert import require_tenant, to_json_value
from agents.store._group import database_of, shared
from agents.store._writes import conflict_ignoring
from agents.store.engine import reconnecting, retrying, session
from agents.store.tables import ActionRecord, utcnow

__all__ = [
    "COMPLETED",
    "STARTED",
    "aclaim",
    "acomplete",
    "claim",
    "complete",
    "get",
    "hold",
    "idempotency_key",
    "lease_seconds",
    "release",
    "renew",
]

STARTED = "started"
COMPLETED = "completed"
logger = logging.getLogger(__name__)


def lease_seconds(step_timeout: float | None = None) -> float:
    """The lease a claim takes: the `action_lease_seconds` setting, or longer for a step whose
    timeout is longer (its timeout plus a tenth), so a stalled renewal cannot cut it short.

    Example:
        >>> from agents.settings import temporary_settings
        >>> with temporary_settings(action_lease_seconds=15):
        ...     lease_seconds(), lease_seconds(100)
        (15.0, 110.0)
    """
    base = float(get_current_settings().action_lease_seconds)
    if step_timeout:
        return max(base, round(float(step_timeout) * 1.1, 3))
    return base


def idempotency_key(tenant: str, agent: str, subject: str | None, run_key: str, step: str) -> str:
    """The stable key of one action: sha256 of the canonical JSON of its coordinates.

    Args:
        tenant: the tenant.
        agent: the agent's name.
        subject: the subject (None and "" are the same).
        run_key: the run's stable key (the same input gets the same key).
        step: the action step's name.

    Returns:
        64 lowercase hex characters.

    Example:
        >>> len(idempotency_key("acme", "triage", None, "r1", "notify"))
        64
    """
    canonical = json.dumps(
        [tenant, agent, subject or "", run_key, step], ensure_ascii=False, separators=(",", ":")
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:64]


def claim(
    key: str,
    *,
    tenant: str,
    agent: str,
    subject: str | None,
    run_key: str,
    step: str,
    agent_run_id: str | None,
    owner: str | None = None,
    lease: float | None = None,
    url: str | None = None,
) -> ActionRecord:
    """Claim an action before running it; return the ledger row as it now stands.

    Inserts a `started` row (attempts 1, leased to `owner`) in its own committed transaction.
    If the key is already there: a `completed` row comes back unchanged (do not act again;
    reuse `result`); a `started` row of the same owner, or one whose lease has expired, comes
    back leased to `owner` with `attempts` incremented (in doubt: act again with this key). A
    `started` row under another owner's lease is watched until that owner shows it is alive
    (`ActionInProgress`) or the lease expires (taken over). Safe under concurrent claims from
    several processes, and across a lost database connection.

    Args:
        key: from `idempotency_key(...)`.
        tenant: the tenant (must match an existing row's).
        agent: the agent's name.
        subject: the subject, None for none.
        run_key: the run's stable key.
        step: the action step's name.
        agent_run_id: the `agent_run.id` of the claiming run (kept from the first claim).
        owner: who holds the lease: one execution (default: `agent_run_id`, else a new token).
        lease: seconds the lease lasts without renewal (default: `lease_seconds()`).
        url: database URL; None means the settings' URL.

    Raises:
        ActionInProgress: another live execution holds the key.
        ValueError: the key exists for another tenant.

    Example:
        >>> k = idempotency_key("acme", "a", None, "r", "s")
        >>> claim(k, tenant="acme", agent="a", subject=None, run_key="r", step="s",
        ...       agent_run_id=None, url="sqlite://").status
        'started'
    """
    request = _claim_request(key, tenant, agent, subject, run_key, step, agent_run_id, owner, lease)
    resolved = database_of(url)
    (outcome,) = _claim_together(resolved, [request])
    if isinstance(outcome, ActionRecord):
        return outcome
    return _claim_existing(request, resolved, retried_insert=outcome.retried)


async def aclaim(
    key: str,
    *,
    tenant: str,
    agent: str,
    subject: str | None,
    run_key: str,
    step: str,
    agent_run_id: str | None,
    owner: str | None = None,
    lease: float | None = None,
    url: str | None = None,
) -> ActionRecord:
    """Async `claim`: the claims of one event loop made while a claim transaction runs share
    the next one (group commit). Same arguments, outcome and exceptions as `claim`.

    The inserts are shared; a key that is already there (a rerun, a twin execution, a second
    claim of the same key in the group) is then settled on its own, as `claim` settles it.
    """
    request = _claim_request(key, tenant, agent, subject, run_key, step, agent_run_id, owner, lease)
    resolved = database_of(url)
    outcome: ActionRecord | _Exists = await shared(_claim_together, resolved, request)
    if isinstance(outcome, ActionRecord):
        return outcome
    return await _aclaim_existing(request, resolved, retried_insert=outcome.retried)


@dataclass(frozen=True)
class _ClaimRequest:
    key: str
    tenant: str
    agent: str
    subject: str
    run_key: str
    step: str
    agent_run_id: str | None
    owner: str
    seconds: float

    def record(self) -> ActionRecord:
        """The `started` row this claim inserts, leased from now."""
        now = utcnow()
        return ActionRecord(
            idempotency_key=self.key,
            tenant=self.tenant,
            agent=self.agent,
            subject=self.subject,
            run_key=self.run_key,
            step=self.step,
            status=STARTED,
            attempts=1,
            agent_run_id=self.agent_run_id,
            started_at=now,
            lease_owner=self.owner,
            lease_expires_at=now + timedelta(seconds=self.seconds),
        )


@dataclass(frozen=True)
class _Exists:
    """The key was already there when the shared insert ran (`retried`: the insert was
    retried after a lost connection, so the row may be this claim's own)."""

    retried: bool


def _claim_request(
    key: str,
    tenant: str,
    agent: str,
    subject: str | None,
    run_key: str,
    step: str,
    agent_run_id: str | None,
    owner: str | None,
    lease: float | None,
) -> _ClaimRequest:
    require_tenant(tenant)
    return _ClaimRequest(
        key=key,
        tenant=tenant,
        agent=agent,
        subject=subject or "",
        run_key=run_key,
        step=step,
        agent_run_id=agent_run_id,
        owner=owner or agent_run_id or new_hex(),
        seconds=float(lease) if lease is not None else lease_seconds(),
    )


def _insert_claims(url: str, requests: list[_ClaimRequest]) -> list[ActionRecord | None]:
    """Insert a `started` row per request in one transaction; a request whose key is already
    stored (or taken by an earlier request of the list) gets None.

    Rows go in key order, so two processes inserting overlapping groups on PostgreSQL wait for
    each other instead of deadlocking.
    """
    first: dict[str, int] = {}  # each key's first request: the only one that may insert it
    for i, request in enumerate(requests):
        first.setdefault(request.key, i)
    records = {key: requests[i].record() for key, i in first.items()}
    with session(url) as s:
        statement = conflict_ignoring(s, ActionRecord, returning=["idempotency_key"])
        rows = [_values(records[key]) for key in sorted(records)]
        landed = set(s.connection().execute(statement, rows).scalars())
    return [
        records[r.key] if first[r.key] == i and r.key in landed else None
        for i, r in enumerate(requests)
    ]


def _values(record: ActionRecord) -> dict[str, Any]:
    return {name: getattr(record, name) for name in ActionRecord.model_fields}


def _claim_together(url: str, requests: list[_ClaimRequest]) -> list[ActionRecord | _Exists]:
    """Concurrent `aclaim`s: their inserts in one transaction."""
    retried = False

    def insert(retry: bool) -> list[ActionRecord | None]:
        nonlocal retried
        retried = retried or retry
        return _insert_claims(url, requests)

    outcomes = retrying(insert, what="ledger claim")
    return [_Exists(retried) if o is None else o for o in outcomes]


def _claim_existing(request: _ClaimRequest, url: str, *, retried_insert: bool) -> ActionRecord:
    """Settle a claim whose key was already stored: reuse, take over, or watch its holder."""
    steps = _settling(request, url, retried_insert)
    while True:
        step = _step(steps)
        if isinstance(step, ActionRecord):
            return step
        time.sleep(step)


async def _aclaim_existing(
    request: _ClaimRequest, url: str, *, retried_insert: bool
) -> ActionRecord:
    """Async `_claim_existing`: each look in a worker thread, the waits between them on the
    event loop (a claim watching a live holder for seconds holds no thread)."""
    steps = _settling(request, url, retried_insert)
    while True:
        step = await asyncio.to_thread(_step, steps)
        if isinstance(step, ActionRecord):
            return step
        await asyncio.sleep(step)


def _step(steps: Generator[float, None, ActionRecord]) -> float | ActionRecord:
    """Run a settling claim to its next wait (seconds) or its end (the row)."""
    try:
        return next(steps)
    except StopIteration as end:
        return end.value


def _settling(
    request: _ClaimRequest, url: str, retried_insert: bool
) -> Generator[float, None, ActionRecord]:
    """The settling of a claim whose key was already stored, as a generator that yields the
    seconds to wait before looking again and returns the row (or raises)."""
    key, tenant, me, seconds = request.key, request.tenant, request.owner, request.seconds
    # The key exists: someone else's row, or our own insert committed before the connection
    # dropped (then the retry hit the primary key).
    watched: tuple[Any, ...] | None = None
    deadline = time.monotonic() + seconds + 1.0
    poll = min(0.25, seconds / 20)
    while True:
        existing = get(key, url=url)
        if existing is None:  # pragma: no cover - completed rows are pruned, started ones not
            raise RuntimeError(f"Action record {key!r} vanished while being claimed.")
        if existing.tenant != tenant:
            raise ValueError(f"Idempotency key {key!r} belongs to another tenant.")
        if existing.status == COMPLETED:
            if watched is not None:  # it completed while we watched: a live twin acted
                raise ActionInProgress.held(key, watched[0], watched[1])
            return existing
        mine = existing.lease_owner == me
        if mine and retried_insert and existing.attempts == 1:
            return existing  # our own insert, acknowledged late
        expires = existing.lease_expires_at
        expired = expires is None or expires <= utcnow()
        if mine or expired:
            taken = _take_over(existing, me, seconds, url)
            if taken is not None:
                return taken
            continue  # another claimant moved first: look again
        state = (existing.lease_owner, expires, existing.attempts)
        if watched is None:
            watched = state
        elif state != watched:
            raise ActionInProgress.held(key, existing.lease_owner, expires)
        if time.monotonic() >= deadline:
            raise ActionInProgress.held(key, existing.lease_owner, expires)
        yield poll


def _take_over(
    existing: ActionRecord, me: str, seconds: float, url: str | None
) -> ActionRecord | None:
    """Lease a `started` row to `me`, attempts + 1, if nobody changed it since it was read."""
    now = utcnow()
    conditions = [
        col(ActionRecord.idempotency_key) == existing.idempotency_key,
        col(ActionRecord.status) == STARTED,
        col(ActionRecord.attempts) == existing.attempts,
    ]
    if existing.lease_owner is None:
        conditions.append(col(ActionRecord.lease_owner).is_(None))
    else:
        conditions.append(col(ActionRecord.lease_owner) == existing.lease_owner)
    if existing.lease_owner != me:  # someone else's: only once it has expired
        conditions.append(
            or_(
                col(ActionRecord.lease_expires_at).is_(None),
                col(ActionRecord.lease_expires_at) <= now,
            )
        )

    def bump(_retry: bool) -> int | None:
        with session(url) as s:
            attempts = s.exec(
                update(ActionRecord)
                .where(*conditions)
                .values(
                    attempts=col(ActionRecord.attempts) + 1,
                    lease_owner=me,
                    lease_expires_at=expires,
                )
                .returning(col(ActionRecord.attempts))
            ).scalar_one_or_none()
            return None if attempts is None else int(attempts)

    expires = now + timedelta(seconds=seconds)
    attempts = retrying(bump, what="ledger take-over")
    if attempts is None:
        return None
    taken = existing.model_copy(
        update={"attempts": attempts, "lease_owner": me, "lease_expires_at": expires}
    )
    if existing.lease_owner not in (None, me):
        logger.warning(
            "action %s…: the lease of %s expired; taking it over (attempt %d, same key)",
            existing.idempotency_key[:16],
            existing.lease_owner,
            taken.attempts,
        )
    return taken


@reconnecting
def renew(key: str, owner: str, *, lease: float | None = None, url: str | None = None) -> bool:
    """Extend `owner`'s lease on a `started` claim; False if it is no longer theirs.

    Example:
        >>> k = idempotency_key("acme", "a", None, "r-renew", "s")
        >>> _ = claim(k, tenant="acme", agent="a", subject=None, run_key="r-renew", step="s",
        ...           agent_run_id="run-1", url="sqlite://")
        >>> renew(k, "run-1", url="sqlite://"), renew(k, "someone-else", url="sqlite://")
        (True, False)
    """
    seconds = float(lease) if lease is not None else lease_seconds()
    with session(url) as s:
        result = s.exec(
            update(ActionRecord)
            .where(
                col(ActionRecord.idempotency_key) == key,
                col(ActionRecord.status) == STARTED,
                col(ActionRecord.lease_owner) == owner,
            )
            .values(lease_expires_at=utcnow() + timedelta(seconds=seconds))
        )
        return bool(result.rowcount)


@reconnecting
def release(key: str, owner: str, *, url: str | None = None) -> bool:
    """End `owner`'s lease on a `started` claim now (its action failed): the next claim takes
    it over at once, in doubt, instead of waiting for the lease to run out.

    Example:
        >>> k = idempotency_key("acme", "a", None, "r-release", "s")
        >>> _ = claim(k, tenant="acme", agent="a", subject=None, run_key="r-release", step="s",
        ...           agent_run_id="run-1", url="sqlite://")
        >>> release(k, "run-1", url="sqlite://")
        True
    """
    with session(url) as s:
        result = s.exec(
            update(ActionRecord)
            .where(
                col(ActionRecord.idempotency_key) == key,
                col(ActionRecord.status) == STARTED,
                col(ActionRecord.lease_owner) == owner,
            )
            .values(lease_expires_at=utcnow())
        )
        return bool(result.rowcount)


@dataclass(eq=False)
class _Lease:
    """One held lease: renewed by the process's renewer until released or lost."""

    key: str
    owner: str
    seconds: float
    url: str | None
    due: float
    lost: threading.Event = field(default_factory=threading.Event)
    released: bool = False
    renewing: threading.Lock = field(default_factory=threading.Lock)


class _Renewer:
    """One daemon thread per process renews every held lease, each every third of its length.

    A thread, not the event loop, so a busy loop cannot let a lease lapse; one for all leases,
    not one per action (starting a thread per action cost ~12 ms under load, and most actions
    end long before their first renewal is due).
    """

    def __init__(self) -> None:
        self._leases: set[_Lease] = set()
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = 0

    def add(self, lease: _Lease) -> None:
        with self._changed:
            if self._thread is None or self._pid != os.getpid() or not self._thread.is_alive():
                self._pid = os.getpid()
                self._thread = threading.Thread(
                    target=self._run, name="stalwart-lease-renewer", daemon=True
                )
                self._thread.start()
            self._leases.add(lease)
            self._changed.notify()

    def remove(self, lease: _Lease) -> None:
        # Waits for a renewal in flight: after this, nothing extends the lease again (a failed
        # action releases it next, and the release must not be undone).
        with lease.renewing:
            lease.released = True
        with self._changed:
            self._leases.discard(lease)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [lease for lease in self._leases if lease.due <= now]
                if not due:
                    wake = min((lease.due for lease in self._leases), default=now + 60.0)
                    self._changed.wait(timeout=max(0.01, wake - now))
                    continue
            for lease in due:
                self._renew(lease)

    def _renew(self, lease: _Lease) -> None:
        lease.due = time.monotonic() + lease.seconds / 3
        with lease.renewing:
            if lease.released:
                return
            try:
                kept = renew(lease.key, lease.owner, lease=lease.seconds, url=lease.url)
            except Exception as exc:  # the next tick tries again; the lease has slack
                logger.warning("action %s…: lease renewal failed: %s", lease.key[:16], exc)
                return
            if kept:
                return
            lease.lost.set()
        with self._changed:
            self._leases.discard(lease)
        logger.warning("action %s…: lease lost by %s", lease.key[:16], lease.owner)


_renewer = _Renewer()


@contextlib.contextmanager
def hold(
    key: str, owner: str, *, lease: float | None = None, url: str | None = None
) -> Iterator[threading.Event]:
    """Keep renewing `owner`'s lease every third of it while the block runs (the action).

    Renewal runs in the process's renewer thread, so a busy event loop cannot let the lease
    lapse. Yields an event that is set if the lease was lost (another execution took it over
    after a stall).

    Example:
        >>> k = idempotency_key("acme", "a", None, "r-hold", "s")
        >>> _ = claim(k, tenant="acme", agent="a", subject=None, run_key="r-hold", step="s",
        ...           agent_run_id="run-1", url="sqlite://")
        >>> with hold(k, "run-1", url="sqlite://") as lost:
        ...     pass
        >>> lost.is_set()
        False
    """
    seconds = float(lease) if lease is not None else lease_seconds()
    held = _Lease(key, owner, seconds, url, due=time.monotonic() + seconds / 3)
    _renewer.add(held)
    try:
        yield held.lost
    finally:
        _renewer.remove(held)


def complete(key: str, result_json: Any, *, url: str | None = None) -> None:
    """Record that a claimed action ran, with its JSON result.

    Only a `started` row becomes `completed`: completing twice (a retry after a lost
    connection) keeps the first result.

    Args:
        key: the claimed key.
        result_json: the action's result (JSON, or a pydantic model).
        url: database URL; None means the settings' URL.

    Raises:
        LookupError: nothing was claimed under this key.
        TypeError: the result is not JSON.

    Example:
        >>> k = idempotency_key("acme", "a", None, "r2", "s")
        >>> _ = claim(k, tenant="acme", agent="a", subject=None, run_key="r2", step="s",
        ...           agent_run_id=None, url="sqlite://")
        >>> complete(k, {"ok": True}, url="sqlite://")
    """
    data = to_json_value(result_json, what=f"Result of action {key!r}")
    (outcome,) = _complete_together(database_of(url), [(key, data)])
    if outcome is not None:
        raise outcome


async def acomplete(key: str, result_json: Any, *, url: str | None = None) -> None:
    """Async `complete`: the completions of one event loop made while a completion transaction
    runs share the next one (group commit). Same arguments and exceptions as `complete`."""
    data = to_json_value(result_json, what=f"Result of action {key!r}")
    await shared(_complete_together, database_of(url), (key, data))  # raises its LookupError


#: A claimed key's `started` row made `completed`, built once (see `_writes._ignoring`).
_COMPLETE = (
    update(ActionRecord)
    .where(
        col(ActionRecord.idempotency_key) == bindparam("done_key"),
        col(ActionRecord.status) == STARTED,
    )
    .values(
        status=COMPLETED,
        result=bindparam("done_result"),
        completed_at=bindparam("done_at"),
    )
)


def _complete_together(url: str, items: list[tuple[str, Any]]) -> list[LookupError | None]:
    """Move each claimed key's `started` row to `completed` with its result, in one
    transaction (key order: no deadlock between overlapping groups); a key never claimed
    gets a `LookupError`."""
    order = sorted(range(len(items)), key=lambda i: items[i][0])

    def finish(_retry: bool) -> set[str]:
        """The keys no `started` row was found for (completed already, or never claimed)."""
        unchanged: set[str] = set()
        with session(url) as s:
            for i in order:
                key, data = items[i]
                result = s.connection().execute(
                    _COMPLETE, {"done_key": key, "done_result": data, "done_at": utcnow()}
                )
                if not result.rowcount:
                    unchanged.add(key)
            if unchanged:
                stored = set(
                    s.exec(
                        select(ActionRecord.idempotency_key).where(
                            col(ActionRecord.idempotency_key).in_(unchanged)
                        )
                    ).all()
                )
                unchanged -= stored
        return unchanged

    missing = retrying(finish, what="ledger complete")
    return [
        LookupError(f"No action claimed under idempotency key {key!r}.") if key in missing else None
        for key, _ in items
    ]


def get(key: str, *, url: str | None = None) -> ActionRecord | None:
    """The ledger row for a key, or None.

    Example:
        >>> get("0" * 64, url="sqlite://") is None
        True
    """
    return _get_together(database_of(url), [key])[0]


async def aget(key: str, *, url: str | None = None) -> ActionRecord | None:
    """Async `get`: the reads of one event loop made while a query runs share the next one
    (a rerun of a batch makes one per cached action; each in a thread cost a hop and held the
    interpreter lock against the loop)."""
    found: ActionRecord | None = await shared(_get_together, database_of(url), key)
    return found


#: The ledger rows of some keys, built once (see `_writes._ignoring`).
_GET = select(ActionRecord).where(
    col(ActionRecord.idempotency_key).in_(bindparam("keys", expanding=True))
)


@reconnecting
def _get_together(url: str, keys: list[str]) -> list[ActionRecord | None]:
    """Concurrent `aget`s: one query."""
    with session(url) as s:
        rows = s.exec(_GET, params={"keys": sorted(set(keys))})
        found = {row.idempotency_key: row for row in rows}
    return [found.get(key) for key in keys]
