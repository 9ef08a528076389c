"""The `stalwart-maintenance` sweeps (flows/maintenance.py): each does its job, and two at once
change nothing more than one would (SQLite and PostgreSQL for the state-database sweeps, the
Prefect test harness for `recover`)."""

from __future__ import annotations

import contextvars
import inspect
import threading
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
import sqlalchemy as sa
import yaml
from sqlmodel import col, select

from agents.settings import get_current_settings, reload_settings, temporary_settings
from agents.store import AgentRun, DecisionRecord, record_decisions, record_run_start, session
from agents.store.reviews import request_review
from agents.store.tables import ReviewRequest
from flows.maintenance import maintenance_flow, sweep_prune, sweep_recover, sweep_reviews

ROOT = Path(__file__).resolve().parents[2]
T = TypeVar("T")


def _twice_at_once(fn: Callable[[], T]) -> list[T]:
    """Call `fn` in two threads released at the same moment (in this context: settings in
    force included); both results."""
    barrier = threading.Barrier(2)
    results: list[Any] = [None, None]
    errors: list[BaseException] = []
    contexts = [contextvars.copy_context() for _ in range(2)]

    def one(i: int) -> None:
        barrier.wait()
        try:
            results[i] = contexts[i].run(fn)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors, errors
    return results


def _review(tenant: str, deadline: datetime, step: str) -> ReviewRequest:
    return ReviewRequest(
        tenant=tenant,
        agent="triage",
        step=step,
        run_key=f"k-{step}",
        proposed={"route": "refund"},
        confidence=0.4,
        deadline_at=deadline,
    )


def _overdue_pending() -> int:
    with session() as s:
        query = (
            sa.select(sa.func.count())
            .select_from(ReviewRequest)
            .where(
                col(ReviewRequest.state) == "pending",
                col(ReviewRequest.deadline_at) <= datetime.now(UTC),
            )
        )
        return int(s.execute(query).scalar_one())


def test_the_reviews_sweep_expires_overdue_reviews_once_even_twice_at_once(
    state_db: str, new_tenant: str
) -> None:
    now = datetime.now(UTC)
    overdue = [
        request_review(_review(new_tenant, now - timedelta(minutes=m), f"s{m}"))[0]
        for m in (1, 2, 3)
    ]
    waiting = request_review(_review(new_tenant, now + timedelta(hours=1), "later"))[0]
    due = _overdue_pending()  # a shared PostgreSQL database may hold other tests' overdue ones

    first, second = _twice_at_once(sweep_reviews.fn)

    assert first["expired"] + second["expired"] == due >= 3  # each expired by one sweep only
    with session() as s:
        rows = s.exec(select(ReviewRequest).where(col(ReviewRequest.tenant) == new_tenant))
        states = {r.id: r.state for r in rows}
    assert states == {**{r.id: "expired" for r in overdue}, waiting.id: "pending"}
    assert sweep_reviews.fn() == {"task": "reviews", "expired": 0, "woken": 0}


def _plant_runs(tenant: str, age: timedelta, count: int) -> list[str]:
    """`count` agent runs and as many decisions, all `age` old; the run ids."""
    at = datetime.now(UTC) - age
    ids = []
    for i in range(count):
        run = AgentRun(
            tenant=tenant,
            agent="triage",
            run_key=f"k{age.days}-{i}",
            status="completed",
            inputs_digest="0" * 64,
            started_at=at,
        )
        record_run_start(run)
        ids.append(run.id)
    record_decisions(
        [
            DecisionRecord(
                tenant=tenant, agent="triage", step="route", input_digest="1" * 64, created_at=at
            )
            for _ in range(count)
        ]
    )
    return ids


def _count(table: type[Any], *where: Any) -> int:
    with session() as s:
        return int(
            s.execute(sa.select(sa.func.count()).select_from(table).where(*where)).scalar_one()
        )


