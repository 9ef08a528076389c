"""`stalwart decisions` (read the decision log) and `stalwart prune` (the retention job)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import typer
from rich import box
from rich.table import Table
from rich.text import Text

from agents.cli._utilities import console, err_console, exit_with_error
from agents.declare.decision import LadderPath
from agents.errors import ConfigurationError
from agents.redact import scrub_text
from agents.store.tables import DecisionRecord

__all__ = ["decisions_command", "prune_command"]

# (value key, header). A narrow terminal gets no ids (see --json); a wide one also gets the
# model, the tokens and the cost, just before the rationale.
_COLUMNS = (
    ("created", "created (UTC)"),
    ("agent", "agent"),
    ("step", "step"),
    ("subject", "subject"),
    ("path", "path"),
    ("confidence", "conf"),
    ("tools", "tools"),
    ("rationale", "rationale"),
)
_WIDE_COLUMNS = (("model", "model"), ("tokens", "tokens"), ("cost", "cost"))
_PATH_HELP = f"{', '.join(LadderPath)}."
_ID_WIDTH = 32
_MEDIUM = 120
_WIDE = 160


def _table(rows: list[DecisionRecord], title: str, width: int) -> Table:
    from agents.decisions import summary_rows

    columns = list(_COLUMNS)
    if width >= _WIDE:
        columns[-1:-1] = _WIDE_COLUMNS
    if width >= _MEDIUM:
        columns.append(("id", "id"))
    caption = None if width >= _MEDIUM else "ids: widen the terminal or use --json"
    table = Table(title=title, caption=caption, box=box.SIMPLE_HEAD)
    for key, header in columns:
        table.add_column(
            header,
            min_width=_ID_WIDTH if key == "id" else None,
            overflow="fold",
            no_wrap=key in ("confidence", "id"),
        )
    created = "%Y-%m-%d %H:%M:%S" if width >= _WIDE else "%m-%d %H:%M"
    for row, shown in zip(rows, summary_rows(rows), strict=True):
        values = {
            **shown,
            "created": row.created_at.astimezone(UTC).strftime(created),
            "agent": scrub_text(row.agent),
            "id": row.id,
        }
        table.add_row(*(Text(values[key]) for key, _ in columns))
    return table


def decisions_command(
    tenant: str = typer.Option("default", "--tenant", "-t"),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    step: str | None = typer.Option(None, "--step"),
    since: str | None = typer.Option(None, "--since", help="e.g. 30m, 6h, 1d, 2026-11-01"),
    below: float | None = typer.Option(
        None, "--below", help="Only confidence strictly below this, e.g. 0.7."
    ),
    path: str | None = typer.Option(None, "--path", help=_PATH_HELP),
    subject: str | None = typer.Option(None, "--subject", "-s"),
    limit: int = typer.Option(100, "--limit", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    export: Path | None = typer.Option(
        None, "--export", help="Also write the decisions to this JSONL file.", dir_okay=False
    ),
) -> None:
    """List one tenant's decisions, newest first: why each was made and how sure it was."""
    from agents import decisions

    try:
        rows = decisions.query(
            tenant=tenant,
            agent=agent,
            step=step,
            since=since,
            below=below,
            path=path,
            subject=subject,
            limit=limit,
        )
    except (ValueError, ConfigurationError) as exc:
        exit_with_error(str(exc))
    if export is not None:
        try:
            count = decisions.export_jsonl(rows, export)
        except OSError as exc:
            exit_with_error(f"--export {str(export)!r}: {exc.strerror or exc}")
        # With --json, stdout carries JSON lines only.
        (err_console if as_json else console).print(
            f"wrote {count} decision(s) to {export}", markup=False, soft_wrap=True
        )
        if not as_json:
            return
    if as_json:
        for row in rows:
            typer.echo(json.dumps(decisions.to_dict(row), ensure_ascii=False))
        return
    console.print(_table(rows, f"decisions · tenant {tenant}", console.width))


def prune_command(
    older_than: str = typer.Option(
        ..., "--older-than", help="Delete what is older than this, e.g. 90d, 12h, 2w."
    ),
    batch_size: int = typer.Option(500, "--batch-size", min=1, help="Rows per transaction."),
    tenant: str | None = typer.Option(
        None, "--tenant", "-t", help="Only this tenant (default: every tenant)."
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as one JSON object."),
    caches: bool = typer.Option(
        False, "--caches", help="Also delete old cached model answers and example-use records."
    ),
) -> None:
    """Delete old runs, steps, decisions, step results and completed actions, in small batches."""
    from agents.decisions import parse_duration
    from agents.store.decisions import MAX_BATCH_SIZE, prune

    try:
        age = parse_duration(older_than)
    except ValueError as exc:
        exit_with_error(f"--older-than: {exc}")
    if batch_size > MAX_BATCH_SIZE:
        exit_with_error(f"--batch-size: at most {MAX_BATCH_SIZE}")
    if tenant == "":
        exit_with_error("--tenant: give a tenant name, or leave it out for every tenant")
    cutoff = datetime.now(UTC) - age
    scope = f"tenant {tenant!r}" if tenant is not None else "EVERY tenant"
    if not yes:
        typer.confirm(
            f"Delete the state of {scope} older than {older_than} "
            f"(before {cutoff:%Y-%m-%d %H:%M} UTC)?",
            abort=True,
            err=True,
        )
    try:
        counts = prune(older_than=age, batch_size=batch_size, tenant=tenant, caches=caches)
    except ConfigurationError as exc:
        exit_with_error(str(exc))
    if as_json:
        typer.echo(json.dumps(counts))
        return
    table = Table(title=f"pruned · {scope} · older than {older_than}")
    table.add_column("table")
    table.add_column("deleted", justify="right")
    for name, count in counts.items():
        table.add_row(name, str(count))
    console.print(table)
