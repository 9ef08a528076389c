"""Run rows as listings show them: a dead execution ends `crashed` once a later execution of its
run key ends, listings count run keys unless asked for the history, a cut listing says so."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from typer.testing import CliRunner

from agents.cli import app
from agents.store import queries
from agents.store.records import RecordWriter
from agents.store.tables import AgentRun, utcnow

cli = CliRunner()


def _run(tenant: str, key: str, flow_run: str, *, minutes_ago: float = 0) -> AgentRun:
    return AgentRun(
        tenant=tenant,
        agent="listing",
        run_key=key,
        subject=key,
        status="running",
        inputs_digest="0" * 64,
        flow_run_id=flow_run,
        started_at=utcnow() - timedelta(minutes=minutes_ago),
    )


def _statuses(tenant: str, url: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for row in queries.runs(tenant=tenant, limit=1000, url=url):
        found.setdefault(row.run_key, []).append(row.status)
    return found


def test_a_later_execution_ends_the_dead_one_crashed_naming_itself(
    db_url: str, new_tenant: str
) -> None:
    writer = RecordWriter(url=db_url)
    dead = [_run(new_tenant, key, "flow-1", minutes_ago=5) for key in ("a", "b", "c")]
    for run in dead:  # the killed process flushed their start rows, never their ends
        writer.start_run(run)
    writer.flush()

    later = RecordWriter(url=db_url)
    rerun_a, rerun_b, rerun_c = (_run(new_tenant, k, "flow-2") for k in ("a", "b", "c"))
    twin = _run(new_tenant, "c", "flow-1", minutes_ago=1)  # a second input of the dead batch
    for run in (rerun_a, rerun_b, rerun_c, twin):
        later.start_run(run)
    later.end_run(rerun_a.id, status="completed")
    later.end_run(rerun_b.id, status="conflict")  # a live twin holds the action: not dead
    later.end_run(twin.id, status="failed")
    later.flush()

    rows = {r.id: r for r in queries.runs(tenant=new_tenant, limit=100, url=db_url)}
    assert rows[dead[0].id].status == "crashed"
    assert rows[dead[0].id].error is not None
    assert rows[dead[0].id].error.startswith(f"superseded by run {rerun_a.id} of flow run flow-2")
    assert rows[dead[0].id].finished_at is not None
    assert rows[dead[1].id].status == "running"  # the conflict says its owner may be alive
    # Same flow run: both inputs of one batch, never each other's dead execution.
    assert rows[dead[2].id].status == "running"
    later.end_run(rerun_c.id, status="completed")
    later.flush()
    rows = {r.id: r for r in queries.runs(tenant=new_tenant, limit=100, url=db_url)}
    assert rows[dead[2].id].status == "crashed" and rerun_c.id in (rows[dead[2].id].error or "")
    assert rows[twin.id].status == "failed"  # it ended: an end is never overwritten


def test_listings_count_run_keys_unless_asked_for_history(db_url: str, new_tenant: str) -> None:
    writer = RecordWriter(url=db_url)
    first = [_run(new_tenant, k, "flow-1", minutes_ago=5) for k in ("a", "b", "c")]
    second = [_run(new_tenant, k, "flow-2", minutes_ago=1) for k in ("a", "b")]
    for run in (*first, *second):
        writer.start_run(run)
    writer.end_run(first[0].id, status="failed")
    writer.end_run(first[2].id, status="failed")
    writer.end_run(second[0].id, status="completed")
    writer.end_run(second[1].id, status="failed")
    writer.flush()

    latest = queries.runs(tenant=new_tenant, latest=True, url=db_url)
    assert sorted((r.run_key, r.status) for r in latest) == [
        ("a", "completed"),
        ("b", "failed"),
        ("c", "failed"),
    ]
    assert len(queries.runs(tenant=new_tenant, url=db_url)) == 5
    failed_now = queries.runs(tenant=new_tenant, status="failed", latest=True, url=db_url)
    assert sorted(r.run_key for r in failed_now) == ["b", "c"]  # a failed once, then completed
    assert [r.started_at for r in latest] == sorted((r.started_at for r in latest), reverse=True)


@pytest.fixture
def listing_db(sqlite_url: str, new_tenant: str) -> str:
    """Six run keys of `new_tenant`, one of them run twice (the first time it crashed)."""
    writer = RecordWriter()
    for i in range(6):
        writer.start_run(_run(new_tenant, f"k{i}", "flow-1", minutes_ago=10 - i))
    again = _run(new_tenant, "k0", "flow-2")
    writer.start_run(again)
    writer.end_run(again.id, status="completed")
    writer.flush()
    return new_tenant


def _json_rows(output: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in output.splitlines() if line.startswith("{")]


def test_the_runs_command_lists_run_keys_history_on_demand_and_says_when_cut(
    listing_db: str,
) -> None:
    tenant = listing_db
    listed = cli.invoke(app, ["runs", "--tenant", tenant, "--json"])
    assert listed.exit_code == 0, listed.output
    rows = _json_rows(listed.output)
    assert len(rows) == 6 and "truncated" not in listed.output
    assert sorted(str(r["status"]) for r in rows) == ["completed"] + ["running"] * 5

    history = _json_rows(cli.invoke(app, ["runs", "-t", tenant, "--history", "--json"]).output)
    assert len(history) == 7
    assert [r["status"] for r in history if r["run_key"] == "k0"] == ["completed", "crashed"]

    cut = cli.invoke(app, ["runs", "-t", tenant, "--limit", "4", "--json"])
    assert len(_json_rows(cut.output)) == 4
    assert "truncated: the 4 newest shown" in cut.output
    exact = cli.invoke(app, ["runs", "-t", tenant, "--limit", "6"])
    assert "truncated" not in exact.output
    table = cli.invoke(app, ["runs", "-t", tenant, "--limit", "2"])
    assert "truncated" in table.output
