"""The three reference agents run from the CLI by their registered names; the ticket-triage
demo hands its unsure tickets to a person and returns."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents import reviews
from agents.cli import app
from agents.store import queries
from flows.ticket_triage import SAMPLE_INPUTS
from tests.support.triage import refused, sample, unsure

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_stalwart_agents_lists_the_three_reference_agents() -> None:
    result = runner.invoke(app, ["agents"])
    assert result.exit_code == 0, result.output
    for name in ("ticket-triage", "qa-runs", "engagement-campaign"):
        assert name in result.output


@pytest.mark.parametrize(
    ("agent", "data", "lines"),
    [
        ("ticket-triage", "flows/data/tickets.jsonl", 6),
        ("engagement-campaign", "flows/data/accounts.jsonl", 3),
    ],
)
@pytest.mark.usefixtures("prefect_api", "model_server")
def test_a_reference_agent_runs_from_the_cli(
    agent: str, data: str, lines: int, sqlite_url: str, tmp_path: Path
) -> None:
    source = tmp_path / "inputs.jsonl"
    source.write_text("\n".join((ROOT / data).read_text().splitlines()[:lines]) + "\n")
    result = runner.invoke(app, ["run", agent, "--input", str(source), "--tenant", "cli-ref"])
    assert result.exit_code == 0, result.output
    runs = queries.runs(tenant="cli-ref", agent=agent)
    assert len(runs) == lines and {r.status for r in runs} == {"completed"}


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api", "model_server")
def test_the_triage_demo_asks_a_person_about_the_unsure_tickets_and_returns(
    sqlite_url: str,
) -> None:
    """The README's demo command over the whole bundled sample: the tickets both models are
    unsure of end `awaiting_review` (nothing waits for the reviewer), the injections `held`."""
    lines = sample()
    waits, refusals = unsure(lines), refused(lines)
    assert waits and refusals and not waits & refusals
    decided = len(lines) - len(waits) - len(refusals)
    result = runner.invoke(
        app, ["run", "ticket-triage", "--input", str(SAMPLE_INPUTS), "--tenant", "demo", "--json"]
    )
    assert result.exit_code == 0, result.output  # a run awaiting review is not a failure

    runs = queries.runs(tenant="demo", agent="ticket-triage", limit=1000)
    assert Counter(r.status for r in runs) == {
        "completed": decided,
        "awaiting_review": len(waits),
        "held": len(refusals),
    }
    pending = reviews.pending(tenant="demo", agent="ticket-triage")
    assert sorted(p.inputs["ticket"]["id"] for p in pending) == sorted(waits)

    summary = json.loads(result.stdout)
    assert summary["outcomes"]["completed"] == decided and summary["outcomes"]["failed"] == 0
    assert summary["outcomes"]["awaiting_review"] == summary["ladder"]["awaiting_review"]
    assert summary["outcomes"]["awaiting_review"] == len(waits)
    assert summary["outcomes"]["held"] == len(refusals)
