"""Fair share across tenants: a busy tenant's backlog never starves the small tenants, with real
agent runs through a real Prefect server.

The scheduler alone: tests/unit/test_tenant_scheduler.py.
"""

from __future__ import annotations

import asyncio
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
