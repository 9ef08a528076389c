"""The decision log: record, query (tenant-scoped), outcomes, cost, export, summaries, the
`stalwart decisions` / `stalwart prune` commands, and batched retention.

Database tests run on SQLite and PostgreSQL (`state_db`); the PostgreSQL database is shared by
the session, so every test writes under its own unique tenant.
"""

from __future__ import annotations

import asyncio
import io
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from agents import decisions
from agents.cli import app
from agents.cli._utilities import console as cli_console
from agents.store import (
    ActionRecord,
    AgentRun,
    DecisionRecord,
    StepResult,
    StepRun,
    get_engine,
    prune,
    record_decisions,
    record_run_start,
    record_steps,
    session,
)
from agents.store.decisions import find_decisions

runner = CliRunner()
SECRET = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f"


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _decision(tenant: str, **fields: Any) -> DecisionRecord:
    fields.setdefault("agent", "triage")
    fields.setdefault("step", "route")
    fields.setdefault("input_digest", uuid.uuid4().hex * 2)
    return DecisionRecord(tenant=tenant, **fields)


def _now() -> datetime:
    return datetime.now(UTC)


@pytest.fixture
def log(state_db: str, tenant: str) -> dict[str, DecisionRecord]:
    """Six decisions of one tenant, one minute apart (d0 newest ... d5 oldest, 2 days ago)."""
    now = _now()
    rows = {
        "d0": _decision(tenant, confidence=0.95, subject="s1", created_at=now),
        "d1": _decision(
            tenant,
            confidence=0.65,
            path="human",
            reviewer="alice",
            subject="s2",
            created_at=now - timedelta(minutes=1),
        ),
        "d2": _decision(
            tenant, step="classify", confidence=0.5, created_at=now - timedelta(minutes=2)
        ),
        "d3": _decision(
            tenant,
            agent="billing",
            confidence=0.7,
            path="fallback_model",
            created_at=now - timedelta(hours=3),
        ),
        "d4": _decision(
            tenant, confidence=None, path="default", created_at=now - timedelta(hours=7)
        ),
        "d5": _decision(
            tenant,
            confidence=0.2,
            path="rejected",
            subject="s1",
            output={"queue": "other", "tags": ["a", 1, None]},
            input_snapshot={"text": "hello"},
            created_at=now - timedelta(days=2),
        ),
    }
    record_decisions(list(rows.values()), url=state_db)
    return rows


def _ids(rows: list[DecisionRecord], log: dict[str, DecisionRecord]) -> list[str]:
    return _names([row.id for row in rows], log)


def _names(ids: list[str], log: dict[str, DecisionRecord]) -> list[str]:
    """The fixture names (d0...d5) of decision ids, in order."""
    by_id = {record.id: name for name, record in log.items()}
    return [by_id[i] for i in ids]


# -- query ---------------------------------------------------------------------------------------


def test_query_returns_newest_first_with_all_fields(
    log: dict[str, DecisionRecord], tenant: str
) -> None:
    rows = decisions.query(tenant=tenant)
    assert _ids(rows, log) == ["d0", "d1", "d2", "d3", "d4", "d5"]
    d5 = rows[-1]
    assert d5.output == {"queue": "other", "tags": ["a", 1, None]}
    assert d5.input_snapshot == {"text": "hello"}
    assert d5.created_at.tzinfo is not None
    assert d5.created_at.utcoffset() == timedelta(0)
    assert abs(d5.created_at - log["d5"].created_at) < timedelta(milliseconds=1)


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"agent": "billing"}, ["d3"]),
        ({"agent": "triage"}, ["d0", "d1", "d2", "d4", "d5"]),
        ({"step": "classify"}, ["d2"]),
        ({"below": 0.7}, ["d1", "d2", "d5"]),  # strictly below; no confidence: excluded
        ({"below": 0.65}, ["d2", "d5"]),
        ({"path": "human"}, ["d1"]),
        ({"path": "direct"}, ["d0", "d2"]),
        ({"subject": "s1"}, ["d0", "d5"]),
        ({"since": "30m"}, ["d0", "d1", "d2"]),
        ({"since": "6h"}, ["d0", "d1", "d2", "d3"]),
        ({"since": "1d"}, ["d0", "d1", "d2", "d3", "d4"]),
        ({"since": timedelta(hours=4)}, ["d0", "d1", "d2", "d3"]),
        ({"limit": 2}, ["d0", "d1"]),
        ({"agent": "triage", "since": "1d", "below": 0.9}, ["d1", "d2"]),
        ({"agent": "nobody"}, []),
    ],
)
def test_query_filters(
    log: dict[str, DecisionRecord], tenant: str, filters: dict[str, Any], expected: list[str]
) -> None:
    assert _ids(decisions.query(tenant=tenant, **filters), log) == expected


