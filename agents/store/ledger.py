"""Ledger: the `action_record` table that lets an action with side effects run at most once.

Protocol, per action step: derive a stable `idempotency_key(...)`; `claim(key, ...)` it in its
own committed transaction *before* acting; act (passing the key to the outside system when it
accepts one); `complete(key, result)` right after. A claim that finds a `completed` row returns
it, so the caller reuses the stored result instead of acting again. A claim that finds a row still
`started` means an earlier attempt crashed between acting and recording: the action is *in doubt*;
its `attempts` goes up and the caller retries with the same key (which the outside system can
deduplicate).

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

import hashlib
import json
from typing import Any

from sqlalchemy import update
from sqlalchemy.exc import IntegrityError
from sqlmodel import col

from agents.store._convert import require_tenant, to_json_value
from agents.store.engine import session
from agents.store.tables import ActionRecord, utcnow

__all__ = ["COMPLETED", "STARTED", "claim", "complete", "get", "idempotency_key"]

STARTED = "started"
COMPLETED = "completed"


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
    url: str | None = None,
) -> ActionRecord:
    """Claim an action before running it; return the ledger row as it now stands.

    Inserts a `started` row (attempts 1) in its own committed transaction. If the key is
    already there, returns that row: `completed` rows unchanged (do not act again; reuse
    `result`), `started` rows with `attempts` incremented (in doubt: act again with this key).
    Safe under concurrent claims from several processes.

    Args:
        key: from `idempotency_key(...)`.
        tenant: the tenant (must match an existing row's).
        agent: the agent's name.
        subject: the subject, None for none.
        run_key: the run's stable key.
        step: the action step's name.
        agent_run_id: the `agent_run.id` of the claiming run (kept from the first claim).
        url: database URL; None means the settings' URL.

    Raises:
        ValueError: the key exists for another tenant.

    Example:
        >>> k = idempotency_key("acme", "a", None, "r", "s")
        >>> claim(k, tenant="acme", agent="a", subject=None, run_key="r", step="s",
        ...       agent_run_id=None, url="sqlite://").status
        'started'
    """
    require_tenant(tenant)
    record = ActionRecord(
        idempotency_key=key,
        tenant=tenant,
        agent=agent,
        subject=subject or "",
        run_key=run_key,
        step=step,
        status=STARTED,
        attempts=1,
        agent_run_id=agent_run_id,
        started_at=utcnow(),
    )
    try:
        with session(url) as s:
            s.add(record)
        return record
    except IntegrityError:
        pass
    with session(url) as s:
        s.exec(
            update(ActionRecord)
            .where(
                col(ActionRecord.idempotency_key) == key,
                col(ActionRecord.tenant) == tenant,
                col(ActionRecord.status) == STARTED,
            )
            .values(attempts=col(ActionRecord.attempts) + 1)
        )
        existing = s.get(ActionRecord, key)
    if existing is None:  # pragma: no cover - only if deleted between the two statements
        raise RuntimeError(f"Action record {key!r} vanished while being claimed.")
    if existing.tenant != tenant:
        raise ValueError(f"Idempotency key {key!r} belongs to another tenant.")
    return existing


def complete(key: str, result_json: Any, *, url: str | None = None) -> None:
    """Record that a claimed action ran, with its JSON result.

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
    with session(url) as s:
        result = s.exec(
            update(ActionRecord)
            .where(col(ActionRecord.idempotency_key) == key)
            .values(status=COMPLETED, result=data, completed_at=utcnow())
        )
        if not result.rowcount:
            raise LookupError(f"No action claimed under idempotency key {key!r}.")


def get(key: str, *, url: str | None = None) -> ActionRecord | None:
    """The ledger row for a key, or None.

    Example:
        >>> get("0" * 64, url="sqlite://") is None
        True
    """
    with session(url) as s:
        return s.get(ActionRecord, key)
