"""Threshold calibration: the trade-off table, thresholds moving as outcomes demand, opt-in
and bounds, versioned changes with their evidence, and `stalwart calibrate`."""

from __future__ import annotations

import uuid

import pytest

from agents.learning import calibration, feedback
from tests.support.calibration import agent, decide_many


def test_thresholds_move_as_outcomes_demand(state_db: str) -> None:
    tenant = f"cal-{uuid.uuid4().hex[:8]}"
    rows = decide_many(tenant)
    # Below 0.8 the decisions turn out wrong, from 0.8 up they are right.
    for row in rows:
        assert row.confidence is not None
        feedback.give(row.id, tenant=tenant, correct=row.confidence >= 0.8, by="ops")

    report = calibration.calibrate(tenant, agent, "judge")
    assert report.labelled == 50 and report.current == 0.7
    by_threshold = {c.threshold: c for c in report.candidates}
    assert next(c.threshold for c in report.candidates) == 0.6
    assert by_threshold[0.6].auto == 40 and by_threshold[0.6].precision == pytest.approx(0.5)
    assert by_threshold[0.8].auto == 20 and by_threshold[0.8].precision == 1.0
    assert by_threshold[0.8].auto_share == pytest.approx(0.4)
    assert report.recommended == 0.8

    up = calibration.apply(agent, "judge", tenant=tenant, by="ops")
    assert up is not None and (up.version, up.old, up.new) == (1, 0.7, 0.8)
    assert up.evidence["recommended"] == 0.8 and len(up.evidence["candidates"]) == 7
    assert calibration.in_force(agent, tenant) == {"judge": 0.8, "fixed": 0.7}
    assert calibration.apply(agent, "judge", tenant=tenant) is None  # nothing new to change

    # Later feedback says the low-confidence ones were right after all: the threshold falls,
    # but never below the declared lower bound.
    for row in rows:
        feedback.give(row.id, tenant=tenant, label={"ok": True}, by="audit")
    down = calibration.apply(agent, "judge", tenant=tenant)
    assert down is not None and (down.version, down.old, down.new) == (2, 0.8, 0.6)
    assert [c.version for c in calibration.history(tenant, "calibrated", "judge")] == [1, 2]
    assert calibration.thresholds(tenant, "calibrated") == {"judge": 0.6}

    # Another tenant is untouched.
    other = f"cal-{uuid.uuid4().hex[:8]}"
    assert calibration.in_force(agent, other) == {"judge": 0.7, "fixed": 0.7}
