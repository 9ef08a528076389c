"""Tests of agents.store: schema, engines, memory, the action ledger, tenant-scoped queries.

Every database test runs on SQLite (a temporary file) and PostgreSQL (a fresh database per
session; marker `postgres`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from pydantic import BaseModel

from agents.errors import ConfigurationError, MemoryConflict
from agents.settings import temporary_settings
from agents.store import (
    ActionRecord,
    AgentRun,
    Memory,
    StepRun,
    actions,
    current_revision,
    downgrade,
    get_engine,
    head_revision,
    ledger,
    memory,
    record_run_end,
    record_run_start,
    record_steps,
    runs,
    session,
    steps,
    upgrade,
)
from agents.store.engine import dispose_engines, normalize_url

ROOT = Path(__file__).resolve().parents[2]
TABLES = {
    "agent_run",
    "step_run",
    "step_result",
    "memory_item",
    "action_record",
    "decision_record",
    "llm_cache",
    "circuit_state",
    "feedback",
    "threshold_change",
    "example_use",
}


# -- schema and engines ---------------------------------------------------------------------


def _table_names(url: str) -> set[str]:
    return set(sa.inspect(get_engine(url)).get_table_names())


def test_upgrade_creates_every_table_at_head(fresh_db_url: str) -> None:
    assert current_revision(fresh_db_url) is None
    upgrade(fresh_db_url)
    assert current_revision(fresh_db_url) == head_revision() == "0009"
    assert _table_names(fresh_db_url) >= TABLES | {"alembic_version"}
    upgrade(fresh_db_url)  # idempotent
    assert current_revision(fresh_db_url) == head_revision()


def test_migration_matches_the_models_exactly(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from sqlmodel import SQLModel

    with get_engine(db_url).connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, SQLModel.metadata)
    assert [d for d in diff if _is_store_diff(d)] == []


def _is_store_diff(diff: object) -> bool:
    # Other modules may declare their own SQLModel tables; only ours must match.
    text = repr(diff)
    return any(table in text for table in TABLES)


def test_indexes_and_unique_constraint_exist(db_url: str) -> None:
    inspector = sa.inspect(get_engine(db_url))
    agent_run_indexes = {ix["name"] for ix in inspector.get_indexes("agent_run")}
    assert {
        "ix_agent_run_tenant",
        "ix_agent_run_subject",
        "ix_agent_run_flow_run_id",
        "ix_agent_run_tenant_agent_started",
        "ix_agent_run_tenant_agent_run_key",
    } <= agent_run_indexes
    uniques = {uc["name"] for uc in inspector.get_unique_constraints("memory_item")}
    assert "uq_memory_item_scope_key" in uniques


def test_downgrade_to_base_and_back(fresh_db_url: str) -> None:
    upgrade(fresh_db_url)
    downgrade(fresh_db_url, revision="base")
    assert current_revision(fresh_db_url) is None
    assert not (_table_names_raw(fresh_db_url) & TABLES)
    upgrade(fresh_db_url)
    assert current_revision(fresh_db_url) == head_revision()


def _table_names_raw(url: str) -> set[str]:
    engine = sa.create_engine(normalize_url(url), poolclass=sa.pool.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_postgres_is_never_created_implicitly(fresh_pg_url: str) -> None:
    url = fresh_pg_url
    with pytest.raises(ConfigurationError, match="stalwart db upgrade"):
        get_engine(url)
    with pytest.raises(ConfigurationError, match="stalwart db upgrade"):
        Memory("t", "a", url=url).get("k")
    assert _table_names_raw(url) == set()  # nothing was created
    upgrade(url)
    assert Memory("t", "a", url=url).get("k", default=0) == 0


@pytest.mark.postgres
def test_postgres_pool_is_sized_by_the_settings(fresh_pg_url: str) -> None:
    upgrade(fresh_pg_url)
    dispose_engines()
    with temporary_settings(database_pool_size=2, database_max_overflow=1):
        engine = get_engine(fresh_pg_url)
    connections = [engine.connect() for _ in range(3)]
    try:
        assert engine.pool.size() == 2  # type: ignore[attr-defined]
        assert engine.pool.overflow() == 1  # type: ignore[attr-defined]
    finally:
        for connection in connections:
            connection.close()
        dispose_engines()


def test_unknown_revision_is_a_configuration_error(fresh_db_url: str) -> None:
    url = fresh_db_url
    upgrade(url)
    with get_engine(url).begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = 'from_the_future'")
    dispose_engines()
    with pytest.raises(ConfigurationError, match="does not know"):
        get_engine(url)


def test_unreachable_postgres_is_a_configuration_error_with_redacted_url() -> None:
    url = "postgresql://bob:hunter2@127.0.0.1:1/nowhere"
    with pytest.raises(ConfigurationError) as info:
        get_engine(url)
    assert "hunter2" not in str(info.value)
    assert "bob:***@" in str(info.value)


@pytest.mark.slow
def test_concurrent_processes_upgrade_the_same_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'race.db'}"
    code = "import sys; from agents.store.engine import upgrade; upgrade(sys.argv[1])"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code, url], env=env, stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    assert current_revision(url) == head_revision()


@pytest.mark.slow
def test_alembic_command_line_uses_settings_url(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'cli' / 'state.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STALWART_DATABASE_URL": url}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "alembic",
            "-c",
            str(ROOT / "migrations" / "alembic.ini"),
            "upgrade",
            "head",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert current_revision(url) == head_revision()


def test_session_commits_or_rolls_back(db_url: str, new_tenant: str) -> None:
    run = AgentRun(tenant=new_tenant, agent="a", run_key="k", status="running", inputs_digest="d")
    with pytest.raises(RuntimeError), session(db_url) as s:
        s.add(run)
        s.flush()
        raise RuntimeError("boom")
    assert runs(tenant=new_tenant, url=db_url) == []
    with session(db_url) as s:
        s.add(
            AgentRun(tenant=new_tenant, agent="a", run_key="k", status="running", inputs_digest="d")
        )
    assert len(runs(tenant=new_tenant, url=db_url)) == 1


# -- redact_url ---------------------------------------------------------------------------------


# -- memory -------------------------------------------------------------------------------------


class Profile(BaseModel):
    name: str
    since: datetime


def test_memory_round_trip_and_versions(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "triage", "customer-1", url=db_url)
    assert mem.get("plan") is None
    assert mem.get("plan", default="free") == "free"
    assert mem.get_item("plan") is None
    assert mem.set("plan", {"tier": "gold", "seats": [1, 2.5, None, True]}) == 1
    assert mem.get("plan") == {"tier": "gold", "seats": [1, 2.5, None, True]}
    assert mem.set("plan", "platinum") == 2
    item = mem.get_item("plan")
    assert item is not None
    assert (item.value, item.version, item.subject) == ("platinum", 2, "customer-1")
    assert item.updated_at.tzinfo is UTC
    mem.set("none", None)
    assert mem.get("none", default="x") is None
    assert mem.keys() == ["none", "plan"]
    assert mem.items() == {"none": None, "plan": "platinum"}
    assert mem.delete("plan") is True
    assert mem.delete("plan") is False
    assert mem.keys() == ["none"]


def test_memory_scopes_by_subject_and_agent(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "triage", url=db_url)
    assert mem.subject is None
    mem.set("k", "agent-wide")
    other = mem.for_subject("c-9")
    assert (other.tenant, other.agent, other.subject) == (new_tenant, "triage", "c-9")
    assert other.get("k") is None
    other.set("k", "about c-9")
    assert mem.get("k") == "agent-wide"
    assert Memory(new_tenant, "other-agent", url=db_url).get("k") is None
    rows = memory(tenant=new_tenant, agent="triage", url=db_url)
    assert {(r.subject, r.value) for r in rows} == {("", "agent-wide"), ("c-9", "about c-9")}
    assert [r.value for r in memory(tenant=new_tenant, subject="c-9", url=db_url)] == ["about c-9"]


def test_memory_values_must_be_json(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "a", url=db_url)
    profile = Profile(name="Ada", since=datetime(2024, 1, 2, tzinfo=UTC))
    mem.set("profile", profile)
    assert mem.get("profile") == {"name": "Ada", "since": "2024-01-02T00:00:00Z"}
    mem.set("nested", {"p": [profile]})
    assert mem.get("nested")["p"][0]["name"] == "Ada"
    for bad in [object(), {1: "int key"}, {"when": datetime.now(UTC)}, float("nan"), {1, 2}]:
        with pytest.raises(TypeError, match="JSON"):
            mem.set("bad", bad)
    assert mem.get("bad") is None


def test_memory_expected_version_conflicts(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "a", "s", url=db_url)
    assert mem.set("k", 1, expected_version=0) == 1
    with pytest.raises(MemoryConflict) as info:
        mem.set("k", 2, expected_version=0)  # must not exist yet
    assert (info.value.expected, info.value.found) == (0, 1)
    assert mem.set("k", 2, expected_version=1) == 2
    with pytest.raises(MemoryConflict) as info:
        mem.set("k", 3, expected_version=1)  # stale
    assert (info.value.key, info.value.expected, info.value.found) == ("k", 1, 2)
    with pytest.raises(MemoryConflict) as info:
        mem.set("absent", 3, expected_version=4)
    assert info.value.found is None
    assert mem.get("k") == 2
    assert mem.get("absent") is None


def test_memory_update_under_concurrent_threads(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "counter", url=db_url)
    barrier = threading.Barrier(8)

    def worker(_: int) -> None:
        barrier.wait()
        for _ in range(20):
            mem.update("n", lambda n: n + 1, default=0, retries=100)

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(worker, range(8)))
    item = mem.get_item("n")
    assert item is not None
    assert item.value == 160
    assert item.version == 160


def test_memory_last_writer_wins_bumps_version_under_concurrency(
    db_url: str, new_tenant: str
) -> None:
    mem = Memory(new_tenant, "lww", url=db_url)
    barrier = threading.Barrier(8)

    def worker(i: int) -> list[int]:
        barrier.wait()
        return [mem.set("k", i) for _ in range(10)]

    with ThreadPoolExecutor(8) as pool:
        versions = [v for vs in pool.map(worker, range(8)) for v in vs]
    assert sorted(versions) == list(range(1, 81))  # every write got its own version
    item = mem.get_item("k")
    assert item is not None and item.version == 80


def test_memory_update_gives_up_after_retries(
    db_url: str, new_tenant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    mem = Memory(new_tenant, "a", url=db_url)
    mem.set("k", 0)

    def racing(value: int) -> int:
        mem.set("k", 100)  # someone else writes in between, every time
        return value + 1

    with pytest.raises(MemoryConflict):
        mem.update("k", racing, retries=2)


def test_memory_async_twins(db_url: str, new_tenant: str) -> None:
    mem = Memory(new_tenant, "a", "s", url=db_url)

    async def main() -> None:
        assert await mem.aset("k", [1]) == 1
        assert await mem.aget("k") == [1]
        item = await mem.aget_item("k")
        assert item is not None and item.version == 1
        assert await mem.aupdate("k", lambda v: [*v, 2]) == [1, 2]
        await asyncio.gather(*(mem.aupdate("n", lambda n: n + 1, 0, 100) for _ in range(10)))
        assert await mem.aget("n") == 10
        assert await mem.akeys() == ["k", "n"]
        assert await mem.aitems() == {"k": [1, 2], "n": 10}
        assert await mem.adelete("k") is True

    asyncio.run(main())


# -- ledger -------------------------------------------------------------------------------------


def _claim(
    key: str, tenant: str, url: str, run_id: str | None = "r1", lease: float | None = None
) -> ActionRecord:
    return ledger.claim(
        key,
        tenant=tenant,
        agent="a",
        subject="s",
        run_key="rk",
        step="notify",
        agent_run_id=run_id,
        lease=lease,
        url=url,
    )


def test_ledger_claim_complete_and_in_doubt(db_url: str, new_tenant: str) -> None:
    key = ledger.idempotency_key(new_tenant, "a", "s", "rk", "notify")
    assert ledger.get(key, url=db_url) is None

    first = _claim(key, new_tenant, db_url, lease=0.4)
    assert (first.status, first.attempts, first.agent_run_id) == ("started", 1, "r1")
    assert (first.lease_owner, first.result) == ("r1", None)

    # The same execution claims again (a retry of its task): in doubt, same key.
    retry = _claim(key, new_tenant, db_url, lease=0.4)
    assert (retry.status, retry.attempts, retry.lease_owner) == ("started", 2, "r1")

    # Another execution after the lease ran out (the holder crashed): it takes the action over.
    time.sleep(0.5)
    t0 = time.monotonic()
    again = _claim(key, new_tenant, db_url, run_id="r2", lease=5)
    assert time.monotonic() - t0 < 1.0, "an expired lease is taken over at once"
    assert (again.status, again.attempts, again.lease_owner) == ("started", 3, "r2")
    assert again.agent_run_id == "r1"  # kept from the first claim

    ledger.complete(key, {"sent": True, "id": 7}, url=db_url)
    ledger.complete(key, {"sent": "twice"}, url=db_url)  # a repeated completion changes nothing
    done = ledger.get(key, url=db_url)
    assert done is not None
    assert (done.status, done.result, done.attempts) == ("completed", {"sent": True, "id": 7}, 3)
    assert done.completed_at is not None and done.completed_at.tzinfo is UTC

    # Claiming a completed action returns the stored result and does not count an attempt.
    after = _claim(key, new_tenant, db_url, run_id="r3")
    assert (after.status, after.result, after.attempts) == ("completed", {"sent": True, "id": 7}, 3)


def test_ledger_leases_share_one_renewer_and_a_released_lease_stays_released(
    db_url: str, new_tenant: str
) -> None:
    keys = [ledger.idempotency_key(new_tenant, "a", "s", "rk", f"many-{i}") for i in range(20)]
    for key in keys:
        _claim(key, new_tenant, db_url, run_id="holder", lease=0.6)
    with contextlib.ExitStack() as stack:
        lost = [stack.enter_context(ledger.hold(k, "holder", lease=0.6, url=db_url)) for k in keys]
        time.sleep(0.9)  # past the lease: only renewals keep them
        renewers = [t for t in threading.enumerate() if t.name.startswith("stalwart-lease")]
        assert len(renewers) == 1  # one thread for every held lease, not one per action
        assert not any(event.is_set() for event in lost)
        for key in keys:
            row = ledger.get(key, url=db_url)
            assert row is not None and row.lease_expires_at is not None
            assert row.lease_expires_at > datetime.now(UTC)
    # A failed action releases its lease right after `hold`: no late renewal undoes that.
    ledger.release(keys[0], "holder", url=db_url)
    time.sleep(0.4)  # more than a renewal period
    row = ledger.get(keys[0], url=db_url)
    assert row is not None and row.lease_expires_at is not None
    assert row.lease_expires_at <= datetime.now(UTC)


def test_ledger_live_lease_is_a_conflict(db_url: str, new_tenant: str) -> None:
    from agents.errors import ActionInProgress

    key = ledger.idempotency_key(new_tenant, "a", "s", "rk", "live")
    _claim(key, new_tenant, db_url, run_id="winner", lease=1.5)
    with ledger.hold(key, "winner", lease=1.5, url=db_url) as lost:
        t0 = time.monotonic()
        with pytest.raises(ActionInProgress, match="another live execution") as info:
            _claim(key, new_tenant, db_url, run_id="zombie", lease=1.5)
        # Detected at the holder's next renewal (a third of the lease), not at its expiry.
        assert time.monotonic() - t0 < 1.4
        assert info.value.owner == "winner" and info.value.key == key
        time.sleep(1.8)  # longer than the lease: renewals keep it
        assert not lost.is_set()
        assert ledger.renew(key, "zombie", url=db_url) is False
    row = ledger.get(key, url=db_url)
    assert row is not None and (row.lease_owner, row.attempts) == ("winner", 1)
    # The holder completes while a twin watches: still a conflict, never a second action.
    _claim(key, new_tenant, db_url, run_id="winner", lease=1.5)

    def finish() -> None:
        time.sleep(0.3)
        ledger.complete(key, {"ok": 1}, url=db_url)

    finisher = threading.Thread(target=finish)
    finisher.start()
    with pytest.raises(ActionInProgress):
        _claim(key, new_tenant, db_url, run_id="zombie", lease=1.5)
    finisher.join()


def test_ledger_errors(db_url: str, new_tenant: str) -> None:
    with pytest.raises(LookupError):
        ledger.complete("f" * 64, {}, url=db_url)
    key = ledger.idempotency_key(new_tenant, "a", "s", "rk", "bad")
    _claim(key, new_tenant, db_url)
    with pytest.raises(TypeError):
        ledger.complete(key, object(), url=db_url)
    with pytest.raises(ValueError, match="another tenant"):
        _claim(key, new_tenant + "-other", db_url)
    with pytest.raises(ValueError):
        _claim(key, "", db_url)


def test_ledger_concurrent_claims_insert_once(db_url: str, new_tenant: str) -> None:
    key = ledger.idempotency_key(new_tenant, "a", "s", "rk", "race")
    barrier = threading.Barrier(8)

    def worker(_: int) -> int:
        barrier.wait()
        return _claim(key, new_tenant, db_url).attempts

    with ThreadPoolExecutor(8) as pool:
        attempts = sorted(pool.map(worker, range(8)))
    assert attempts == list(range(1, 9))  # exactly one insert, every other claim counted


# -- queries and tenant scoping -----------------------------------------------------------------


def _run(tenant: str, agent: str = "triage", status: str = "running", **kw: object) -> AgentRun:
    return AgentRun(
        tenant=tenant, agent=agent, run_key="rk", status=status, inputs_digest="0" * 64, **kw
    )


def test_runs_and_steps_round_trip(db_url: str, new_tenant: str) -> None:
    t0 = datetime.now(UTC) - timedelta(hours=1)
    old = _run(new_tenant, started_at=t0 - timedelta(days=2))
    mid = _run(new_tenant, agent="other", started_at=t0)
    new = _run(new_tenant, subject="c-1", started_at=t0 + timedelta(minutes=5))
    for run in (old, mid, new):
        record_run_start(run, url=db_url)

    assert [r.id for r in runs(tenant=new_tenant, url=db_url)] == [new.id, mid.id, old.id]
    assert [r.id for r in runs(tenant=new_tenant, agent="other", url=db_url)] == [mid.id]
    assert [r.id for r in runs(tenant=new_tenant, since=t0, url=db_url)] == [new.id, mid.id]
    assert [r.id for r in runs(tenant=new_tenant, limit=1, url=db_url)] == [new.id]
    got = runs(tenant=new_tenant, url=db_url)[0]
    assert got.started_at == new.started_at and got.started_at.tzinfo is UTC
    assert got.subject == "c-1"

    finished = new.started_at + timedelta(seconds=2)
    assert record_run_end(
        new.id, tenant=new_tenant, status="failed", error="boom", finished_at=finished, url=db_url
    )
    assert record_run_end(
        mid.id, tenant=new_tenant, status="completed", duration_ms=5.0, url=db_url
    )
    assert not record_run_end(new.id, tenant="someone-else", status="completed", url=db_url)
    failed = runs(tenant=new_tenant, status="failed", url=db_url)
    assert [r.id for r in failed] == [new.id]
    assert failed[0].error == "boom"
    assert failed[0].duration_ms == pytest.approx(2000.0)
    assert failed[0].finished_at == finished
    completed = runs(tenant=new_tenant, status="completed", url=db_url)
    assert completed[0].duration_ms == 5.0 and completed[0].finished_at is not None

    rows = [
        StepRun(
            tenant=new_tenant,
            agent="triage",
            agent_run_id=new.id,
            step=f"s{i}",
            layer="think",
            status="completed",
            attempts=1,
            cache_hit=i % 2 == 0,
            started_at=t0 + timedelta(seconds=i),
            duration_ms=1.5,
        )
        for i in range(50)
    ]
    record_steps(rows, url=db_url)
    record_steps([], url=db_url)
    got_steps = steps(tenant=new_tenant, agent_run_id=new.id, url=db_url)
    assert [s.step for s in got_steps] == [f"s{i}" for i in range(50)]
    assert got_steps[0].cache_hit is True and got_steps[1].cache_hit is False


def test_no_query_crosses_tenants(db_url: str, new_tenant: str) -> None:
    a, b = new_tenant + "-a", new_tenant + "-b"
    run_a = _run(a)
    record_run_start(run_a, url=db_url)
    record_steps(
        [
            StepRun(
                tenant=a,
                agent="triage",
                agent_run_id=run_a.id,
                step="s",
                layer="act",
                status="completed",
            )
        ],
        url=db_url,
    )
    Memory(a, "triage", "c", url=db_url).set("secret", "a's")
    key = ledger.idempotency_key(a, "triage", "c", "rk", "act")
    ledger.claim(
        key,
        tenant=a,
        agent="triage",
        subject="c",
        run_key="rk",
        step="act",
        agent_run_id=run_a.id,
        url=db_url,
    )

    assert len(runs(tenant=a, url=db_url)) == 1
    assert len(steps(tenant=a, agent_run_id=run_a.id, url=db_url)) == 1
    assert len(memory(tenant=a, url=db_url)) == 1
    assert len(actions(tenant=a, url=db_url)) == 1

    assert runs(tenant=b, url=db_url) == []
    assert runs(tenant=b, agent="triage", url=db_url) == []
    assert steps(tenant=b, agent_run_id=run_a.id, url=db_url) == []
    assert memory(tenant=b, url=db_url) == []
    assert memory(tenant=b, agent="triage", subject="c", url=db_url) == []
    assert actions(tenant=b, url=db_url) == []
    assert actions(tenant=b, agent="triage", url=db_url) == []
    mem_b = Memory(b, "triage", "c", url=db_url)
    assert mem_b.get("secret") is None and mem_b.keys() == [] and mem_b.items() == {}
    assert mem_b.delete("secret") is False
    assert Memory(a, "triage", "c", url=db_url).get("secret") == "a's"
