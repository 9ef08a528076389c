"""Fair share across tenants: a busy tenant's backlog never starves the small tenants, with real
agent runs through a real Prefect server.

The scheduler alone: tests/unit/test_tenant_scheduler.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import pytest

from agents import Agent, RunContext, RunResult
from agents.execution.runner import runner_for
from agents.policy.tenants import reset_schedulers
from agents.settings import temporary_settings

# -- real agent runs through Prefect ------------------------------------------------------------

fair = Agent("fair-share", description="One cheap step: measures admission order only.")


_in_flight: dict[str, int] = {}
_peaks: dict[str, int] = {}


@fair.learning
async def note(raw: dict[str, Any], context: RunContext) -> None:
    tenant = context.tenant
    _in_flight[tenant] = _in_flight.get(tenant, 0) + 1
    _peaks[tenant] = max(_peaks.get(tenant, 0), _in_flight[tenant])
    try:
        await asyncio.sleep(0.1)  # a model call's worth of waiting
    finally:
        _in_flight[tenant] -= 1


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.usefixtures("on_prefect_server", "sqlite_url")
def test_small_tenants_finish_before_the_big_backlog() -> None:
    """One tenant submits 500 runs, then nine submit 10 each: the nine finish long before it.

    8 slots in the process, at most 4 per tenant, freed slots handed out round-robin. A FIFO
    queue would run the 500 first (their runs were queued first); the fair share lets the small
    tenants through while the big tenant still has most of its backlog to go.
    """
    finished: dict[str, list[float]] = {}

    def recorder(tenant: str) -> Any:
        def on_result(index: int, result: RunResult) -> None:
            finished.setdefault(tenant, []).append(time.monotonic())

        return on_result

    async def main() -> dict[str, list[RunResult]]:
        compiled = runner_for(fair.compile())
        big = asyncio.ensure_future(
            compiled.arun_batch(
                [{"raw": {"n": i}} for i in range(500)],
                tenant="big",
                concurrency=64,
                on_result=recorder("big"),
            )
        )
        while not _in_flight.get("big"):  # the big tenant's backlog is queued and running
            await asyncio.sleep(0.05)
        small = [
            compiled.arun_batch(
                [{"raw": {"n": i}} for i in range(10)],
                tenant=f"small-{k}",
                concurrency=64,
                on_result=recorder(f"small-{k}"),
            )
            for k in range(9)
        ]
        results = await asyncio.wait_for(asyncio.gather(big, *small), timeout=240)
        return {"big": results[0], **{f"small-{k}": r for k, r in enumerate(results[1:])}}

    reset_schedulers()
    try:
        with temporary_settings(max_concurrency=8, tenant_concurrency=4):
            results = asyncio.run(main())
    finally:
        reset_schedulers()

    assert all(r.status == "completed" for rs in results.values() for r in rs)
    big_done = sorted(finished["big"])
    assert len(big_done) == 500
    last_small = max(max(times) for tenant, times in finished.items() if tenant != "big")
    big_left = sum(1 for t in big_done if t > last_small)
    # The small runs need ~2.5 s of the 4 free slots; the big backlog needs 500 x 0.1 s / 4 =
    # 12.5 s. Starting a flow run costs 0.5-3 s under load, so a good part must remain.
    assert big_left >= 100, f"only {big_left} big runs were left when the small tenants finished"
    assert _peaks["big"] == 4
    assert all(_peaks[f"small-{k}"] <= 4 for k in range(9))


@pytest.mark.postgres
@pytest.mark.usefixtures("on_prefect_server", "sqlite_url")
def test_a_server_side_tenant_limit_caps_runs_across_batches() -> None:
    """`stalwart tenants limit T N` makes every batch of T hold a server slot per run."""
    from typer.testing import CliRunner

    from agents.cli import app

    tenant = "capped-on-server"
    done = CliRunner().invoke(app, ["tenants", "limit", tenant, "2"])
    assert done.exit_code == 0, done.output
    listed = CliRunner().invoke(app, ["tenants", "limits"])
    assert f"{tenant}  limit 2" in listed.output

    async def main() -> list[list[RunResult]]:
        compiled = runner_for(fair.compile())
        # Two batches at once, as two workers would run them; locally each could run 8.
        return list(
            await asyncio.gather(
                *(
                    compiled.arun_batch(
                        [{"raw": {"batch": b, "n": i}} for i in range(6)],
                        tenant=tenant,
                        concurrency=8,
                    )
                    for b in range(2)
                )
            )
        )

    reset_schedulers()
    try:
        with temporary_settings(max_concurrency=16, tenant_concurrency=8):
            batches = asyncio.run(main())
    finally:
        reset_schedulers()
    assert all(r.status == "completed" for batch in batches for r in batch)
    assert _peaks[tenant] <= 2


# -- work-conserving: the caller's concurrency is what a tenant alone gets ----------------------

wide = Agent("wide-share", description="One step that waits for its peers: counts runs in flight.")
_wide_in_flight: dict[str, int] = {}
_wide_peaks: dict[str, int] = {}
_snapshots: list[tuple[int, int]] = []
_everyone_in: asyncio.Event | None = None
_wide_target = 0


@wide.learning
async def wait_for_peers(raw: dict[str, Any], context: RunContext) -> None:
    tenant = context.tenant
    _wide_in_flight[tenant] = _wide_in_flight.get(tenant, 0) + 1
    _wide_peaks[tenant] = max(_wide_peaks.get(tenant, 0), _wide_in_flight[tenant])
    _snapshots.append((_wide_in_flight.get("left", 0), _wide_in_flight.get("right", 0)))
    try:
        if _everyone_in is not None:
            if sum(_wide_in_flight.values()) >= _wide_target:
                _everyone_in.set()
            # Held until every admitted run is in (bounded): the peak is then the admission cap,
            # not an accident of how fast Prefect starts task runs.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(_everyone_in.wait(), timeout=5.0)
        else:
            await asyncio.sleep(0.15)
    finally:
        _wide_in_flight[tenant] -= 1


def _reset_wide(target: int, barrier: bool) -> None:
    global _everyone_in, _wide_target
    _wide_in_flight.clear()
    _wide_peaks.clear()
    _snapshots.clear()
    _everyone_in = asyncio.Event() if barrier else None
    _wide_target = target


@pytest.mark.postgres
@pytest.mark.usefixtures("on_prefect_server", "sqlite_url")
def test_a_tenant_alone_has_every_run_it_asked_for_in_flight() -> None:
    """`batch(concurrency=64)` on one tenant, default settings: 64 runs in flight at once."""

    async def main() -> list[RunResult]:
        _reset_wide(64, barrier=True)
        return await runner_for(wide.compile()).arun_batch(
            [{"raw": {"n": i}} for i in range(64)], tenant="alone", concurrency=64
        )

    reset_schedulers()
    try:
        results = asyncio.run(main())
    finally:
        reset_schedulers()
    assert [r.status for r in results] == ["completed"] * 64
    assert _wide_peaks["alone"] == 64


@pytest.mark.postgres
@pytest.mark.usefixtures("on_prefect_server", "sqlite_url")
def test_competing_tenants_share_the_process_equally() -> None:
    """16 slots; tenant `left` fills them with a long backlog, then `right` arrives: freed slots
    go to `right` until both hold about half."""

    async def main() -> dict[str, list[RunResult]]:
        _reset_wide(0, barrier=False)
        compiled = runner_for(wide.compile())
        left = asyncio.ensure_future(
            compiled.arun_batch(
                [{"raw": {"n": i}} for i in range(400)], tenant="left", concurrency=16
            )
        )
        while _wide_in_flight.get("left", 0) < 12:  # left alone: it takes the slots
            await asyncio.sleep(0.02)
        right = compiled.arun_batch(
            [{"raw": {"n": i}} for i in range(80)], tenant="right", concurrency=16
        )
        done = await asyncio.wait_for(asyncio.gather(left, right), timeout=120)
        return {"left": done[0], "right": done[1]}

    reset_schedulers()
    try:
        with temporary_settings(max_concurrency=16):
            results = asyncio.run(main())
    finally:
        reset_schedulers()
    assert all(r.status == "completed" for rs in results.values() for r in rs)
    assert _wide_peaks["left"] >= 12
    # Under contention both held a fair part of the 16 slots at the same time.
    assert any(left >= 6 and right >= 6 for left, right in _snapshots), _snapshots[-40:]
    assert max(left + right for left, right in _snapshots) <= 16
