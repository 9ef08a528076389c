"""The three reference agents run from the CLI by their registered names. (The ticket-triage
demo over the whole bundled sample, run as a person runs it, is in test_cli_output.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.store import queries

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
