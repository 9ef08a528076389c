"""The `stalwart` typer app: wires the command groups together."""

from __future__ import annotations

import json
import os
from datetime import datetime
from typing import Any

import typer
from rich.table import Table

from agents.cli._decisions import decisions_command, prune_command
from agents.cli._eval import eval_command
from agents.cli._feedback import calibrate_command, feedback_command
from agents.cli._reviews import resume_command, review_command, reviews_command
from agents.cli._run import run_command
from agents.cli._shadow import shadow_command
from agents.cli._stats import report_command, stats_command
from agents.cli._tenants import tenants_app
from agents.cli._utilities import console, exit_with_error, load_agent, registered_agents

app = typer.Typer(
    name="stalwart",
    help="Stalwart: production agents as Prefect flows.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="The state database.", no_args_is_help=True)
model_app = typer.Typer(help="The bundled offline model server.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(model_app, name="model")
app.add_typer(tenants_app, name="tenants")
app.command("run")(run_command)
app.command("eval")(eval_command)
app.command("decisions")(decisions_command)
app.command("prune")(prune_command)
app.command("shadow")(shadow_command)
app.command("stats")(stats_command)
app.command("report")(report_command)
app.command("feedback")(feedback_command)
app.command("calibrate")(calibrate_command)
app.command("reviews")(reviews_command)
app.command("review")(review_command)
app.command("resume")(resume_command)


def parse_since(value: str | None) -> datetime | None:
    """`--since` for the CLI: `agents.decisions.parse_since`, exiting with its message."""
    from agents.decisions import parse_since as parse

    try:
        return parse(value)
    except ValueError as exc:
        exit_with_error(str(exc))


def _print_rows(rows: list[dict[str, Any]], columns: list[str], title: str, as_json: bool) -> None:
    if as_json:
        for row in rows:
            console.print(json.dumps(row, default=str), soft_wrap=True)
        return
    table = Table(title=title)
    for column in columns:
        table.add_column(column)
    for row in rows:
        table.add_row(*("" if row.get(c) is None else str(row.get(c)) for c in columns))
    console.print(table)


@app.command("recover")
def recover_command(
    since: str = typer.Option("6h", "--since", help="How far back to look, e.g. 6h, 1d."),
    max_attempts: int = typer.Option(4, "--max-attempts", min=1, help="Flow runs per input."),
    pending_grace: float = typer.Option(
        60.0, "--pending-grace", min=0, help="Seconds a Pending run may have no process."
    ),
    watch: float = typer.Option(
        0.0, "--watch", min=0, help="Look again every this many seconds (0: once)."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Re-submit agent flow runs that crashed, failed or lost their process (safe to repeat)."""
    import dataclasses
    import time

    from agents.decisions import parse_duration
    from agents.recovery import recover

    try:
        window = parse_duration(since)
    except ValueError as exc:
        exit_with_error(str(exc))
    while True:
        found = recover(since=window, max_attempts=max_attempts, pending_grace_s=pending_grace)
        rows = [dataclasses.asdict(r) for r in found]
        if rows or not watch:
            columns = ["flow_run_name", "state", "action", "attempt", "new_flow_run_id", "reason"]
            _print_rows(rows, columns, "Dead agent flow runs", as_json)
        if not watch:
            return
        time.sleep(watch)


@app.command(
    "worker",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def worker_command(ctx: typer.Context) -> None:
    """`prefect worker start` (same options) that reclaims its memory: RSS stays flat.

    `stalwart worker [--reclaim-every 60] --pool stalwart [--limit 5]`; `--help` for the rest.
    """
    from agents.worker import main as worker_main

    worker_main(ctx.args)


@app.command("runs")
def runs_command(
    tenant: str = typer.Option("default", "--tenant", "-t"),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    status: str | None = typer.Option(None, "--status"),
    since: str | None = typer.Option(None, "--since", help="e.g. 1d, 6h, 2026-11-01"),
    limit: int = typer.Option(50, "--limit", min=1),
    history: bool = typer.Option(
        False,
        "--history",
        help="Every execution (reruns and crashed executions too), not each run key's latest.",
    ),
    subject: str | None = typer.Option(
        None, "--subject", "-s", help="Only this subject's runs, each with its evidence."
    ),
    run_id: str | None = typer.Option(None, "--run", help="Only this run, with its evidence."),
    decision: str | None = typer.Option(
        None, "--decision", help="The run that made this decision, with its evidence."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List recent agent runs of one tenant, newest first: one row per run key (its latest
    execution; `--status` filters those), or every execution with `--history`.

    With --subject, --run or --decision, each run comes with the way to its evidence: its flow
    run (a URL when a Prefect server is configured), task run ids, trace id and decision ids.
    """
    from agents.store import queries

    if decision is not None:
        from agents.store.decisions import get_decision

        made = get_decision(decision, tenant=tenant)
        if made is None or made.agent_run_id is None:
            exit_with_error(f"no decision {decision!r} with a run for tenant {tenant!r}")
        run_id = made.agent_run_id
    rows = queries.runs(
        tenant=tenant,
        agent=agent,
        status=status,
        since=parse_since(since),
        limit=limit + 1,
        latest=not history,
        subject=subject,
        run_id=run_id,
    )
    truncated = len(rows) > limit
    rows = rows[:limit]
    data = [r.model_dump(mode="json") for r in rows]
    if subject is None and run_id is None:
        _print_rows(
            data,
            ["started_at", "agent", "subject", "status", "duration_ms", "id", "error"],
            f"runs · tenant {tenant}" + (" · history" if history else ""),
            as_json,
        )
    else:
        _print_evidence(data, tenant=tenant, subject=subject, as_json=as_json)
    if truncated:
        # On stderr: the JSON lines on stdout stay one object each.
        typer.echo(
            f"truncated: the {limit} newest shown, more match (raise --limit or narrow "
            "--since/--status)",
            err=True,
        )


def _print_evidence(
    data: list[dict[str, Any]], *, tenant: str, subject: str | None, as_json: bool
) -> None:
    """Each run with the way to its evidence: flow run (URL), trace, task runs, decisions."""
    from agents.store import queries

    evidence = queries.run_evidence(tenant=tenant, run_ids=[r["id"] for r in data])
    ui_url = _prefect_ui_url()
    for row in data:
        found = evidence[row["id"]]
        flow_run_id = row.get("flow_run_id")
        row["flow_run_url"] = (
            f"{ui_url}/runs/flow-run/{flow_run_id}" if ui_url and flow_run_id else None
        )
        row["task_run_ids"] = found.task_run_ids
        row["decision_ids"] = found.decision_ids
    if as_json:
        _print_rows(data, [], "", True)
        return
    table = Table(title=f"runs · tenant {tenant}" + (f" · subject {subject}" if subject else ""))
    for column in ("run", "evidence"):
        table.add_column(column)
    for row in data:
        head = f"{row['started_at']}\n{row['agent']} · {row['status']}\nrun {row['id']}"
        lines = [f"flow run: {row['flow_run_url'] or row.get('flow_run_id') or '-'}"]
        lines.append(f"trace: {row.get('trace_id') or '- (not traced)'}")
        tasks = row["task_run_ids"]
        lines += [f"task run {step}: {task}" for step, task in tasks.items()] or ["task runs: -"]
        lines.append("decisions: " + (", ".join(row["decision_ids"]) or "-"))
        if row.get("error"):
            lines.append(f"error: {row['error']}")
        table.add_row(head, "\n".join(lines))
    console.print(table)


def _prefect_ui_url() -> str | None:
    """The Prefect UI's base URL: PREFECT_UI_URL, else derived from PREFECT_API_URL; None when
    no Prefect server is configured (a temporary one is gone by the time anyone looks)."""
    from prefect.settings import get_current_settings as prefect_settings

    url = prefect_settings().ui_url
    return str(url).rstrip("/") if url else None


@app.command("memory")
def memory_command(
    tenant: str = typer.Option("default", "--tenant", "-t"),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    subject: str | None = typer.Option(None, "--subject", "-s"),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Show what agents remember, for one tenant."""
    from agents.store import queries

    rows = queries.memory(tenant=tenant, agent=agent, subject=subject)
    data = [r.model_dump(mode="json") for r in rows]
    for row in data:
        if not as_json:
            row["value"] = json.dumps(row["value"])[:80]
    _print_rows(
        data,
        ["agent", "subject", "key", "value", "version", "updated_at"],
        f"memory · tenant {tenant}",
        as_json,
    )


@app.command("graph")
def graph_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    fmt: str = typer.Option("both", "--format", "-f", help="text, mermaid or both."),
) -> None:
    """Print an agent's DAG as text and as a Mermaid diagram."""
    graph = load_agent(agent).compile()
    if fmt in ("text", "both"):
        console.print(graph.text(), markup=False)
    if fmt == "both":
        console.print()
    if fmt in ("mermaid", "both"):
        console.print(graph.mermaid(), markup=False)


@app.command("agents")
def agents_command() -> None:
    """List the agents registered through the `stalwart.agents` entry points."""
    for name, target in sorted(registered_agents().items()):
        console.print(f"{name}  [dim]{target}[/dim]")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Create or upgrade the schema of the state database (Alembic)."""
    from agents.store import current_revision, redact_url, upgrade
    from agents.store.engine import database_url

    url = database_url()  # the state-database block's URL when STALWART_DATABASE_BLOCK is set
    upgrade(url, revision)
    console.print(f"{redact_url(url)} is at revision {current_revision(url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the schema revision of the state database."""
    from agents.store import current_revision, head_revision, redact_url
    from agents.store.engine import database_url

    url = database_url()
    console.print(f"{redact_url(url)}: {current_revision(url)} (head {head_revision()})")


@model_app.command("serve")
def model_serve(
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8089, "--port", "-p"),
    rules: str | None = typer.Option(None, "--rules", help="A JSON rules file."),
) -> None:
    """Serve the OpenAI-compatible offline model (for STALWART_MODEL_URL=http://host:port/v1)."""
    from agents.modelserver import serve

    console.print(f"serving the offline model at http://{host}:{port}/v1")
    serve(host=host, port=port, rules_path=rules)


def main() -> None:
    """Entry point of the `stalwart` script."""
    from agents.execution.recording import prepare_temporary_server
    from agents.observe.logs import install_log_scrubbing

    # The CLI keeps a log file with every step's line (and the terminal quiet, `--verbose`
    # aside), unless the user chose otherwise.
    os.environ.setdefault("STALWART_TASK_STATE_LOGS", "local")
    install_log_scrubbing()
    prepare_temporary_server()
    if not os.environ.get("PREFECT_API_URL"):
        # The temporary server is stopped at exit while its recorder may still be flushing,
        # which it reports as tracebacks (a known Prefect 3.9 race); keep them off the demo.
        os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "CRITICAL")
    app()
