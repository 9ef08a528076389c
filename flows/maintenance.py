"""maintenance: the sweeps a long-running deployment needs, run by the `stalwart-maintenance`
deployment of prefect.yaml on the agents' work pool, one schedule per sweep.

* `reviews` (every 5 minutes): expire the pending reviews past their deadline, of every tenant,
  and wake the suspended flow runs of those from a deployment (`agents.reviews.sweep`).
* `recover` (every minute): re-submit the agent flow runs that crashed, failed or lost their
  process (`agents.recovery.recover`).
* `prune` (nightly): delete the state older than `STALWART_RETENTION` (default 90 days), cached
  model answers included (`agents.store.decisions.prune`).

Each sweep is idempotent and two at once are harmless: a review expires by one conditional
UPDATE, a dead run's retry is created under an idempotency key, and prune deletes by id (a row
deleted by the other sweep counts nowhere). Run one by hand:

    python -c "from flows.maintenance import maintenance_flow; maintenance_flow('reviews')"

or `prefect deployment run maintenance/stalwart-maintenance --param task=prune`.
"""

from __future__ import annotations

import logging
from typing import Any, Literal

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError

from agents.durations import parse_timedelta

__all__ = ["Sweep", "maintenance_flow", "sweep_prune", "sweep_recover", "sweep_reviews"]

Sweep = Literal["reviews", "recover", "prune"]


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    """The run logger inside a flow or task run (shown in the UI), else this module's."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


@task(name="sweep-reviews", cache_policy=NO_CACHE, persist_result=False)
def sweep_reviews() -> dict[str, Any]:
    """Expire every pending review past its deadline and wake the flow runs waiting on them.

    Example:
        >>> sweep_reviews.fn()  # doctest: +SKIP
        {'task': 'reviews', 'expired': 0, 'woken': 0}
    """
    from agents.reviews import sweep

    expired = sweep()
    woken = sum(1 for r in expired if r.review_flow_run_id)
    for review in expired:
        _logger().info("review %s (%s, %s) expired", review.id, review.tenant, review.agent)
    _logger().info("reviews: %d expired, %d suspended flow runs woken", len(expired), woken)
    return {"task": "reviews", "expired": len(expired), "woken": woken}


@task(name="sweep-recover", cache_policy=NO_CACHE, persist_result=False)
def sweep_recover(
    since: str = "6h", max_attempts: int = 4, pending_grace_s: float = 60.0
) -> dict[str, Any]:
    """Re-submit the agent flow runs of the last `since` that died (see `agents.recovery`).

    Example:
        >>> sweep_recover.fn(since="1h")  # doctest: +SKIP
        {'task': 'recover', 'resubmitted': 0, 'gave_up': 0, 'new_flow_run_ids': []}
    """
    from agents.recovery import recover

    found = recover(
        since=parse_timedelta(since), max_attempts=max_attempts, pending_grace_s=pending_grace_s
    )
    for r in found:
        _logger().warning(
            "flow run %s (%s, attempt %d) %s %s: %s",
            r.flow_run_name,
            r.state,
            r.attempt,
            r.action,
            r.new_flow_run_id or "",
            r.reason,
        )
    new = [r.new_flow_run_id for r in found if r.new_flow_run_id]
    gave_up = sum(1 for r in found if r.action == "gave up")
    _logger().info("recover: %d dead flow runs re-submitted, %d given up", len(new), gave_up)
    return {"task": "recover", "resubmitted": len(new), "gave_up": gave_up, "new_flow_run_ids": new}


@task(name="sweep-prune", cache_policy=NO_CACHE, persist_result=False)
def sweep_prune(
    retention: str | None = None, batch_size: int = 500, caches: bool = True
) -> dict[str, Any]:
    """Delete the state older than `retention` (default: the `retention` setting).

    Example:
        >>> sweep_prune.fn(retention="90d")  # doctest: +SKIP
        {'task': 'prune', 'older_than': '90 days, 0:00:00', 'deleted': {...}}
    """
    from agents.settings import get_current_settings
    from agents.store.decisions import prune

    older_than = parse_timedelta(retention) if retention else get_current_settings().retention
    deleted = prune(older_than=older_than, batch_size=batch_size, caches=caches)
    _logger().info(
        "prune: %d rows older than %s deleted (%s)",
        sum(deleted.values()),
        older_than,
        ", ".join(f"{table} {n}" for table, n in deleted.items()),
    )
    return {"task": "prune", "older_than": str(older_than), "deleted": deleted}


@flow(name="maintenance", flow_run_name="maintenance-{task}")
def maintenance_flow(
    task: Sweep,
    since: str = "6h",
    max_attempts: int = 4,
    retention: str | None = None,
    batch_size: int = 500,
    caches: bool = True,
) -> dict[str, Any]:
    """Run one sweep (see the module docstring) and return what it did.

    Args:
        task: `reviews`, `recover` or `prune`.
        since: recover: how far back to look for dead agent flow runs (e.g. 6h, 1d).
        max_attempts: recover: flow runs per original run at most.
        retention: prune: delete what is older than this (e.g. 90d); default the
            `retention` setting (`STALWART_RETENTION`).
        batch_size: prune: rows per transaction.
        caches: prune: also delete cached model answers and example-use records.

    Example:
        >>> maintenance_flow("prune", retention="30d")["deleted"]["agent_run"]  # doctest: +SKIP
        0
    """
    if task == "reviews":
        return sweep_reviews()
    if task == "recover":
        return sweep_recover(since=since, max_attempts=max_attempts)
    if task == "prune":
        return sweep_prune(retention=retention, batch_size=batch_size, caches=caches)
    raise ValueError(f"task {task!r}: use reviews, recover or prune")
