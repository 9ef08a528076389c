"""`stalwart eval` without a server: scoring counts a failed run as wrong and as no decision, a
run awaiting review as neither right nor wrong, and the labels are read but never passed to a
run. Runs against the bundled model server:
tests/integration/test_eval.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from agents import RunResult
from agents.cli._eval import print_evaluation, score
from agents.cli._run import read_inputs
from agents.cli._utilities import console
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
    assert (len(accepted), rejected) == (207, [])
    assert all("expected" in item for _, item in accepted)
    assert compiled.check_inputs(accepted[0][1])  # as a run input, the key would be unknown


def test_a_run_awaiting_review_is_counted_and_not_scored() -> None:
    from flows.ticket_triage import Routing, Ticket

    decided = Routing(
        category="billing", urgency="high", action="queue", confidence=0.9, rationale="r"
    )
    seen = Ticket(id="T1", subject_line="Hmm", body="Not sure", customer="c1")
    results = [
        RunResult(
            status="completed",
            run_id="a",
            run_key="a",
            tenant="t",
            outputs={"route": decided},
            paths={"route": "direct"},
        ),
        # Stopped at the review: the ticket step ran, the route step has no decision yet.
        RunResult(
            status="awaiting_review",
            run_id="b",
            run_key="b",
            tenant="t",
            outputs={"ticket": seen},
            steps={"ticket": "completed", "route": "awaiting_review", "act": "skipped"},
            paths={"route": "awaiting_review"},
        ),
    ]
    labels = [
        {"route": {"category": "billing"}},
        {"ticket": {"customer": "c1"}, "route": {"category": "other"}},
    ]
    evaluation = score("ticket-triage", "t", results, labels, ["route"])
    by_field = {(f.step, f.field): (f.correct, f.total) for f in evaluation.fields}
    # The label of the step it finished is scored; the one under review waits for a person.
    assert by_field == {("route", "category"): (1, 1), ("ticket", "customer"): (1, 1)}
    assert (evaluation.overall_correct, evaluation.labelled) == (1, 1)
    assert evaluation.overall_accuracy == 1.0
    assert evaluation.awaiting_review == evaluation.statuses["awaiting_review"] == 1
    assert evaluation.ladder["route"]["awaiting_review"] == 1
    assert evaluation.ladder["route"]["no decision"] == 0
    assert evaluation.to_dict()["awaiting_review"] == 1

    with console.capture() as captured:
        print_evaluation(evaluation)
    said = " ".join(captured.get().split())
    assert "(1 awaiting_review, 1 completed)" in said
    assert "awaiting review (not scored) │ 1" in said
    assert (
        "1 run(s) await a person's review: stalwart reviews --tenant t, "
        "then stalwart resume ticket-triage --tenant t"
    ) in said
