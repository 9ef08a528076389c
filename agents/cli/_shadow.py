"""`stalwart shadow`: a candidate model replays a reasoning step's logged decisions."""

from __future__ import annotations

import json

import typer
from rich.table import Table

from agents.cli._utilities import (
    console,
    err_console,
    exit_with_error,
    let_prefect_record,
    load_agent,
    quiet_prefect,
)


def shadow_command(
    agent_name: str = typer.Argument(..., metavar="AGENT", help="Registered name or module:attr."),
    model: str = typer.Option(..., "--model", "-m", help="The candidate model."),
    tenant: str = typer.Option("default", "--tenant", "-t"),
    step: str | None = typer.Option(None, "--step", help="The reasoning step (if several)."),
    since: str = typer.Option("7d", "--since", help="How far back: 7d, 12h, an ISO date."),
    sample: int | None = typer.Option(None, "--sample", "-n", help="Replay at most N."),
    concurrency: int = typer.Option(8, "--concurrency", "-c", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object instead of a table."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show Prefect's lines (one per task run) on the terminal."
    ),
) -> None:
    """Replay logged decisions through a candidate model; no action runs, nothing is logged.

    Reports agreement with the logged decisions, accuracy on the labelled ones, confidence,
    latency and cost deltas, and publishes the table as a Prefect artifact
    (`shadow-<agent>-<step>`) from a flow run named after the agent.
    """
    from prefect import flow
    from prefect.artifacts import acreate_markdown_artifact

    from agents.shadow import ShadowReport, ashadow

    agent = load_agent(agent_name)
    log_file = quiet_prefect("shadow", verbose)
    flow_run_ids: list[str] = []

    @flow(name=f"shadow-{agent.name}", persist_result=False, validate_parameters=False)
    async def shadow_flow() -> ShadowReport:
        from prefect.runtime import flow_run

        flow_run_ids.append(str(flow_run.id))
        report = await ashadow(
            agent,
            model=model,
            tenant=tenant,
            step=step,
            since=since,
            sample=sample,
            concurrency=concurrency,
        )
        await acreate_markdown_artifact(
            markdown=report.markdown(),
            key=f"shadow-{agent.name}-{report.step}".lower().replace("_", "-"),
            description=f"{model} against the log of {agent.name}.{report.step}",
        )
        return report

    try:
        from prefect.utilities.asyncutils import run_coro_as_sync

        report = run_coro_as_sync(shadow_flow())
    except ValueError as exc:
        exit_with_error(str(exc))
    finally:
        let_prefect_record(flow_run_ids)
    assert report is not None
    if as_json:
        payload = {
            "agent": report.agent,
            "step": report.step,
            "tenant": report.tenant,
            "model": report.candidate_model,
            "replayed": len(report.replayed),
            "errors": len(report.cases) - len(report.replayed),
            "agreement": report.agreement,
            "labelled": report.labelled,
            "accuracy_logged": report.accuracy_logged,
            "accuracy_candidate": report.accuracy_candidate,
            "rows": report.rows(),
        }
        console.print(json.dumps(payload), soft_wrap=True)
        return
    table = Table(title=f"shadow {report.agent}.{report.step} · {model} · tenant {tenant}")
    for column in ("measure", "logged", "candidate", "delta"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    for row in report.rows():
        table.add_row(*row)
    console.print(table)
    err_console.print(f"[dim]Prefect log: {log_file}[/dim]")
