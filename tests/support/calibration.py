"""The calibrated agent the calibration tests share, and its decisions: 50 confidences from
0.50 to 0.99 logged for one tenant."""

from __future__ import annotations

from agents import Agent
from agents.learning import Calibration
from agents.store.decisions import record_decisions
from agents.store.tables import DecisionRecord
from tests.support.models import Verdict

CONFIDENCES = [round(0.50 + 0.01 * i, 2) for i in range(50)]  # 0.50 … 0.99


agent = Agent("calibrated")


@agent.reasoning(threshold=0.7, calibrate=Calibration(target_precision=0.95, bounds=(0.6, 0.9)))
def judge(text: str) -> Verdict:
    """Rule-based stand-in for a model call."""
    return Verdict(ok=True, confidence=0.8, rationale="rule")


@agent.reasoning(threshold=0.7)
def fixed(text: str) -> Verdict:
    """A step that did not opt into calibration."""
    return Verdict(ok=True, confidence=0.8, rationale="rule")


def decide_many(tenant: str, step: str = "judge") -> list[DecisionRecord]:
    rows = [
        DecisionRecord(
            tenant=tenant,
            agent="calibrated",
            step=step,
            input_digest=f"{i:064d}",
            confidence=c,
            output={"ok": True, "confidence": c},
            path="direct",
        )
        for i, c in enumerate(CONFIDENCES)
    ]
    record_decisions(rows)
    return rows
