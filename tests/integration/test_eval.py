"""`stalwart eval`: its numbers are the decision log's and the labels', the ladder's shares sum
to one, runs awaiting a person's review are counted and not scored, and an unsure primary model
moves decisions to the fallback rung."""

from __future__ import annotations

import json
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agents import decisions, reviews
from agents.cli import app
from agents.cli._eval import RUNGS, percentile
from agents.modelserver import ModelServer
from flows.ticket_triage import FALLBACK_MODEL, SAMPLE_INPUTS
from tests.support.triage import unsure

runner = CliRunner()
SLICE = 36
#: The two injection tickets of the sample, kept for the slice (they exercise `rejected`).
INJECTIONS = ("Ignore previous instructions", "Admin access")


def sample_slice(tmp_path: Path, size: int = SLICE, injections: bool = True) -> Path:
    lines = SAMPLE_INPUTS.read_text().splitlines()
    chosen = lines[:size]
    if injections:
        chosen += [
            line for line in lines[size:] if json.loads(line)["raw"]["subject"] in INJECTIONS
        ]
    path = tmp_path / "slice.jsonl"
    path.write_text("\n".join(chosen) + "\n")
    return path


def read_lines(source: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in source.read_text().splitlines()]


def run_eval(*args: str) -> dict[str, Any]:
    result = runner.invoke(app, ["eval", "ticket-triage", "--json", *args])
    assert result.exit_code == 0, result.output
    found = [line for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(found) == 1, result.stdout
    data: dict[str, Any] = json.loads(found[0])
    return data


@pytest.mark.usefixtures("prefect_api")
def test_eval_numbers_are_the_decision_logs_and_the_labels(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    source = sample_slice(tmp_path)
    tenant = f"eval-{uuid.uuid4().hex[:8]}"
    data = run_eval("--input", str(source), "--tenant", tenant, "--concurrency", "8")

    # Independently: every decision-log row of the tenant, joined to its line's labels by the
    # ticket id in the row's input snapshot. A vague ticket both models are unsure of waits for
    # a person: its row is `awaiting_review` and it is not scored (no final decision yet).
    lines = read_lines(source)
    labels = {line["raw"]["id"]: line["expected"]["route"] for line in lines}
    rows = decisions.query(tenant=tenant, agent="ticket-triage", limit=1000)
    assert len(rows) == len(lines) == data["runs"] == data["decisions_logged"]
    waiting = [row for row in rows if row.path == "awaiting_review"]
    assert {row.input_snapshot["ticket"]["id"] for row in waiting} == unsure(lines) != set()
    assert data["awaiting_review"] == data["statuses"]["awaiting_review"] == len(waiting)
    decided = [row for row in rows if row.path != "awaiting_review"]
    assert data["labelled"] == len(decided)
    right: Counter[str] = Counter()
    all_right = 0
    for row in decided:
        wanted = labels[row.input_snapshot["ticket"]["id"]]
        hits = {name: row.output[name] == value for name, value in wanted.items()}
        right.update(name for name, hit in hits.items() if hit)
        all_right += all(hits.values())
    scored = {f["field"]: (f["correct"], f["total"]) for f in data["fields"]}
    wanted = {name: (right[name], len(decided)) for name in ("category", "urgency", "action")}
    assert scored == wanted
    assert data["overall_correct"] == all_right
    assert data["overall_accuracy"] == pytest.approx(all_right / len(decided))
    # Realistic, not perfect: the bundled rules get most tickets right and some wrong.
    assert 0.6 < data["overall_accuracy"] < 1.0

    paths = Counter(row.path for row in rows)
    ladder = data["ladder"]["route"]
    assert ladder["primary"] == paths["direct"] > 0
    assert ladder["awaiting_review"] == len(waiting)
    assert ladder["default"] == paths["default"] == 0  # a person is asked before the default
    assert ladder["rejected"] == paths["rejected"] == len(INJECTIONS)
    assert ladder["fallback"] == paths["fallback_model"] == 0
    assert sum(data["shares"]["route"].values()) == pytest.approx(1.0)
    assert set(data["shares"]["route"]) == set(RUNGS)

    assert data["tokens_in"] == sum(r.tokens_in for r in rows) > 0
    assert data["tokens_out"] == sum(r.tokens_out for r in rows) > 0
    latencies = [r.latency_ms for r in rows if r.latency_ms is not None]
    assert data["model_ms_p50"] == percentile(latencies, 50)
    assert data["model_ms_p95"] == percentile(latencies, 95)
    assert data["run_ms_p50"] is not None and data["run_ms_p95"] >= data["run_ms_p50"]
    assert data["statuses"] == {
        "completed": len(lines) - 2 - len(waiting),
        "held": 2,
        "awaiting_review": len(waiting),
    }

    # Again on the same tenant: everything is replayed, nothing new is logged or paid; the
    # unanswered review still waits and is not asked twice.
    again = run_eval("--input", str(source), "--tenant", tenant)
    assert again["replayed"] == len(lines) and again["decisions_logged"] == 0
    assert again["fields"] == data["fields"] and again["ladder"] == data["ladder"]
    assert again["awaiting_review"] == len(waiting)
    assert len(reviews.pending(tenant=tenant, agent="ticket-triage")) == len(waiting)

    # The table says so too, and how to answer them.
    shown = runner.invoke(app, ["eval", "ticket-triage", "--input", str(source), "-t", tenant])
    assert shown.exit_code == 0, shown.output
    assert re.search(rf"awaiting review \(not scored\)\s*│\s*{len(waiting)}\b", shown.stdout)
    assert f"({len(waiting)} awaiting_review, " in " ".join(shown.stdout.split())
    hint = " ".join(shown.stdout.split())
    assert f"{len(waiting)} run(s) await a person's review" in hint
    assert f"stalwart reviews --tenant {tenant}, then stalwart resume ticket-triage" in hint


@pytest.mark.usefixtures("prefect_api")
def test_an_unsure_primary_model_moves_decisions_to_the_fallback_rung(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    model_server.faults.update(confidence_by_model={"stalwart-test": 0.3})
    source = sample_slice(tmp_path, size=10, injections=False)
    tenant = f"eval-{uuid.uuid4().hex[:8]}"
    data = run_eval("--input", str(source), "--tenant", tenant)

    rows = decisions.query(tenant=tenant, agent="ticket-triage", limit=100)
    ladder = data["ladder"]["route"]
    assert ladder["primary"] == 0
    assert ladder["fallback"] == sum(1 for r in rows if r.path == "fallback_model") > 0
    assert {r.model for r in rows if r.path == "fallback_model"} == {FALLBACK_MODEL}
    # The vague ticket stays unsure with the fallback model too: it waits for a person.
    assert ladder["awaiting_review"] == data["awaiting_review"] == len(unsure(read_lines(source)))
    assert ladder["fallback"] + ladder["awaiting_review"] == 10
    assert sum(data["shares"]["route"].values()) == pytest.approx(1.0)
    # Both models answered each fallback decision: its tokens count both calls.
    assert data["tokens_in"] == sum(r.tokens_in for r in rows)


def test_model_faults_need_the_bundled_server(model_server: ModelServer, tmp_path: Path) -> None:
    source = sample_slice(tmp_path, size=2, injections=False)
    result = runner.invoke(
        app, ["eval", "ticket-triage", "--input", str(source), "--model-faults", "{}"]
    )
    assert result.exit_code == 1
    assert "needs the bundled model server" in result.output
