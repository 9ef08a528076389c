"""Fair share across tenants, the scheduler alone: a tenant alone gets every slot, competing tenants
converge on equal shares, freed slots go round robin among equals, configured caps hold per tenant
and in total, a cancelled waiter gives its turn away (agents.policy.tenants.TenantScheduler).
Real agent runs through a Prefect server: tests/e2e/test_tenants.py."""

from __future__ import annotations

import asyncio

from agents.policy.tenants import TenantScheduler


async def _order_of_admission(scheduler: TenantScheduler, arrivals: list[str]) -> list[str]:
    """Queue runs in `arrivals` order behind a full scheduler; return the order they got in."""
    admitted: list[str] = []
    release = asyncio.Event()

    async def run(tenant: str) -> None:
        async with scheduler.slot(tenant):
            admitted.append(tenant)
            await release.wait()

    blocker = asyncio.ensure_future(run("blocker"))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(run(t)) for t in arrivals]
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(blocker, *waiting)
    return admitted[1:]


def test_freed_slots_go_round_robin_across_tenants() -> None:
    scheduler = TenantScheduler(total=1, per_tenant=1)
    arrivals = ["big"] * 5 + ["a", "b"]
    order = asyncio.run(_order_of_admission(scheduler, arrivals))
    # FIFO would admit all five "big" runs first; fair share interleaves the tenants.
    assert order[:4] == ["big", "a", "b", "big"]
    assert sorted(order) == sorted(arrivals)


def test_caps_hold_per_tenant_and_in_total() -> None:
    scheduler = TenantScheduler(total=5, per_tenant=3, overrides={"small": 1})
    peaks: dict[str, int] = {}
    peak_total = 0

    async def run(tenant: str) -> None:
        nonlocal peak_total
        async with scheduler.slot(tenant):
            peaks[tenant] = max(peaks.get(tenant, 0), scheduler.in_flight(tenant))
            peak_total = max(peak_total, scheduler.in_flight())
            await asyncio.sleep(0.002)

    async def main() -> None:
        await asyncio.gather(*(run(t) for t in ["big"] * 20 + ["small"] * 6 + ["mid"] * 10))

    asyncio.run(main())
    assert peaks["big"] == 3 and peaks["small"] == 1
    assert 2 <= peaks["mid"] <= 3
    assert peak_total == 5
    assert scheduler.in_flight() == 0


def test_a_cancelled_waiter_gives_its_turn_away() -> None:
    scheduler = TenantScheduler(total=1, per_tenant=1)

    async def main() -> list[str]:
        admitted: list[str] = []
        gate = asyncio.Event()

        async def run(tenant: str) -> None:
            async with scheduler.slot(tenant):
                admitted.append(tenant)
                await gate.wait()

        first = asyncio.ensure_future(run("a"))
        await asyncio.sleep(0)
        doomed = asyncio.ensure_future(run("b"))
        last = asyncio.ensure_future(run("c"))
        await asyncio.sleep(0)
        doomed.cancel()
        gate.set()
        await asyncio.gather(first, last)
        return admitted

    assert asyncio.run(main()) == ["a", "c"]
    assert scheduler.in_flight() == 0


async def _peaks_of(
    scheduler: TenantScheduler, batches: dict[str, int], hold: float
) -> dict[str, int]:
    """Run `batches` (tenant -> runs) at once, each run holding its slot `hold` seconds; return
    the most runs each tenant had in flight."""
    peaks: dict[str, int] = {}

    async def run(tenant: str) -> None:
        async with scheduler.slot(tenant):
            peaks[tenant] = max(peaks.get(tenant, 0), scheduler.in_flight(tenant))
            await asyncio.sleep(hold)

    await asyncio.gather(*(run(t) for t, n in batches.items() for _ in range(n)))
    assert scheduler.in_flight() == 0
    return peaks


def test_a_tenant_alone_gets_every_slot() -> None:
    # Work-conserving: no per-tenant share applies when nobody else is waiting.
    peaks = asyncio.run(_peaks_of(TenantScheduler(total=64), {"alone": 64}, 0.01))
    assert peaks == {"alone": 64}


def test_competing_tenants_converge_on_equal_shares() -> None:
    scheduler = TenantScheduler(total=8)

    async def main() -> tuple[int, int]:
        release = asyncio.Event()
        shares: list[tuple[int, int]] = []

        async def run(tenant: str) -> None:
            async with scheduler.slot(tenant):
                await release.wait()
                shares.append((scheduler.in_flight("early"), scheduler.in_flight("late")))

        early = [asyncio.ensure_future(run("early")) for _ in range(40)]
        await asyncio.sleep(0)
        assert scheduler.in_flight("early") == 8  # alone: it took every slot
        late = [asyncio.ensure_future(run("late")) for _ in range(40)]
        await asyncio.sleep(0)
        release.set()
        await asyncio.gather(*early, *late)
        # While both still had runs queued, freed slots went to the tenant with fewer in flight.
        return shares[12]

    early_share, late_share = asyncio.run(main())
    assert (early_share, late_share) == (4, 4)


def test_a_configured_cap_still_holds() -> None:
    scheduler = TenantScheduler(total=16, per_tenant=None, overrides={"capped": 3})
    peaks = asyncio.run(_peaks_of(scheduler, {"capped": 20, "free": 20}, 0.005))
    assert peaks["capped"] == 3
    assert peaks["free"] == 13  # work-conserving: it fills every slot "capped" may not take
    assert asyncio.run(_peaks_of(TenantScheduler(total=16, per_tenant=5), {"t": 20}, 0.005)) == {
        "t": 5
    }