def test_the_prune_sweep_keeps_the_retention_setting_and_deletes_once_twice_at_once(
    state_db: str, new_tenant: str
) -> None:
    old = _plant_runs(new_tenant, timedelta(days=45), 7)
    kept = _plant_runs(new_tenant, timedelta(days=20), 3)
    with temporary_settings(retention=timedelta(days=30)):
        cutoff = datetime.now(UTC) - get_current_settings().retention
        old_runs = _count(AgentRun, col(AgentRun.started_at) < cutoff)  # every tenant's
        old_decisions = _count(DecisionRecord, col(DecisionRecord.created_at) < cutoff)

        first, second = _twice_at_once(lambda: sweep_prune.fn(batch_size=3))

        assert first["older_than"] == second["older_than"] == "30 days, 0:00:00"
        deleted = {t: first["deleted"][t] + second["deleted"][t] for t in first["deleted"]}
        assert deleted["agent_run"] == old_runs >= 7  # no row counted by both
        assert deleted["decision_record"] == old_decisions >= 7
        assert "llm_cache" in deleted  # caches are pruned too, by default
        assert _count(AgentRun, col(AgentRun.id).in_(old)) == 0
        assert _count(AgentRun, col(AgentRun.id).in_(kept)) == 3
        assert sum(sweep_prune.fn()["deleted"].values()) == 0

    # An explicit retention wins over the setting (90 days by default).
    assert sweep_prune.fn(retention="10d")["deleted"]["agent_run"] >= 3
    assert _count(AgentRun, col(AgentRun.id).in_(kept)) == 0


@pytest.fixture
def retention_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("STALWART_RETENTION", "12w")
    reload_settings()
    yield
    monkeypatch.delenv("STALWART_RETENTION")
    reload_settings()


@pytest.mark.usefixtures("retention_env")
def test_the_retention_setting_reads_a_duration() -> None:
    assert get_current_settings().retention == timedelta(weeks=12)
    with pytest.raises(ValueError, match="greater than 0"), temporary_settings(retention="0s"):
        pass


# -- recover, against the Prefect test harness -------------------------------------------------


@pytest.fixture
def client(prefect_api: None) -> Iterator[Any]:
    from prefect import get_client

    with get_client(sync_client=True) as sync:
        yield sync


def _retries_of(client: Any, run_id: Any) -> list[Any]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    tags = FlowRunFilterTags(all_=[f"stalwart:retry-of:{run_id}"])
    return list(client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=tags)))


def test_the_recover_sweep_resubmits_a_dead_run_once_even_twice_at_once(client: Any) -> None:
    from prefect.states import Crashed

    name = f"maintained-{uuid.uuid4().hex[:8]}"
    flow_id = client.create_flow_from_name(name)
    deployment = client.create_deployment(flow_id=flow_id, name=name, tags=[f"agent:{name}"])
    dead = []
    for i in range(3):
        run = client.create_flow_run_from_deployment(deployment, parameters={"tenant": f"t{i}"})
        client.set_flow_run_state(run.id, Crashed(message="exited with -9"), force=True)
        dead.append(run)

    first, second = _twice_at_once(lambda: sweep_recover.fn(since="1h"))

    for run in dead:
        [retry] = _retries_of(client, run.id)  # one retry, whichever sweep created it
        assert retry.parameters == run.parameters
        assert str(retry.id) in first["new_flow_run_ids"] + second["new_flow_run_ids"]
    again = sweep_recover.fn(since="1h")
    assert not set(again["new_flow_run_ids"]) & {str(r.id) for r in dead}


# -- the flow and its deployment ---------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_the_flow_runs_the_sweep_its_task_names(sqlite_url: str) -> None:
    assert maintenance_flow("reviews") == {"task": "reviews", "expired": 0, "woken": 0}
    pruned = maintenance_flow("prune", retention="1d", batch_size=10)
    assert pruned["task"] == "prune" and sum(pruned["deleted"].values()) == 0


def test_the_deployment_schedules_each_sweep_with_parameters_the_flow_takes() -> None:
    deployments = yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]
    [maintenance] = [d for d in deployments if d["name"] == "stalwart-maintenance"]
    assert maintenance["entrypoint"] == "flows/maintenance.py:maintenance_flow"
    assert maintenance["work_pool"]["name"] == "stalwart"
    assert not any(t.startswith("agent:") for t in maintenance["tags"])  # recover skips it
    schedules = {s["parameters"]["task"]: s for s in maintenance["schedules"]}
    assert {k: s["cron"] for k, s in schedules.items()} == {
        "reviews": "*/5 * * * *",
        "recover": "* * * * *",
        "prune": "30 3 * * *",
    }
    accepted = set(inspect.signature(maintenance_flow.fn).parameters)
    for schedule in maintenance["schedules"]:
        assert set(schedule["parameters"]) <= accepted
        assert schedule["active"] is True
