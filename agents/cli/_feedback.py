"""`stalwart feedback` (say whether a decision was right) and `stalwart calibrate` (the
threshold trade-off of a reasoning step, applied on request)."""

from __future__ import annotations

import json
from typing import Any

import typer
from rich import box
from rich.table import Table

from agents.cli._utilities import console, exit_with_error, load_agent

__all__ = ["calibrate_command", "feedback_command"]


def feedback_command(
    decision_id: str = typer.Argument(..., help="The decision's id (see `stalwart decisions`)."),
    tenant: str = typer.Option(..., "--tenant", "-t", help="The decision's tenant."),
    correct: bool | None = typer.Option(
        None, "--correct/--wrong", help="Whether the decision was right."
    ),
    label: str | None = typer.Option(
        None, "--label", help='The right answer as JSON, e.g. \'{"category": "billing"}\'.'
    ),
    score: float | None = typer.Option(None, "--score", help="A grade in [0, 1]."),
    note: str | None = typer.Option(None, "--note", help="Free text."),
    by: str | None = typer.Option(None, "--by", help="Who gives the feedback (default: cli)."),
    as_json: bool = typer.Option(False, "--json", help="Print the stored row as JSON only."),
) -> None:
    """Record feedback on one decision of the log (per tenant; nothing crosses tenants)."""
    from agents.learning.feedback import UnknownDecision, give

    parsed: Any = None
    if label is not None:
        try:
            parsed = json.loads(label)
        except ValueError as exc:
            exit_with_error(f"--label is not JSON: {exc}")
    try:
        row = give(
            decision_id,
            tenant=tenant,
            correct=correct,
            label=parsed,
            score=score,
            note=note,
            by=by or "cli",
        )
    except UnknownDecision as exc:
        exit_with_error(str(exc))
    except (TypeError, ValueError) as exc:
        exit_with_error(str(exc))
    if as_json:
        console.print(json.dumps(row.model_dump(mode="json")), soft_wrap=True)
        return
    said = {True: "right", False: "wrong", None: "—"}[row.correct]
    console.print(
        f"feedback {row.id} on {row.agent}.{row.step} decision {row.decision_id} "
        f"(tenant {row.tenant}): {said}"
        + (f", label {json.dumps(row.label)}" if row.label is not None else "")
        + (f", score {row.score}" if row.score is not None else "")
        + f", by {row.given_by}"
    )


def _pct(value: float | None) -> str:
    return "—" if value is None else f"{value:.1%}"


def calibrate_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    step: str = typer.Argument(..., help="The reasoning step."),
    tenant: str = typer.Option(..., "--tenant", "-t"),
    target: float | None = typer.Option(
        None, "--target", help="Target precision of auto-decided cases (default: declared)."
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Set the recommended threshold (the step must opt in)."
    ),
    by: str | None = typer.Option(None, "--by", help="Who applies the change (default: cli)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON only."),
) -> None:
    """Show the trade-off between auto-decided share and precision; optionally apply it."""
    from agents.learning import calibration

    found = load_agent(agent)
    try:
        report = calibration.calibrate(tenant, found, step, target_precision=target)
    except (calibration.CalibrationError, ValueError) as exc:
        exit_with_error(str(exc))
    change = None
    if apply:
        try:
            change = calibration.apply(found, step, tenant=tenant, report=report, by=by or "cli")
        except calibration.CalibrationError as exc:
            exit_with_error(str(exc))
    if as_json:
        data = report.to_dict()
        data["applied"] = None if change is None else change.model_dump(mode="json")
        console.print(json.dumps(data), soft_wrap=True)
        return
    table = Table(
        title=f"{report.agent}.{report.step} · tenant {tenant} · {report.labelled} labelled "
        f"decisions · target precision {report.target_precision}",
        box=box.SIMPLE_HEAD,
    )
    for header in ("threshold", "auto-decided", "share", "precision", "meets"):
        table.add_column(header, justify="right")
    for c in report.candidates:
        mark = "→" if c.threshold == report.recommended else ""
        table.add_row(
            f"{mark}{c.threshold:.2f}",
            str(c.auto),
            _pct(c.auto_share),
            _pct(c.precision),
            "yes" if c.meets_target else "no",
        )
    console.print(table)
    current = "—" if report.current is None else f"{report.current:.2f}"
    recommended = "—" if report.recommended is None else f"{report.recommended:.2f}"
    console.print(f"in force {current} · recommended {recommended}: {report.reason}")
    if apply:
        if change is None:
            console.print("nothing applied: no change to make")
        else:
            console.print(
                f"applied: version {change.version}, {change.old} → {change.new} "
                f"(ThresholdChange {change.id})"
            )
