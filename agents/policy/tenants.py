"""Fair admission of agent runs across tenants: one busy tenant never starves the others, and a
tenant alone is never held back.

Two layers, both keyed by tenant:

- **In one process** (`TenantScheduler`): at most `STALWART_MAX_CONCURRENCY` agent runs are in
  flight. Sharing is work-conserving: a tenant alone may fill every slot its batch asked for;
  only when tenants compete does a freed slot go to the waiting tenant with the fewest runs in
  flight (round robin among equals), so competing tenants converge on equal shares instead of
  the oldest queue winning. A hard cap per tenant applies only when configured:
  `STALWART_TENANT_CONCURRENCY` for every tenant, `STALWART_TENANT_LIMITS` for some.
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
    """Work-conserving admission across tenants, with a total cap and optional caps per tenant.

    Args:
        total: Runs in flight at once, all tenants together.
        per_tenant: A hard cap on one tenant's runs in flight; None: no cap of its own (the
            tenant shares the total with whoever competes for it).
        overrides: Per-tenant hard caps that replace `per_tenant`.

    Example:
        >>> TenantScheduler(total=8, per_tenant=2, overrides={"big": 1}).limit_of("big")
        1
    """

    def __init__(
        self,
        total: int,
        per_tenant: int | None = None,
        overrides: Mapping[str, int] | None = None,
    ) -> None:
        self.total = max(1, int(total))
        self.per_tenant = None if per_tenant is None else max(1, int(per_tenant))
        self.overrides = {k: max(1, int(v)) for k, v in (overrides or {}).items()}
        self._tenants: dict[str, _Tenant] = {}
        self._turns: deque[str] = deque()  # tenants with waiters, in round-robin order
        self._running = 0

    def limit_of(self, tenant: str) -> int:
        """The cap in force for `tenant`."""
        cap = self.overrides.get(tenant, self.per_tenant)
        return self.total if cap is None else min(self.total, cap)

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
        """Give free slots to waiting tenants: each to the tenant with the fewest runs in flight
        (max-min fairness), the earliest in round-robin order among equals."""
        while self._running < self.total:
            chosen = self._next_turn()
            if chosen is None:
                return
            state = self._tenants[chosen]
            state.waiters.popleft().set_result(None)
            state.running += 1
            self._running += 1
            self._turns.remove(chosen)
            if state.waiters:
                self._turns.append(chosen)  # its next run waits behind the other tenants

    def _next_turn(self) -> str | None:
        """The waiting tenant that gets the next slot, or None when none may take one."""
        chosen: str | None = None
        fewest = 0
        for tenant in list(self._turns):
            state = self._tenants[tenant]
            while state.waiters and state.waiters[0].done():  # cancelled while queued
                state.waiters.popleft()
            if not state.waiters:
                self._turns.remove(tenant)
                continue
            if state.running >= state.limit:
                continue
            if chosen is None or state.running < fewest:
                chosen, fewest = tenant, state.running
        return chosen


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
