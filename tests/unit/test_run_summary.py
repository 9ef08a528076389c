"""`stalwart run`'s summary: read from a batch's results and its rows of the run and decision
logs, never from another batch's."""

from __future__ import annotations

from pathlib import Path

from agents.cli._run import category_field, summarise
from agents.result import RunResult
from agents.store.tables import AgentRun, DecisionRecord
from flows.qa_runs import ShardVerdict
from flows.ticket_triage import Routing, triage


def decision(run_id: str, path: str, category: str, tokens: int) -> DecisionRecord:
    return DecisionRecord(
        tenant="t",
        agent="ticket-triage",
        step="route",
        agent_run_id=run_id,
        input_digest="d",
        model="stalwart-test",
        output={"category": category},
        path=path,
        tokens_in=tokens,
        tokens_out=1,
    )


def run_row(run_id: str, status: str, duration_ms: float) -> AgentRun:
    return AgentRun(
        id=run_id,
        tenant="t",
        agent="ticket-triage",
        run_key=run_id,
        status=status,
        inputs_digest="d",
        duration_ms=duration_ms,
    )


def test_a_decision_is_categorised_by_its_first_literal_field() -> None:
    assert category_field(Routing) == "category"
    assert category_field(ShardVerdict) is None  # a list of verdicts: no single category
    assert category_field(str) is None


def test_the_summary_counts_this_batch_only_and_puts_failures_first() -> None:
    results = [
        RunResult(
            status="completed",
            run_id="r1",
            run_key="r1",
            tenant="t",
            subject="a",
            paths={"route": "direct"},
        ),
        RunResult(
            status="completed",
            run_id="r2",
            run_key="r2",
            tenant="t",
            subject="b",
            paths={"route": "fallback_model"},
        ),
        RunResult(
            status="held",
            run_id="r3",
            run_key="r3",
            tenant="t",
            subject="c",
            paths={"route": "rejected"},
        ),
        RunResult(
            status="failed",
            run_id="r4",
            run_key="r4",
            tenant="t",
            subject="d",
            error="ValueError: boom",
        ),
    ]
    rows = [
        decision("r1", "direct", "billing", 10),
        decision("r2", "fallback_model", "technical", 20),
        decision("r3", "rejected", "billing", 30),
        decision("other-batch", "direct", "shipping", 1000),
    ]
    runs = [
        run_row("r1", "completed", 100.0),
        run_row("r2", "completed", 300.0),
        run_row("r3", "held", 200.0),
        run_row("r4", "failed", 50.0),
        run_row("other-batch", "completed", 9000.0),
    ]
    summary = summarise(
        triage.compile(),
        tenant="t",
        source=Path("in.jsonl"),
        lines=[1, 2, 3, 5],
        results=results,
        rejected=1,
        seconds=2.0,
        decisions=rows,
        runs=runs,
    )
    assert summary.outcomes == {
        "completed": 2,
        "held": 1,
        "awaiting_review": 0,
        "failed": 1,
        "conflict": 0,
        "quarantined": 1,
    }
    assert {p: n for p, n in summary.ladder.items() if n} == {
        "direct": 1,
        "fallback_model": 1,
        "rejected": 1,
    }
    # A rejected decision was never acted on: it is on the ladder, not in the categories.
    assert summary.categories == {"route.category": {"billing": 1, "technical": 1}}
    assert (summary.decisions_logged, summary.model_calls, summary.tokens_in) == (3, 3, 60)
    assert [w["line"] for w in summary.worst] == [5, 2, 3]
    assert summary.worst[0]["error"] == "ValueError: boom"
    assert summary.runs_per_s == 2.0
    assert "stalwart decisions --tenant t --agent ticket-triage --path fallback_model" in (
        summary.next
    )
    assert "stalwart runs --tenant t --agent ticket-triage --status failed" in summary.next
