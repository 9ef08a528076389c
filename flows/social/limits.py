"""Posting inside the platform's limits with nobody involved: Prefect rate limits plus 429s.

This module owns pacing. Before each request a post takes a slot of two Prefect global rate
limits, one for its account and one for the platform, created (or updated) from the platform's
published limits the first time this process needs them. Prefect's limits are shared by every
worker and process on the same Prefect API, so many concurrent runs stay under the limits
together. Should the platform still answer 429 (it is stricter, or someone else posts), its
`Retry-After` is honoured and the same idempotency key is sent again, a bounded number of times.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass, field

from prefect.client.orchestration import get_client
from prefect.concurrency.asyncio import rate_limit

from flows.social.models import Limit, PostContent, PostReceipt
from flows.social.platform import Platform, PlatformError, RateLimited
from flows.social.settings import SocialSettings, social_settings

logger = logging.getLogger("flows.social")

#: Limits this process has already created or updated, with the values it set.
_ensured: dict[str, tuple[int, float]] = {}
#: When this process may next ask Prefect for a slot, per event loop and limit.
_pacers: dict[tuple[int, str], _Pacer] = {}
#: Creations in flight, per event loop and name.
_pending: dict[tuple[int, str], asyncio.Future[None]] = {}


def limit_names(platform: str, account: str) -> tuple[str, str]:
    """The Prefect rate limits of a post: its account's, then the platform's.

    Example:
        >>> limit_names("simulated-8700", "acct-01")
        ('social:simulated-8700:account:acct-01', 'social:simulated-8700')
    """
    return f"social:{platform}:account:{account}", f"social:{platform}"


async def _upsert(name: str, limit: Limit) -> None:
    wanted = (limit.burst, limit.per_second)
    if _ensured.get(name) == wanted:
        return
    # Runs of one batch share a loop: the first creates the limit, the others wait for it
    # (two creates of one name race in Prefect's API and one fails on its unique name).
    key = (id(asyncio.get_running_loop()), name)
    pending = _pending.get(key)
    if pending is None:
        pending = _pending[key] = asyncio.ensure_future(_create(name, limit))
    try:
        await asyncio.shield(pending)
    finally:
        if pending.done():
            _pending.pop(key, None)
    _ensured[name] = wanted


async def _create(name: str, limit: Limit) -> None:
    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(
            name, limit=limit.burst, slot_decay_per_second=limit.per_second
        )


#: Local spacing is this much wider than the published rate: Prefect rounds decay down.
PACE_MARGIN = 1.05


async def _take_slots(names: tuple[str, ...], limits: tuple[Limit, ...], timeout: float) -> None:
    """Take a slot of every named Prefect rate limit at once, pacing this process first.

    Prefect 3.9 records each refused acquisition on the limit's row, which restarts the clock
    its slots decay by, and the `Retry-After` it answers grows with the refusals: posts that
    poll a full limit keep it full, far below its rate (24 posts at 12/s took 18-35 s here).
    So this process paces itself at the published rates and asks Prefect once per turn for
    both slots in one call. Turns are taken one at a time per limit, each spaced from when the
    previous one was actually taken: booked in advance, turns whose sleeps ended together after
    a stalled event loop went out together, over the platform's burst. Prefect, shared by every
    process and worker, stays the authority: when another process took the slot, it refuses
    and its own `Retry-After` applies.
    """
    loop = asyncio.get_running_loop()
    pacers = [_pacers.setdefault((id(loop), name), _Pacer()) for name in names]
    async with contextlib.AsyncExitStack() as held:
        for pacer in pacers:  # always in the same order (account, then platform): no deadlock
            await held.enter_async_context(pacer.turn)
        wait = max(p.next_at for p in pacers) - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        await rate_limit(list(names), strict=True, timeout_seconds=timeout)
        taken = loop.time()
        for pacer, limit in zip(pacers, limits, strict=True):
            pacer.next_at = taken + PACE_MARGIN / limit.per_second


@dataclass
class _Pacer:
    next_at: float = 0.0
    turn: asyncio.Lock = field(default_factory=asyncio.Lock)


async def ensure_limits(platform: Platform, account: str) -> tuple[str, str]:
    """Create or update the account's and the platform's Prefect rate limits; return names.

    Example:
        >>> await ensure_limits(platform, "acct-01")  # doctest: +SKIP
        ('social:simulated-8700:account:acct-01', 'social:simulated-8700')
    """
    published = await platform.limits()
    names = limit_names(platform.name, account)
    await _upsert(names[0], published.per_account)
    await _upsert(names[1], published.platform)
    return names


async def post_within_limits(
    platform: Platform,
    account: str,
    content: PostContent,
    *,
    idempotency_key: str,
    settings: SocialSettings | None = None,
) -> PostReceipt:
    """Publish one post: wait for both rate limits, post, honour 429s; same key every time.

    Args:
        platform: The platform adapter.
        account: The account to post as.
        content: What to post.
        idempotency_key: The action's stable key; a retry never makes a second post.
        settings: The social settings (default: from the environment).

    Returns:
        The platform's receipt, with `attempts` the number of requests made.

    Raises:
        RateLimited: still refused after `max_attempts` requests.
        PlatformError: still failing after `max_attempts` requests.

    Example:
        >>> await post_within_limits(sim, "acct-01", post, idempotency_key=k)  # doctest: +SKIP
        PostReceipt(post_id='p-000001', ..., attempts=1)
    """
    settings = settings or social_settings()
    published = await platform.limits()
    names = await ensure_limits(platform, account) if settings.prefect_limits else ()
    paces = (published.per_account, published.platform)
    last: PlatformError | None = None
    for attempt in range(1, settings.max_attempts + 1):
        if names:
            await _take_slots(names, paces, settings.acquire_timeout_seconds)
        try:
            receipt = await platform.post(account, content, idempotency_key=idempotency_key)
        except RateLimited as exc:
            last = exc
            wait = min(exc.retry_after, settings.max_wait_seconds)
            logger.info(
                "%s: 429 (%s), attempt %d, waiting %.3f s", account, exc.scope, attempt, wait
            )
        except PlatformError as exc:
            # The post may have landed with its answer lost: the same key makes asking safe.
            last = exc
            wait = min(0.05 * 2**attempt, settings.max_wait_seconds)
            logger.info("%s: %s, attempt %d, waiting %.3f s", account, exc, attempt, wait)
        else:
            return receipt.model_copy(update={"attempts": attempt})
        await asyncio.sleep(wait)
    assert last is not None
    raise last
