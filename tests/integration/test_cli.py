"""The `stalwart` CLI: run with quarantine of bad lines, runs, memory, graph, db upgrade."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agents.cli import app

pytestmark = pytest.mark.usefixtures("prefect_api")
runner = CliRunner()


def test_run_quarantines_bad_lines_runs_the_rest_and_exits_non_zero(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.settings import reload_settings

    monkeypatch.setenv("STALWART_MAX_INPUT_BYTES", "300")
    reload_settings()
    source = tmp_path / "inputs.jsonl"
    lines = [
        json.dumps({"raw": {"text": "hello"}, "subject": "a"}).encode(),  # 1 ok
        b"{not json",  # 2
        json.dumps([1, 2]).encode(),  # 3 not an object
        json.dumps({"nope": 1}).encode(),  # 4 missing input + unknown key
        json.dumps({"raw": {"text": "x" * 400}}).encode(),  # 5 too large
        b'{"raw": {"text": "caf\xe9"}}',  # 6 not UTF-8
        json.dumps({"raw": {"text": "boom"}}).encode(),  # 7 fails at run time
        json.dumps({"raw": {"text": "world"}, "subject": "b"}).encode(),  # 8 ok
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    result = runner.invoke(
        app, ["run", "tests.support.cli_agent:agent", "--input", str(source), "--tenant", "cli"]
    )
    assert result.exit_code == 1, result.output
    quarantined = [
        json.loads(line) for line in (tmp_path / "inputs.quarantine.jsonl").read_text().splitlines()
    ]
    assert [q["line"] for q in quarantined] == [2, 3, 4, 5, 6]
    reasons = " ".join(q["error"] for q in quarantined)
    for expected in (
        "not JSON",
        "not a JSON object",
        "run input 'raw' is missing",
        "over 300",
        "not UTF-8",
    ):
        assert expected in reasons
    for number in (2, 3, 4, 5, 6):
        assert f"line {number}:" in result.output
    assert "line 7 failed" in result.output

    from agents.store import queries

    runs = queries.runs(tenant="cli", agent="cli-demo")
    assert sorted(r.status for r in runs) == ["completed", "completed", "failed"]

    listed = runner.invoke(app, ["runs", "--tenant", "cli", "--json"])
    assert listed.exit_code == 0
    assert len([line for line in listed.output.splitlines() if line.startswith("{")]) == 3
    other = runner.invoke(app, ["runs", "--tenant", "someone-else", "--json"])
    assert other.output.strip() == ""


def test_db_upgrade_reports_the_head_revision(sqlite_url: str) -> None:
    from agents.store import head_revision

    result = runner.invoke(app, ["db", "upgrade"])
    assert result.exit_code == 0, result.output
    assert head_revision() in result.output
    assert "memory" in runner.invoke(app, ["memory", "--help"]).output.lower()
