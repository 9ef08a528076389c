"""`stalwart eval` without a server: scoring counts a failed run as wrong and as no decision,
and the labels are read but never passed to a run. Runs against the bundled model server:
tests/integration/test_eval.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import RunResult
from agents.cli._eval import score
from agents.cli._run import read_inputs
from flows.ticket_triage import SAMPLE_INPUTS, triage


def test_scoring_counts_a_failed_run_as_wrong_and_as_no_decision() -> None:
    from flows.ticket_triage import Routing

    decided = Routing(
        category="billing", urgency="high", action="queue", confidence=0.9, rationale="r"
    )
    results = [
        RunResult(
            status="completed",
            run_id="a",
            run_key="a",
            tenant="t",
            outputs={"route": decided},
            paths={"route": "direct"},
        ),
        RunResult(status="failed", run_id="b", run_key="b", tenant="t", error="boom"),
        RunResult(
            status="completed",
            run_id="c",
            run_key="c",
            tenant="t",
            outputs={"route": decided},
            paths={"route": "fallback_model"},
        ),
    ]
    labels = [
        {"route": {"category": "billing", "urgency": "high"}},
        {"route": {"category": "billing", "urgency": "high"}},
        {"route": {"category": "billing", "urgency": "low"}},
    ]
    evaluation = score("ticket-triage", "t", results, labels, ["route"])
    by_field = {f.field: (f.correct, f.total) for f in evaluation.fields}
    assert by_field == {"category": (2, 3), "urgency": (1, 3)}
    assert (evaluation.overall_correct, evaluation.labelled) == (1, 3)
    assert evaluation.ladder["route"]["no decision"] == 1
    assert evaluation.shares("route")["primary"] == pytest.approx(1 / 3)
    assert evaluation.statuses == {"completed": 2, "failed": 1}


def test_run_and_eval_read_the_labels_but_never_pass_them_to_a_run(tmp_path: Path) -> None:
    compiled = triage.compile()
    accepted, rejected = read_inputs(SAMPLE_INPUTS, compiled, 1_000_000)
    assert (len(accepted), rejected) == (200, [])
    assert all("expected" in item for _, item in accepted)
    assert compiled.check_inputs(accepted[0][1])  # as a run input, the key would be unknown
