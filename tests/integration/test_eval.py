"""`stalwart eval`: its numbers are the decision log's and the labels', the ladder's shares sum
to one, runs awaiting a person's review are counted and not scored, an unsure primary model
moves decisions to the fallback rung, and `--compare-tools` measures the agent with its tools
and without them."""

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
from tests.support.triage import NEED_A_LOOKUP, unsure

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


@pytest.mark.usefixtures("prefect_api")
def test_eval_compares_the_agent_with_its_tools_and_without(
    sqlite_url: str, model_server: ModelServer, tmp_path: Path
) -> None:
    lines = SAMPLE_INPUTS.read_text().splitlines()
    lookups = [line for line in lines if json.loads(line)["raw"]["id"] in NEED_A_LOOKUP]
    source = tmp_path / "lookups.jsonl"
    source.write_text("\n".join(lines[:4] + lookups) + "\n")
    tenant = f"eval-{uuid.uuid4().hex[:8]}"
    data = run_eval("--input", str(source), "--tenant", tenant, "--compare-tools")

    without = data["without_tools"]
    assert (data["tools"], without["tools"]) == (True, False)
    assert (data["tenant"], without["tenant"]) == (tenant, f"{tenant}-no-tools")
    read = read_lines(source)
    labels = {line["raw"]["id"]: line["expected"]["route"] for line in read}
    # Without the order or the history, two tickets are too vague to route: a person is asked.
    assert data["awaiting_review"] == len(unsure(read))
    assert (
        without["awaiting_review"] == len(unsure(read, tools=False)) == data["awaiting_review"] + 2
    )

    # With the tools every ticket needing a lookup made one and was routed as labelled.
    rows = decisions.query(tenant=tenant, agent="ticket-triage", limit=100)
    looked = [r for r in rows if r.input_snapshot["ticket"]["id"] in NEED_A_LOOKUP]
    assert len(looked) == len(NEED_A_LOOKUP)
    for row in looked:
        wanted = labels[row.input_snapshot["ticket"]["id"]]
        assert {name: row.output[name] for name in wanted} == wanted
        assert row.tool_calls and {c["status"] for c in row.tool_calls} == {"ok"}
    assert data["tool_calls"] == sum(len(r.tool_calls or ()) for r in rows) >= len(looked)
    # Without them none was: wrong, or waiting for a person.
    blind = decisions.query(tenant=f"{tenant}-no-tools", agent="ticket-triage", limit=100)
    assert without["tool_calls"] == 0 and not any(r.tool_calls for r in blind)
    for row in blind:
        ticket = row.input_snapshot["ticket"]["id"]
        if ticket in NEED_A_LOOKUP and row.path != "awaiting_review":
            assert row.output["category"] != labels[ticket]["category"]

    gain = data["tools_gain"]
    assert gain["overall_accuracy"] == pytest.approx(
        data["overall_accuracy"] - without["overall_accuracy"]
    )
    assert gain["overall_accuracy"] > 0 and gain["route.category"] > 0
    # Looking things up costs tokens: the tools' schemas and results go to the model.
    assert data["tokens_in"] > without["tokens_in"]

    # Both replay on their tenants; the table puts them side by side.
    alone = run_eval("--input", str(source), "--tenant", f"{tenant}-no-tools", "--no-tools")
    assert alone["replayed"] == len(read) and alone["fields"] == without["fields"]
    shown = runner.invoke(
        app, ["eval", "ticket-triage", "--input", str(source), "-t", tenant, "--compare-tools"]
    )
    assert shown.exit_code == 0, shown.output
    said = " ".join(shown.stdout.split())
    assert "with tools vs without" in said and "without tools · tenant" in said
    right, blind_right = data["overall_correct"], without["overall_correct"]
    assert re.search(
        rf"all labels right │ [\d.]+% \({right}/{data['labelled']}\) │ "
        rf"[\d.]+% \({blind_right}/{without['labelled']}\) │ \+[\d.]+ pt",
        said,
    ), said


def test_compare_tools_needs_an_agent_with_tools_and_excludes_no_tools(tmp_path: Path) -> None:
    source = sample_slice(tmp_path, size=2, injections=False)
    both = runner.invoke(
        app,
        ["eval", "ticket-triage", "-i", str(source), "--compare-tools", "--no-tools"],
    )
    assert both.exit_code == 1 and "exclude each other" in both.output
    toolless = runner.invoke(app, ["eval", "engagement-campaign", "--compare-tools"])
    assert toolless.exit_code == 1 and "declares no tools" in toolless.output