def test_query_since_accepts_iso_strings_and_datetimes(
    log: dict[str, DecisionRecord], tenant: str
) -> None:
    cutoff = _now() - timedelta(hours=5)
    assert _ids(decisions.query(tenant=tenant, since=cutoff.isoformat()), log) == [
        "d0",
        "d1",
        "d2",
        "d3",
    ]
    naive_utc = cutoff.replace(tzinfo=None)
    assert len(decisions.query(tenant=tenant, since=naive_utc)) == 4
    paris = cutoff.astimezone(ZoneInfo("Europe/Paris"))
    assert len(decisions.query(tenant=tenant, since=paris)) == 4
    day = (_now() - timedelta(days=3)).date().isoformat()
    assert len(decisions.query(tenant=tenant, since=day)) == 6


def test_get_and_set_outcome(log: dict[str, DecisionRecord], tenant: str) -> None:
    d1 = log["d1"]
    found = decisions.get(d1.id, tenant=tenant)
    assert found is not None and found.reviewer == "alice" and found.outcome is None
    before = _now()
    assert decisions.set_outcome(d1.id, tenant=tenant, outcome={"correct": False, "label": "x"})
    found = decisions.get(d1.id, tenant=tenant)
    assert found is not None
    assert found.outcome == {"correct": False, "label": "x"}
    assert found.outcome_at is not None and found.outcome_at >= before - timedelta(seconds=1)
    assert found.outcome_at.utcoffset() == timedelta(0)
    assert decisions.set_outcome(d1.id, tenant=tenant, outcome=True)
    assert decisions.get(d1.id, tenant=tenant).outcome is True  # type: ignore[union-attr]
    assert not decisions.set_outcome("0" * 32, tenant=tenant, outcome=1)
    assert decisions.get("0" * 32, tenant=tenant) is None
    with pytest.raises(TypeError):
        decisions.set_outcome(d1.id, tenant=tenant, outcome=object())


# -- tenant isolation ----------------------------------------------------------------------------


def test_tenants_never_see_or_touch_each_other(
    log: dict[str, DecisionRecord], tenant: str, state_db: str
) -> None:
    other = f"{tenant}-b"
    theirs = _decision(other, confidence=0.1, subject="s1")
    record_decisions([theirs])
    ours = {row.id for row in log.values()}

    assert {row.id for row in decisions.query(tenant=tenant, limit=1000)} == ours
    assert [row.id for row in decisions.query(tenant=other, limit=1000)] == [theirs.id]
    for filters in ({"below": 0.5}, {"subject": "s1"}, {"agent": "triage"}, {"since": "1d"}):
        assert theirs.id not in {r.id for r in decisions.query(tenant=tenant, **filters)}
        assert ours.isdisjoint(r.id for r in decisions.query(tenant=other, **filters))

    assert decisions.get(theirs.id, tenant=tenant) is None
    assert decisions.get(log["d0"].id, tenant=other) is None
    assert not decisions.set_outcome(log["d0"].id, tenant=other, outcome="hijacked")
    assert not decisions.set_outcome(theirs.id, tenant=tenant, outcome="hijacked")
    d0 = decisions.get(log["d0"].id, tenant=tenant)
    assert d0 is not None and d0.outcome is None and d0.outcome_at is None
    mine = decisions.get(theirs.id, tenant=other)
    assert mine is not None and mine.outcome is None

    result = runner.invoke(app, ["decisions", "--tenant", other, "--json", "--limit", "1000"])
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.output.splitlines()] == [theirs.id]


# -- cost ----------------------------------------------------------------------------------------


# -- export and summaries ------------------------------------------------------------------------


