"""qa-runs: the reference agent over the bundled sample projects, against the bundled model
server, on a real Prefect API and a real state database.

Every failing test must get the kind its project's ground truth names, suspected flakes are
rerun (once) and pass, reports land as JSON files and Prefect artifacts, memory keeps the
confirmed flakes and the next round uses it instead of asking the model. Before classifying,
the model reads the failing test's source and the code it calls (read-only tools, each call a
task run in the decision log), and those tools read nothing outside the project.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agents import RunResult
from agents.cli import app
from flows.qa import report as reports
from flows.qa_runs import BUNDLED_PROJECTS, SAMPLE_INPUTS, failure_prompt, plan, qa, qa_runs_flow

pytestmark = pytest.mark.usefixtures("prefect_api")

GROUND_TRUTH: dict[str, dict[str, str]] = json.loads(
    (BUNDLED_PROJECTS / "ground_truth.json").read_text()
)["failures"]


def run_round(projects: list[str], round: str, reports_dir: Path, tenant: str) -> list[RunResult]:
    inputs = plan(projects, round=round, reports_dir=str(reports_dir))
    return qa.batch(inputs, tenant=tenant, concurrency=4)


def load_report(reports_dir: Path, tenant: str, project: str, round: str) -> dict[str, Any]:
    return json.loads(reports.report_path(reports_dir, tenant, project, round).read_text())


def read_artifact(key: str) -> Any:
    from prefect.artifacts import Artifact

    return Artifact.get(key)


def test_a_round_classifies_every_failure_reruns_flakes_and_reports(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    projects = ["billing-api", "scheduler", "text-tools"]
    results = run_round(projects, "r1", tmp_path, "acme")

    # text-tools' golden-value failure matches no known signal: held, never acted on.
    by_status = {(r.subject, r.status) for r in results}
    assert all(r.ok for r in results), [r.error for r in results]
    held = [r for r in results if r.status == "held"]
    assert [r.subject for r in held] == ["text-tools"]
    assert held[0].steps["rerun"] == "skipped" and held[0].steps["record"] == "completed"
    assert held[0].paths["triage"] == "held"
    # ... after the stronger model was asked and was no surer.
    assert model_server.stats.requests_by_model.get("stalwart-strong", 0) >= 1
    assert ("billing-api", "completed") in by_status

    for project in projects:
        report = load_report(tmp_path, "acme", project, "r1")
        got = {
            f["test"]: (reports.NEEDS_REVIEW if f["status"] == reports.NEEDS_REVIEW else f["kind"])
            for f in report["failures"]
        }
        assert got == GROUND_TRUTH[project], project
        assert report["shards"]["planned"] == report["shards"]["reported"] == 2
        for failure in report["failures"]:
            if failure["kind"] == "flaky" and failure["status"] != reports.NEEDS_REVIEW:
                assert failure["status"] == "flaky_confirmed"
                assert failure["source"] == "model"

    billing = load_report(tmp_path, "acme", "billing-api", "r1")
    assert billing["status"] == "red"
    assert billing["totals"] == {
        **billing["totals"],
        "tests": 6,
        "passed": 4,
        "failed": 2,
        "reruns": 1,
        "executions": 7,
    }
    assert billing["by_kind"]["real_bug"] == 1 and billing["by_kind"]["flaky"] == 1

    # The rerun ran exactly once per shard: the action ledger replays it on a second batch.
    first = {r.run_key: r.outputs["rerun"] for r in results if "rerun" in r.outputs}
    again = run_round(["billing-api"], "r1", tmp_path, "acme")
    for r in again:
        assert r.steps["rerun"] == "cached"
        assert r.outputs["rerun"] == first[r.run_key]

    artifact = read_artifact(reports.artifact_key("acme", "billing-api"))
    assert artifact is not None
    assert "QA report: billing-api (round r1)" in str(artifact.data)
    assert "test_round_half_up" in str(artifact.data) and "flaky_confirmed" in str(artifact.data)


def test_memory_keeps_confirmed_flakes_and_the_next_round_skips_the_model(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    from agents import Memory

    flake = "tests/test_money.py::test_rate_fetch_within_budget"
    run_round(["billing-api"], "day-1", tmp_path, "acme")
    remembered = Memory("acme", "qa-runs", "billing-api").get("flaky")
    assert list(remembered) == [flake]
    assert remembered[flake]["confirmed"] == 1
    # Per project: another project's memory knows nothing of it.
    assert Memory("acme", "qa-runs", "scheduler").get("flaky") is None
    # The decision log holds what the rerun made of the shard's verdicts.
    from agents import decisions

    logged = decisions.query(tenant="acme", agent="qa-runs", subject="billing-api")
    outcomes = [d.outcome for d in logged if d.outcome and d.outcome["rerun"]]
    assert outcomes == [{"rerun": 1, "confirmed": [flake], "failed_rerun": []}]

    asked = model_server.stats.requests_total
    results = run_round(["billing-api"], "day-2", tmp_path, "acme")
    # Only the real bug went to the model (two turns: read the sources, answer); the known
    # flake came from memory and was rerun.
    assert model_server.stats.requests_total - asked == 2
    report = load_report(tmp_path, "acme", "billing-api", "day-2")
    flaky = next(f for f in report["failures"] if f["test"] == flake)
    assert (flaky["source"], flaky["confidence"], flaky["status"]) == (
        "memory",
        0.95,
        "flaky_confirmed",
    )
    assert report["known_flaky"] == [flake]
    assert Memory("acme", "qa-runs", "billing-api").get("flaky")[flake]["confirmed"] == 2
    assert all(r.status == "completed" for r in results)


def test_a_remembered_flake_that_fails_its_rerun_is_forgotten(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    from agents import Memory

    # Pretend the real bug once passed a rerun: memory vouches for it, the rerun refutes it.
    bug = "tests/test_money.py::test_round_half_up"
    Memory("acme", "qa-runs", "billing-api").set("flaky", {bug: {"confirmed": 1}})
    run_round(["billing-api"], "r1", tmp_path, "acme")
    report = load_report(tmp_path, "acme", "billing-api", "r1")
    entry = next(f for f in report["failures"] if f["test"] == bug)
    assert (entry["source"], entry["status"]) == ("memory", "rerun_failed")
    assert bug not in Memory("acme", "qa-runs", "billing-api").get("flaky")


@pytest.mark.postgres
def test_a_round_on_postgres(postgres_url: str, model_server: Any, tmp_path: Path) -> None:
    results = run_round(["inventory"], "pg", tmp_path, "acme")
    assert [r.status for r in results] == ["completed", "completed"]
    report = load_report(tmp_path, "acme", "inventory", "pg")
    assert {f["test"]: f["kind"] for f in report["failures"]} == GROUND_TRUTH["inventory"]


def test_a_run_without_its_project_as_subject_is_refused(
    sqlite_url: str, model_server: Any
) -> None:
    result = qa.batch(
        [{"project": "geo-utils", "shard": 0, "shards": 1, "round": "r1"}], tenant="acme"
    )[0]
    assert result.status == "failed"
    assert "needs subject='geo-utils'" in (result.error or "")


def test_the_cli_runs_the_bundled_sample_lines(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    # Two projects' lines of the bundled file (the whole file is what the README shows).
    lines = [
        line
        for line in SAMPLE_INPUTS.read_text().splitlines()
        if json.loads(line)["project"] in ("inventory", "auth-service")
    ]
    assert len(lines) == 4
    source = tmp_path / "qa.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["run", "qa-runs", "--input", str(source), "--tenant", "cli"])
    assert result.exit_code == 0, result.output
    from agents.store import queries
    from flows.qa_runs import reports_root

    runs = queries.runs(tenant="cli", agent="qa-runs")
    assert sorted((r.subject, r.status) for r in runs) == [
        ("auth-service", "completed"),
        ("auth-service", "completed"),
        ("inventory", "completed"),
        ("inventory", "completed"),
    ]

    report = load_report(reports_root(), "cli", "auth-service", "sample")
    assert {f["test"]: f["kind"] for f in report["failures"]} == GROUND_TRUTH["auth-service"]


def test_the_deployable_flow_shards_runs_and_summarises(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    summary = asyncio.run(
        qa_runs_flow(
            projects=["geo-utils", "notifications"],
            tenant="acme",
            round="flow-1",
            shard_size=3,
            reports_dir=str(tmp_path),
        )
    )
    assert summary["runs"] == {"shards": 4, "completed": 4}
    assert summary["projects"]["geo-utils"]["status"] == "green"
    notifications = summary["projects"]["notifications"]
    assert notifications["status"] == "red"
    assert notifications["by_kind"]["environment"] == 1
    assert Path(notifications["report"]).exists()
    artifact = read_artifact(reports.artifact_key("acme", "summary"))
    assert "| notifications | red | 5 | 1 |" in str(artifact.data)


def _task_runs(name_prefix: str) -> list[str]:
    from prefect import get_client
    from prefect.client.schemas.filters import TaskRunFilter, TaskRunFilterName

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=name_prefix)), limit=200
        )
    return [r.name for r in runs]


def _dice_project(root: Path) -> Path:
    """A one-module project whose failing test draws random numbers: its traceback only shows
    a failed assertion, its source shows why it is not a bug in `dice`."""
    project = root / "dice"
    (project / "tests").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\ntestpaths = tests\npythonpath = .\n")
    (project / "dice.py").write_text("def roll(rng) -> int:\n    return rng.randint(1, 6)\n")
    (project / "tests" / "test_dice.py").write_text(
        textwrap.dedent(
            """\
            import random

            import dice


            def test_roll_in_range() -> None:
                assert 1 <= dice.roll(random.Random(3)) <= 6


            def test_two_rolls_match() -> None:
                first, second = dice.roll(random.Random()), dice.roll(random.Random())
                assert first == second == 7
            """
        )
    )
    return project


def test_triage_reads_the_test_source_and_the_code_under_test_first(
    sqlite_url: str, model_server: Any, tmp_path: Path
) -> None:
    from agents import decisions

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    run_round(["billing-api"], "r1", tmp_path, tenant)
    rows = decisions.query(tenant=tenant, agent="qa-runs", subject="billing-api")
    calls = [c for row in rows for c in row.tool_calls or []]
    by_tool = {(c["tool"], c["arguments"]["test_id"]): c for c in calls if c["status"] == "ok"}
    bug = "tests/test_money.py::test_round_half_up"
    source = by_tool[("read_test_source", bug)]
    assert source["result"].startswith("# tests/test_money.py, lines 18-19")
    assert "assert money.round_half_up(0.125, 2) == 0.13" in source["result"]
    code = by_tool[("read_code_under_test", bug)]
    assert "def round_half_up(value: float, digits: int) -> float:" in code["result"]
    assert {c["turn"] for c in calls} == {1}  # both tools in the first turn, for each failure
    assert len(calls) == 4  # two failures, two tools each
    assert "qa-runs.triage.read_test_source[billing-api]" in _task_runs("qa-runs.triage.read_")
    report = load_report(tmp_path, tenant, "billing-api", "r1")
    verdict = next(f for f in report["failures"] if f["test"] == bug)
    assert verdict["kind"] == "real_bug"
    assert "read_test_source" in verdict["rationale"]

    # Another directory of projects (remembered per project by `outcomes`): the traceback
    # shows a failed assertion, the test's source shows the random draws: flaky, not a bug.
    projects = tmp_path / "projects"
    _dice_project(projects)
    inputs = plan(["dice"], round="r1", projects_dir=str(projects), reports_dir=str(tmp_path))
    (result,) = qa.batch(inputs, tenant=tenant)
    assert result.ok, result.error
    (verdict,) = result.outputs["triage"].verdicts
    assert verdict.nodeid == "tests/test_dice.py::test_two_rolls_match"
    (failure,) = result.outputs["outcomes"].failures
    assert "random." not in failure_prompt(failure)
    assert (verdict.kind, verdict.confidence) == ("flaky", 0.8)
    assert "'random.'" in verdict.rationale
    # Suspected flaky, rerun, failed again: reported for a person to look at.
    assert result.outputs["rerun"].failed == [verdict.nodeid]


@pytest.fixture
def wandering_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """A model server whose rules make the model ask for files outside the project."""
    from agents.modelserver import ModelServer
    from agents.settings import reload_settings

    rules = [
        {
            "when": {"schema": "FailureVerdict"},
            "call": [
                {
                    "tool": "read_test_source",
                    "arguments": {"test_id": "../billing-api/tests/test_money.py::test_add_tax"},
                },
                {"tool": "read_code_under_test", "arguments": {"test_id": "/etc/hosts::x"}},
            ],
        },
        {"when": {"schema": "FailureVerdict"}, "set": {"kind": "environment", "confidence": 0.9}},
    ]
    with ModelServer(port=0, rules=rules) as server:
        monkeypatch.setenv("STALWART_MODEL_URL", server.url)
        monkeypatch.setenv("STALWART_API_KEY", "sk-test-not-a-real-key-0000000000000000000")
        reload_settings()
        yield server
    reload_settings()


def test_the_source_tools_refuse_paths_outside_the_project(
    sqlite_url: str, wandering_model: Any, tmp_path: Path
) -> None:
    from agents import decisions

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    inputs = plan(["inventory"], round="r1", reports_dir=str(tmp_path))
    results = qa.batch(inputs, tenant=tenant)
    assert all(r.ok for r in results), [r.error for r in results]
    calls = [
        c
        for row in decisions.query(tenant=tenant, agent="qa-runs", subject="inventory")
        for c in row.tool_calls or []
    ]
    # Each refused (the model tried each call twice, then answered): nothing was read.
    assert len(calls) == 4
    assert {c["status"] for c in calls} == {"error"}
    assert all("is outside the project directory" in c["result"] for c in calls), calls
    assert not any("def test_add_tax" in c["result"] or "localhost" in c["result"] for c in calls)
    report = load_report(tmp_path, tenant, "inventory", "r1")
    assert [f["kind"] for f in report["failures"]] == ["environment"]
