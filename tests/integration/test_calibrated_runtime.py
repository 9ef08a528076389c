"""The runtime acts on a tenant's calibrated threshold (read once per batch), nobody else's."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from agents import Agent, Decision, decisions
from agents.learning import Calibration, feedback
from agents.learning import calibration as calibration_api


class Verdict(Decision):
    label: str


def _agent(acted: list[tuple[str, float]]) -> Agent:
    agent = Agent(f"calibrated-{uuid.uuid4().hex[:6]}")

    @agent.reasoning(
        threshold=0.7, calibrate=Calibration(target_precision=0.95, bounds=(0.6, 0.95))
    )
    def decide(raw: dict[str, Any]) -> Verdict:
        # Confidence comes with the input so the test controls it exactly.
        return Verdict(label=raw["label"], confidence=raw["c"], rationale="given")

    @agent.action
    def act(decide: Verdict) -> str:
        acted.append((decide.label, decide.confidence))
        return decide.label

    return agent


@pytest.mark.usefixtures("prefect_api")
def test_a_calibrated_threshold_is_the_one_the_runtime_acts_on(state_db: str) -> None:
    acted: list[tuple[str, float]] = []
    agent = _agent(acted)
    tenant, other = f"cal-{uuid.uuid4().hex[:6]}", f"cal-other-{uuid.uuid4().hex[:6]}"
    # 30 decisions from 0.70 to 0.99: those under 0.85 turn out wrong.
    confidences = [round(0.70 + 0.01 * i, 2) for i in range(30)]
    agent.batch([{"raw": {"label": f"x{i}", "c": c}} for i, c in enumerate(confidences)],
                tenant=tenant)  # fmt: skip
    for row in decisions.query(tenant=tenant, agent=agent.name, limit=100):
        assert row.confidence is not None
        feedback.give(row.id, tenant=tenant, correct=row.confidence >= 0.85, by="qa")
    change = calibration_api.apply(agent, "decide", tenant=tenant, by="test")
    assert change is not None and 0.85 <= change.new <= 0.95

    acted.clear()
    probe = [{"raw": {"label": "probe", "c": 0.8}, "run_key": f"probe-{uuid.uuid4().hex}"}]
    (mine,) = agent.batch(probe, tenant=tenant)
    (theirs,) = agent.batch(probe, tenant=other)
    assert mine.status == "held" and mine.steps["act"] == "skipped"
    assert theirs.status == "completed"  # the other tenant still runs at the declared 0.7
    assert acted == [("probe", 0.8)]
