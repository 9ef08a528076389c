"""Threshold calibration on SQLite: no threshold meeting the target chooses the high bound, too
little evidence recommends nothing, outcomes from actions count as labels, only opted-in steps
change and only within bounds, and `stalwart calibrate`. On both backends:
tests/integration/test_calibration.py."""

from __future__ import annotations

import json
import uuid

import pytest
import typer
from typer.testing import CliRunner

from agents import Agent, DeclarationError
from agents.cli._feedback import calibrate_command
from agents.learning import Calibration, calibration, feedback
from tests.support.calibration import agent, decide_many
from tests.support.models import Verdict


def test_no_threshold_meets_the_target_so_the_high_bound_is_chosen(sqlite_url: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    for i, row in enumerate(decide_many(tenant)):
        feedback.give(row.id, tenant=tenant, correct=i % 2 == 0)  # half wrong everywhere
    report = calibration.calibrate(tenant, agent, "judge")
    assert not any(c.meets_target for c in report.candidates)
    assert report.recommended == 0.9 and "no threshold" in report.reason


def test_too_little_evidence_recommends_nothing(sqlite_url: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    rows = decide_many(tenant)
    for row in rows[:5]:
        feedback.give(row.id, tenant=tenant, correct=True)
    report = calibration.calibrate(tenant, agent, "judge")
    assert report.labelled == 5 and report.recommended is None
    assert calibration.apply(agent, "judge", tenant=tenant, report=report) is None
    assert calibration.history(tenant, "calibrated") == []


def test_outcomes_from_actions_count_as_labels(sqlite_url: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    rows = decide_many(tenant)
    from agents.store.decisions import set_outcome

    for row in rows:
        assert row.confidence is not None
        set_outcome(row.id, tenant=tenant, outcome={"correct": row.confidence >= 0.75})
    assert calibration.calibrate(tenant, agent, "judge").recommended == 0.75


def test_only_opted_in_steps_change_and_only_within_bounds(sqlite_url: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    for row in decide_many(tenant, step="fixed"):
        feedback.give(row.id, tenant=tenant, correct=True)
    with pytest.raises(calibration.CalibrationError, match="did not opt into calibration"):
        calibration.apply(agent, "fixed", tenant=tenant)
    assert calibration.history(tenant, "calibrated") == []
    with pytest.raises(calibration.CalibrationError, match="no reasoning step 'nope'"):
        calibration.calibrate(tenant, agent, "nope")

    other = Agent("bad-bounds")
    with pytest.raises(DeclarationError, match="outside the calibration bounds"):

        @other.reasoning(threshold=0.5, calibrate=Calibration(bounds=(0.6, 0.9)))
        def judge(text: str) -> Verdict:
            """Out of bounds from the start."""
            return Verdict(ok=True, confidence=1.0, rationale="rule")

    with pytest.raises(DeclarationError, match="needs a declared 'threshold'"):

        @other.reasoning(calibrate=Calibration())
        def judge2(text: str) -> Verdict:
            """No threshold to calibrate."""
            return Verdict(ok=True, confidence=1.0, rationale="rule")


def test_calibrate_command_prints_the_trade_off_and_applies(sqlite_url: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    for row in decide_many(tenant):
        assert row.confidence is not None
        feedback.give(row.id, tenant=tenant, correct=row.confidence >= 0.85)
    app = typer.Typer()
    app.command("calibrate")(calibrate_command)
    app.command("noop")(lambda: None)
    runner = CliRunner()
    spec = f"{__name__}:agent"

    shown = runner.invoke(app, ["calibrate", spec, "judge", "--tenant", tenant])
    assert shown.exit_code == 0, shown.output
    assert "→0.85" in shown.output and "recommended 0.85" in shown.output
    assert calibration.history(tenant, "calibrated") == []  # shown, not applied

    applied = runner.invoke(
        app, ["calibrate", spec, "judge", "--tenant", tenant, "--apply", "--json"]
    )
    assert applied.exit_code == 0, applied.output
    data = json.loads(applied.stdout)
    assert data["recommended"] == 0.85 and data["applied"]["new"] == 0.85
    assert calibration.in_force(agent, tenant)["judge"] == 0.85

    refused = runner.invoke(app, ["calibrate", spec, "fixed", "--tenant", tenant, "--apply"])
    assert refused.exit_code == 1 and "did not opt into calibration" in refused.output