def test_export_jsonl_round_trip(
    log: dict[str, DecisionRecord], tenant: str, tmp_path: Path
) -> None:
    rows = decisions.query(tenant=tenant)
    target = tmp_path / "decisions.jsonl"
    assert decisions.export_jsonl(rows, target) == 6
    lines = target.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 6
    objects = [json.loads(line) for line in lines]
    assert [o["id"] for o in objects] == [r.id for r in rows]
    assert datetime.fromisoformat(objects[0]["created_at"]) == rows[0].created_at
    for row, obj in zip(rows, objects, strict=True):
        back = DecisionRecord.model_validate(obj)
        assert back.model_dump(mode="json") == row.model_dump(mode="json")

    buffer = io.StringIO()
    assert decisions.export_jsonl(rows[:2], buffer) == 2
    assert buffer.getvalue().splitlines() == lines[:2]
    assert decisions.export_jsonl([], tmp_path / "empty.jsonl") == 0
    assert (tmp_path / "empty.jsonl").read_text() == ""


@pytest.mark.usefixtures("prefect_api")
def test_publish_artifact_creates_a_prefect_table_artifact() -> None:
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    key = f"decisions-{uuid.uuid4().hex[:8]}"
    rows = [_decision("acme", rationale=f"uses {SECRET}", confidence=0.3)]

    @flow
    async def publish() -> None:
        await decisions.publish_artifact(rows, key=key)

    async def publish_and_read() -> list[Any]:
        await publish()
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    artifacts = asyncio.run(publish_and_read())
    assert len(artifacts) == 1
    assert artifacts[0].type == "table"
    assert "0.30" in str(artifacts[0].data)
    assert SECRET not in str(artifacts[0].data)


# -- CLI -----------------------------------------------------------------------------------------


def test_cli_decisions_json_and_filters(log: dict[str, DecisionRecord], tenant: str) -> None:
    def ids(*args: str) -> list[str]:
        result = runner.invoke(app, ["decisions", "--tenant", tenant, "--json", *args])
        assert result.exit_code == 0, result.output
        objects = [json.loads(line) for line in result.output.splitlines()]
        assert all(o["tenant"] == tenant for o in objects)
        return _names([o["id"] for o in objects], log)

    assert ids() == ["d0", "d1", "d2", "d3", "d4", "d5"]
    assert ids("--agent", "billing") == ["d3"]
    assert ids("--step", "classify") == ["d2"]
    assert ids("--since", "1d") == ["d0", "d1", "d2", "d3", "d4"]
    assert ids("--below", "0.7") == ["d1", "d2", "d5"]
    assert ids("--path", "human") == ["d1"]
    assert ids("--subject", "s1") == ["d0", "d5"]
    assert ids("--limit", "3") == ["d0", "d1", "d2"]
    assert ids("--agent", "triage", "--since", "6h", "--below", "0.9") == ["d1", "d2"]
    assert ids("--tenant", f"{tenant}-none") == []


