"""`stalwart graph` prints an agent's graph as text and Mermaid (no run, no Prefect API). The
commands that run agents or touch the database: tests/integration/test_cli.py."""

from __future__ import annotations

from typer.testing import CliRunner

from agents.cli import app

runner = CliRunner()


def test_graph_prints_text_and_mermaid() -> None:
    result = runner.invoke(app, ["graph", "tests.support.cli_agent:agent"])
    assert result.exit_code == 0, result.output
    assert "reasoning  echo ← words" in result.output
    assert "flowchart LR" in result.output
    unknown = runner.invoke(app, ["graph", "no-such-agent"])
    assert unknown.exit_code == 1
