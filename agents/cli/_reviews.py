"""`stalwart reviews` (what waits for a person), `stalwart review` (answer one) and
`stalwart resume` (continue the runs whose reviews are answered or expired)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.table import Table

from agents.cli._utilities import (
    console,
    err_console,
    exit_with_error,
    let_prefect_record,
    load_agent,
    quiet_prefect,
)
from agents.errors import ReviewClosed, ReviewNotFound
from agents.store.tables import ReviewRequest

__all__ = ["resume_command", "review_command", "reviews_command"]

#: What a reviewer sees of a request (never `run_input`: the raw input stays in the store).
SHOWN = (
    "id",
    "agent",
    "step",
    "subject",
    "state",
    "confidence",
    "proposed",
    "rationale",
    "inputs",
    "created_at",
    "deadline_at",
    "verdict",
    "reviewer",
    "correction",
)


def shown(review: ReviewRequest) -> dict[str, Any]:
    """A review as the CLI prints it: JSON-ready, without the raw run input."""
    data = review.model_dump(mode="json")
    return {key: data.get(key) for key in SHOWN}


def reviews_command(
    tenant: str = typer.Option(..., "--tenant", "-t", help="Whose reviews (required)."),
    agent: str | None = typer.Option(None, "--agent", "-a"),
    state: str = typer.Option(
        "pending", "--state", help="pending (default), answered, expired or all."
    ),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List the decisions waiting for a person (oldest first), with what was proposed."""
    from agents import reviews

    if state not in ("pending", "answered", "expired", "all"):
        exit_with_error(f"--state {state!r}: use pending, answered, expired or all")
    if state == "pending":
        rows = reviews.pending(tenant=tenant, agent=agent)
    else:
        chosen = None if state == "all" else state
        rows = reviews.list_reviews(tenant=tenant, agent=agent, state=chosen)  # type: ignore[arg-type]
    if as_json:
        for row in rows:
            console.print(json.dumps(shown(row), default=str), soft_wrap=True)
        return
    table = Table(title=f"reviews · tenant {tenant} · {state}", box=box.SIMPLE_HEAD)
    for header in ("id", "agent", "step", "subject", "conf", "proposed", "rationale", "due (UTC)"):
        table.add_column(header, overflow="fold", no_wrap=header in ("id", "conf"))
    for row in rows:
        proposed = {
            k: v for k, v in (row.proposed or {}).items() if k not in ("confidence", "rationale")
        }
        table.add_row(
            row.id,
            row.agent,
            row.step,
            row.subject or "",
            f"{row.confidence:.2f}" if row.confidence is not None else "",
            json.dumps(proposed, default=str)[:200],
            (row.rationale or "")[:120],
            f"{row.deadline_at:%Y-%m-%d %H:%M}",
        )
    console.print(table)
    if rows and state == "pending":
        console.print(
            f"Answer: stalwart review ID --tenant {tenant} --approve | --reject | "
            "--correct '{\"field\": ...}' --by NAME"
        )


def review_command(
    review_id: str = typer.Argument(..., help="The review's id (see `stalwart reviews`)."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="The review's tenant (required)."),
    approve: bool = typer.Option(False, "--approve", help="Take the proposed decision."),
    reject: bool = typer.Option(False, "--reject", help="Refuse it: the safe default applies."),
    correct: str | None = typer.Option(
        None, "--correct", help="The corrected fields, as a JSON object."
    ),
    by: str = typer.Option(..., "--by", help="Who answers (kept in the decision log)."),
) -> None:
    """Answer one review: --approve, --reject or --correct JSON (exactly one), --by NAME."""
    from agents import reviews

    chosen = [name for name, on in (("approve", approve), ("reject", reject)) if on]
    if correct is not None:
        chosen.append("correct")
    if len(chosen) != 1:
        exit_with_error("give exactly one of --approve, --reject, --correct JSON")
    verdict = chosen[0]
    correction = None
    if correct is not None:
        try:
            correction = json.loads(correct)
        except json.JSONDecodeError as exc:
            exit_with_error(f"--correct: not JSON ({exc.msg} at character {exc.pos})")
        if not isinstance(correction, dict):
            exit_with_error("--correct: expected a JSON object of the corrected fields")
    try:
        answered = reviews.answer(
            review_id,
            tenant=tenant,
            verdict=verdict,  # type: ignore[arg-type]
            correction=correction,
            reviewer=by,
        )
    except (ReviewNotFound, ReviewClosed, ValueError) as exc:
        exit_with_error(str(exc))
    console.print(
        f"review {answered.id}: {answered.verdict} by {answered.reviewer}. "
        + (
            "Its flow run continues the run."
            if answered.review_flow_run_id
            else f"Continue it: stalwart resume {answered.agent} --tenant {tenant}"
        )
    )


def resume_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="Whose runs (required)."),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show Prefect's lines (one per task run) on the terminal."
    ),
) -> None:
    """Continue every run of AGENT stopped at a review now answered or expired."""
    target = load_agent(agent)
    log_file = quiet_prefect("resume", verbose)
    results = target.resume(tenant=tenant, concurrency=concurrency)
    let_prefect_record(r.flow_run_id for r in results)
    if as_json:
        for r in results:
            line = {"run_id": r.run_id, "subject": r.subject, "status": r.status, "paths": r.paths}
            console.print(json.dumps(line), soft_wrap=True)
    else:
        table = Table(title=f"{target.name} · tenant {tenant} · resumed", box=box.SIMPLE_HEAD)
        for header in ("subject", "run key", "status", "paths", "error"):
            table.add_column(header, overflow="fold")
        for r in results:
            paths = ", ".join(f"{k}={v}" for k, v in r.paths.items())
            table.add_row(r.subject or "", r.run_key[:16], r.status, paths, r.error or "")
        console.print(table)
        if not results:
            err_console.print("nothing to resume: no answered or expired review waits")
        err_console.print(f"[dim]Prefect log: {log_file}[/dim]")
    if any(r.status == "failed" for r in results):
        raise typer.Exit(1)
