"""Fair admission of agent runs across tenants: one busy tenant never starves the others.

Two layers, both keyed by tenant:

- **In one process** (`TenantScheduler`): at most `STALWART_MAX_CONCURRENCY` agent runs are in
  flight, at most `STALWART_TENANT_CONCURRENCY` of them per tenant (overrides per tenant in
  `STALWART_TENANT_LIMITS`), and a freed slot goes to the next *tenant* in round-robin order,
  not to the oldest waiting run. A tenant that queued 500 runs therefore waits its turn behind
  a tenant that queued 10, instead of the other way round.
- **Across workers** (`server_limit`): when a Prefect global concurrency limit named
  `tenant:<tenant>` exists (`stalwart tenants limit acme 8`), each run also holds one of its slots,
  so the cap holds however many workers pick up that tenant's flow runs. No such limit: no API
  call per run (an acquisition costs ~45 ms on the server, so it is opt-in).

Example:
    >>> import asyncio
    >>> async def demo() -> int:
    ...     scheduler = TenantScheduler(total=2, per_tenant=1)
    ...     async with scheduler.slot("acme"):
    ...         return scheduler.in_flight("acme")
    >>> asyncio.run(demo())
    1
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import deque
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field

from agents.settings import get_current_settings

#: Prefix of the Prefect global concurrency limit that caps a tenant across workers.
SERVER_LIMIT_PREFIX = "tenant:"


@dataclass
class _Tenant:
    limit: int
    running: int = 0
    waiters: deque[asyncio.Future[None]] = field(default_factory=deque)


class TenantScheduler:
    """Round-robin admission across tenants, with a total cap and a cap per tenant.

    Args:
        total: Runs in flight at once, all tenants together.
        per_tenant: Runs in flight at once for one tenant.
        overrides: Per-tenant caps that replace `per_tenant`.

    Example:
        >>> TenantScheduler(total=8, per_tenant=2, overrides={"big": 1}).limit_of("big")
        1
    """

    def __init__(
        self, total: int, per_tenant: int, overrides: Mapping[str, int] | None = None
    ) -> None:
        self.total = max(1, int(total))
        self.per_tenant = max(1, int(per_tenant))
        self.overrides = {k: max(1, int(v)) for k, v in (overrides or {}).items()}
        self._tenants: dict[str, _Tenant] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in round-robin order
        self._running = 0

    def limit_of(self, tenant: str) -> int:
        """The cap in force for `tenant`."""
        return min(self.total, self.overrides.get(tenant, self.per_tenant))

    def in_flight(self, tenant: str | None = None) -> int:
        """Runs holding a slot: of `tenant`, or of all tenants."""
        if tenant is None:
            return self._running
        state = self._tenants.get(tenant)
        return state.running if state else 0

    def _state(self, tenant: str) -> _Tenant:
        state = self._tenants.get(tenant)
        if state is None:
            state = self._tenants[tenant] = _Tenant(limit=self.limit_of(tenant))
        return state

    @contextlib.asynccontextmanager
    async def slot(self, tenant: str) -> AsyncIterator[None]:
        """Hold one run slot of `tenant` for the duration of the block."""
        await self._acquire(tenant)
        try:
            yield
        finally:
            self._release(tenant)

    async def _acquire(self, tenant: str) -> None:
        state = self._state(tenant)
        if not state.waiters and state.running < state.limit and self._running < self.total:
            state.running += 1
            self._running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        state.waiters.append(waiter)
        if tenant not in self._turns:
            self._turns.append(tenant)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._release(tenant)  # granted just as we were cancelled: hand it on
            else:
                with contextlib.suppress(ValueError):
                    state.waiters.remove(waiter)
            raise

    def _release(self, tenant: str) -> None:
        state = self._tenants[tenant]
        state.running -= 1
        self._running -= 1
        self._grant()

    def _grant(self) -> None:
        """Give free slots to waiting tenants, one run per tenant per turn."""
        skipped = 0
        while self._turns and self._running < self.total and skipped < len(self._turns):
            tenant = self._turns[0]
            state = self._tenants[tenant]
            while state.waiters and state.waiters[0].done():  # cancelled while queued
                state.waiters.popleft()
            if not state.waiters:
                self._turns.popleft()
                continue
            if state.running >= state.limit:
                self._turns.rotate(-1)
                skipped += 1
                continue
            state.waiters.popleft().set_result(None)
            state.running += 1
            self._running += 1
            skipped = 0
            self._turns.rotate(-1)  # next turn goes to the next tenant
            if not state.waiters:
                self._turns.remove(tenant)


_schedulers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, TenantScheduler] = (
    weakref.WeakKeyDictionary()
)


def get_scheduler() -> TenantScheduler:
    """The scheduler of the running event loop (one per loop: its futures belong to it).

    It is built from the settings in force the first time a loop asks.
    """
    loop = asyncio.get_running_loop()
    scheduler = _schedulers.get(loop)
    if scheduler is None:
        settings = get_current_settings()
        scheduler = TenantScheduler(
            total=settings.max_concurrency,
            per_tenant=settings.tenant_concurrency,
            overrides=settings.tenant_limits,
        )
        _schedulers[loop] = scheduler
    return scheduler


def reset_schedulers() -> None:
    """Forget every loop's scheduler, so the next run reads the settings again (tests)."""
    _schedulers.clear()


async def server_limit_name(tenant: str) -> str | None:
    """The name of the Prefect global concurrency limit capping `tenant`, if one exists.

    One API read per batch; the runner then holds a slot of it per run.
    """
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    name = f"{SERVER_LIMIT_PREFIX}{tenant}"
    try:
        async with get_client() as client:
            limit = await client.read_global_concurrency_limit_by_name(name)
    except ObjectNotFound:
        return None
    return name if limit.active else None


async def set_server_limit(tenant: str, runs: int) -> None:
    """Create or change the cross-worker cap of `tenant` (`stalwart tenants limit`)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        await client.upsert_global_concurrency_limit_by_name(
            f"{SERVER_LIMIT_PREFIX}{tenant}", limit=runs
        )


@contextlib.asynccontextmanager
async def run_slot(tenant: str, server_limit: str | None) -> AsyncIterator[None]:
    """Everything one agent run holds while it runs: the local fair slot, then the server's."""
    async with get_scheduler().slot(tenant):
        if server_limit is None:
            yield
            return
        from prefect.concurrency.asyncio import concurrency

        async with concurrency(server_limit, occupy=1, strict=True):
            yield
