"""`stalwart tenants`: per-tenant run caps that hold across every worker (Prefect limits)."""

from __future__ import annotations

import typer
from prefect.utilities.asyncutils import run_coro_as_sync

from agents.cli._utilities import console, exit_with_error

tenants_app = typer.Typer(
    help="Per-tenant concurrency across workers (Prefect global concurrency limits).",
    no_args_is_help=True,
)


@tenants_app.command("limit")
def limit_command(
    tenant: str = typer.Argument(..., help="The tenant (client project)."),
    runs: int = typer.Argument(..., min=1, help="Agent runs of this tenant in flight at once."),
) -> None:
    """Cap a tenant's agent runs in flight on all workers together.

    Creates or changes the Prefect global concurrency limit `tenant:<TENANT>`; every batch of
    that tenant then holds one of its slots per run. The per-process share (and
    STALWART_TENANT_CONCURRENCY, when set) applies as well.
    """
    from agents.policy.tenants import set_server_limit

    try:
        run_coro_as_sync(set_server_limit(tenant, runs))
    except Exception as exc:
        exit_with_error(f"could not set the limit of tenant {tenant!r}: {exc}")
    console.print(f"tenant {tenant!r}: at most {runs} runs in flight across workers")


@tenants_app.command("limits")
def limits_command() -> None:
    """List the tenants' cross-worker caps."""
    from prefect.client.orchestration import get_client

    from agents.policy.tenants import SERVER_LIMIT_PREFIX

    async def read() -> list[tuple[str, int, int]]:
        async with get_client() as client:
            limits = await client.read_global_concurrency_limits(limit=200, offset=0)
        return [
            (limit.name.removeprefix(SERVER_LIMIT_PREFIX), limit.limit, limit.active_slots)
            for limit in limits
            if limit.name.startswith(SERVER_LIMIT_PREFIX)
        ]

    found: list[tuple[str, int, int]] = run_coro_as_sync(read()) or []
    for tenant, runs, active in sorted(found):
        console.print(f"{tenant}  limit {runs}  in flight {active}")