def test_cli_decisions_table_export_and_errors(
    log: dict[str, DecisionRecord], tenant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_decisions([_decision(tenant, rationale=f"pasted {SECRET} [bold]x[/bold]")])
    # A wide terminal. The CLI's console is made at import: COLUMNS set now would only count if
    # no earlier test in this process imported it while COLUMNS was set.
    monkeypatch.setattr(cli_console, "_width", 400)
    monkeypatch.setattr(cli_console, "_height", 50)
    result = runner.invoke(app, ["decisions", "--tenant", tenant])
    assert result.exit_code == 0, result.output
    assert f"decisions · tenant {tenant}" in result.output
    assert log["d3"].id in result.output and "billing" in result.output
    assert SECRET not in result.output
    assert "[bold]x[/bold]" in result.output  # shown as text, not as rich markup

    target = tmp_path / "out.jsonl"
    result = runner.invoke(
        app, ["decisions", "--tenant", tenant, "--below", "0.6", "--export", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert f"wrote 2 decision(s) to {target}" in result.output
    exported = [json.loads(line)["id"] for line in target.read_text().splitlines()]
    assert exported == [log["d2"].id, log["d5"].id]

    result = runner.invoke(
        app, ["decisions", "--tenant", tenant, "--json", "--below", "0.6", "--export", str(target)]
    )
    assert result.exit_code == 0, result.output
    assert [json.loads(line)["id"] for line in result.stdout.splitlines()] == exported

    result = runner.invoke(app, ["decisions", "--tenant", tenant, "--since", "someday"])
    assert result.exit_code == 1
    assert "since" in result.output


# -- retention -----------------------------------------------------------------------------------


def _plant(tenant: str, age: timedelta, count: int) -> dict[str, list[str]]:
    """`count` rows of every pruned kind (plus 2 step runs per agent run), all `age` old."""
    at = _now() - age
    made: dict[str, list[str]] = {k: [] for k in ("run", "step", "decision", "result", "action")}
    steps: list[StepRun] = []
    for i in range(count):
        run = AgentRun(
            tenant=tenant,
            agent="triage",
            run_key=f"k{i}",
            status="completed",
            inputs_digest="0" * 64,
            started_at=at,
        )
        record_run_start(run)
        made["run"].append(run.id)
        for layer in ("perception", "reasoning"):
            step = StepRun(
                tenant=tenant,
                agent="triage",
                agent_run_id=run.id,
                step=layer,
                layer=layer,
                status="completed",
                started_at=at,
            )
            steps.append(step)
            made["step"].append(step.id)
    record_steps(steps)
    records = [_decision(tenant, created_at=at) for _ in range(count)]
    record_decisions(records)
    made["decision"] = [r.id for r in records]
    with session() as s:
        for i in range(count):
            key = f"{tenant}-{uuid.uuid4().hex}"
            s.add(StepResult(key=key, tenant=tenant, content=b"x", created_at=at))
            made["result"].append(key)
            action_key = uuid.uuid4().hex
            s.add(
                ActionRecord(
                    idempotency_key=action_key,
                    tenant=tenant,
                    agent="triage",
                    run_key=f"k{i}",
                    step="notify",
                    status="completed",
                    result={"ok": True},
                    started_at=at,
                    completed_at=at,
                )
            )
            made["action"].append(action_key)
    return made


def _existing(made: dict[str, list[str]]) -> dict[str, int]:
    specs: dict[str, tuple[type[Any], Any]] = {
        "run": (AgentRun, AgentRun.id),
        "step": (StepRun, StepRun.id),
        "decision": (DecisionRecord, DecisionRecord.id),
        "result": (StepResult, StepResult.key),
        "action": (ActionRecord, ActionRecord.idempotency_key),
    }
    counts: dict[str, int] = {}
    with session() as s:
        for kind in made:
            table, key = specs[kind]
            query = sa.select(sa.func.count()).select_from(table).where(key.in_(made[kind]))
            counts[kind] = s.execute(query).scalar_one()
    return counts


@pytest.fixture
def deletes(state_db: str) -> Iterator[list[str]]:
    """The DELETE statements run on the state database during the test."""
    statements: list[str] = []
    engine = get_engine(state_db)

    def on_execute(*args: Any) -> None:
        statement = args[2]
        if statement.lstrip().upper().startswith("DELETE"):
            statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", on_execute)
    yield statements
    sa.event.remove(engine, "before_cursor_execute", on_execute)


def test_prune_deletes_only_old_rows_of_one_tenant_in_batches(
    state_db: str, tenant: str, deletes: list[str]
) -> None:
    other = f"{tenant}-b"
    old = _plant(tenant, timedelta(days=100), 17)
    new = _plant(tenant, timedelta(days=10), 3)
    others_old = _plant(other, timedelta(days=100), 2)
    in_flight = uuid.uuid4().hex
    with session() as s:  # an old action still in flight: kept
        s.add(
            ActionRecord(
                idempotency_key=in_flight,
                tenant=tenant,
                agent="triage",
                run_key="k",
                step="notify",
                status="started",
                started_at=_now() - timedelta(days=100),
            )
        )

    counts = prune(older_than=timedelta(days=90), batch_size=7, tenant=tenant)

    assert counts == {
        "agent_run": 17,
        "step_run": 34,
        "decision_record": 17,
        "step_result": 17,
        "action_record": 17,
    }
    assert _existing(old) == dict.fromkeys(old, 0)
    assert _existing(new) == {"run": 3, "step": 6, "decision": 3, "result": 3, "action": 3}
    assert _existing(others_old) == {"run": 2, "step": 4, "decision": 2, "result": 2, "action": 2}
    assert _existing({"action": [in_flight]}) == {"action": 1}
    decision_deletes = [s for s in deletes if "decision_record" in s]
    assert len(decision_deletes) == 3  # 7 + 7 + 3
    assert len([s for s in deletes if "agent_run" in s and "step_run" not in s]) == 3

    assert prune(older_than=timedelta(days=90), batch_size=7, tenant=tenant) == dict.fromkeys(
        counts, 0
    )
    assert len(decisions.query(tenant=tenant, limit=1000)) == 3


def test_prune_of_every_tenant_and_orphan_steps(state_db: str, tenant: str) -> None:
    old = _plant(tenant, timedelta(days=40), 4)
    others_old = _plant(f"{tenant}-b", timedelta(days=40), 3)
    new = _plant(tenant, timedelta(hours=1), 2)
    orphan = StepRun(
        tenant=tenant,
        agent="triage",
        agent_run_id="f" * 32,
        step="s",
        layer="action",
        status="failed",
        started_at=_now() - timedelta(days=40),
    )
    record_steps([orphan])

    counts = prune(older_than=timedelta(days=30), batch_size=3)  # every tenant

    assert counts["agent_run"] >= 7 and counts["decision_record"] >= 7
    assert counts["step_run"] >= 15
    assert _existing(old) == dict.fromkeys(old, 0)
    assert _existing(others_old) == dict.fromkeys(old, 0)
    assert _existing({"step": [orphan.id]}) == {"step": 0}
    assert _existing(new) == {"run": 2, "step": 4, "decision": 2, "result": 2, "action": 2}


def test_cli_prune(state_db: str, tenant: str) -> None:
    old = _plant(tenant, timedelta(days=100), 9)
    new = _plant(tenant, timedelta(days=1), 2)
    args = ["prune", "--older-than", "90d", "--tenant", tenant, "--batch-size", "4"]

    result = runner.invoke(app, args, input="n\n")
    assert result.exit_code != 0
    assert _existing(old)["decision"] == 9  # not confirmed: nothing deleted

    result = runner.invoke(app, [*args, "--yes"])
    assert result.exit_code == 0, result.output
    for name, count in (("agent_run", 9), ("step_run", 18), ("decision_record", 9)):
        assert name in result.output and str(count) in result.output
    assert _existing(old) == dict.fromkeys(old, 0)
    assert _existing(new)["decision"] == 2

    result = runner.invoke(app, [*args, "--yes", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {
        "agent_run": 0,
        "step_run": 0,
        "decision_record": 0,
        "step_result": 0,
        "action_record": 0,
    }

    result = runner.invoke(app, ["prune", "--older-than", "soon", "--yes"])
    assert result.exit_code == 1 and "older-than" in result.output


def test_find_decisions_is_the_store_level_query(
    log: dict[str, DecisionRecord], tenant: str
) -> None:
    since = _now() - timedelta(hours=1)
    rows = find_decisions(tenant=tenant, since=since, below=0.9)
    assert _ids(rows, log) == ["d1", "d2"]


def test_a_rerun_finds_logged_decisions_through_an_index(sqlite_url: str) -> None:
    """A rerun looks up one logged decision per cached reasoning step: the query must search
    the (tenant, agent, run_key) index, not scan the table (a row-value IN over the five key
    columns did, on SQLite: 0.35 ms at 1,000 decisions, growing with the log)."""
    from sqlalchemy.dialects import sqlite

    from agents.store import upgrade
    from agents.store.decisions import _LOGGED
    from agents.store.engine import session

    upgrade(sqlite_url)
    query = _LOGGED.params(tenant="acme", agent="triage", run_keys=["k1", "k2"])
    sql = str(query.compile(dialect=sqlite.dialect(), compile_kwargs={"literal_binds": True}))
    with session(sqlite_url) as s:
        plan = [row[-1] for row in s.connection().exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}")]
    assert any("USING INDEX ix_decision_record_tenant_agent_run_key" in p for p in plan), plan
    assert not any(p.startswith("SCAN decision_record") for p in plan), plan
