"""End to end on real parts: `prefect server` on PostgreSQL, `prefect deploy --all` from
prefect.yaml, two process workers, each reference agent triggered with `run_deployment`.

Everything runs on loopback and is stopped by PID. The state database is the session's
PostgreSQL database, reached by the workers through a saved `StateDatabase` block (no URL in
their environment).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from agents.testing.prefect_server import PrefectServer, Worker

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployed(
    prefect_server: PrefectServer,
    postgres_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The work pool, the deployments and two workers on the session's Prefect server (the
    maintenance deployment paused: triggered only)."""
    server = prefect_server
    server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
    deployed_out = server.cli("deploy", "--all", cwd=ROOT, timeout=240)
    _pause(server, MAINTENANCE)
    server.cli("block", "register", "-m", "blocks", cwd=ROOT)
    save = (
        "from blocks import StateDatabase; "
        f"StateDatabase(database_url={postgres_server_url!r}).save('e2e-state', overwrite=True)"
    )
    env = server.client_env(PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", save], env=env, check=True, timeout=120)
    data_dir = tmp_path_factory.mktemp("worker-data")
    worker_env = {
        "STALWART_PROJECT_DIR": str(ROOT),
        "STALWART_DATABASE_BLOCK": "e2e-state",
        "STALWART_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(ROOT),
    }
    # The workers must not inherit this process's database or endpoint: only the block.
    unset = ("STALWART_DATABASE_URL", "STALWART_MODEL_URL", "STALWART_API_KEY", "SENTRY_DSN")
    workers = [
        Worker(server, pool="stalwart", cwd=ROOT, env=worker_env, name=f"e2e-{i}", unset=unset)
        for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        yield {"server": server, "workers": workers, "deploy_output": deployed_out}
    finally:
        for worker in workers:
            worker.stop()


MAINTENANCE = "maintenance/stalwart-maintenance"


def _pause(server: PrefectServer, name: str) -> None:
    """No scheduled runs of `name` in the suite (the maintenance sweeps run every minute and
    would take the workers' slots); pausing a deployment deletes its scheduled runs. Its runs
    can still be triggered."""
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(server.api_url) as client:
        client.pause_deployment(client.read_deployment_by_name(name).id)


async def _trigger(name: str, parameters: dict[str, Any] | None = None) -> Any:
    from prefect.deployments import run_deployment

    return await run_deployment(name, parameters=parameters or {}, timeout=240, poll_interval=0.5)


async def _artifacts(flow_run_id: Any) -> list[Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return list(
            await client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        )


def _rows(url: str, table: Any, **where: Any) -> list[Any]:
    from sqlmodel import Session

    from agents.store.engine import get_engine

    with Session(get_engine(url)) as session:
        query = select(table)
        for key, value in where.items():
            query = query.where(getattr(table, key) == value)
        return list(session.exec(query).all())


@pytest.mark.usefixtures("on_prefect_server")
def test_ticket_triage_runs_from_its_deployment(
    deployed: dict[str, Any], postgres_server_url: str
) -> None:
    from agents.store.tables import AgentRun, DecisionRecord, MemoryItem

    flow_run = asyncio.run(_trigger("ticket-triage/ticket-triage"))
    assert flow_run.state.is_completed(), (
        flow_run.state,
        [w.log_tail() for w in deployed["workers"]],
    )
    runs = _rows(postgres_server_url, AgentRun, flow_run_id=str(flow_run.id))
    assert len(runs) == 3 and all(r.status == "completed" for r in runs)
    assert {r.tenant for r in runs} == {"demo"}
    decisions = _rows(postgres_server_url, DecisionRecord, tenant="demo", agent="ticket-triage")
    assert {d.agent_run_id for d in decisions} >= {r.id for r in runs}
    memory = _rows(postgres_server_url, MemoryItem, tenant="demo", subject="cust-001")
    assert memory, "the learning step wrote the customer's history"
    keys = {a.key for a in asyncio.run(_artifacts(flow_run.id))}
    assert "ticket-triage-dag" in keys and "ticket-triage-decisions" in keys
    assert "stalwart-monitor-ticket-triage-demo" in keys  # deployments end with a quality check


@pytest.mark.usefixtures("on_prefect_server")
def test_a_deployment_run_for_another_tenant_is_tagged_with_it_and_fails_on_a_failed_input(
    deployed: dict[str, Any], postgres_server_url: str
) -> None:
    """prefect.yaml tags the deployment `tenant:demo`; a run with `tenant=e2e-acme` is
    acme's in its tags too, and an input that fails ends the flow run Failed, counted."""
    from agents.store.tables import AgentRun

    good = {
        "raw": {"id": "A-1", "subject": "Refund", "body": "Charged twice", "customer": "a-1"},
        "subject": "a-1",
    }
    bad = {"raw": {"body": "no id"}, "subject": "a-2"}  # the perception step fails (KeyError)
    flow_run = asyncio.run(
        _trigger("ticket-triage/ticket-triage", {"inputs": [good, bad], "tenant": "e2e-acme"})
    )
    assert flow_run.state.is_failed(), (flow_run.state, [w.log_tail() for w in deployed["workers"]])
    assert flow_run.state.message == "1 of 2 inputs failed"
    assert "tenant:e2e-acme" in flow_run.tags and "tenant:demo" not in flow_run.tags
    rows = _rows(postgres_server_url, AgentRun, flow_run_id=str(flow_run.id))
    assert sorted((r.tenant, r.subject, r.status) for r in rows) == [
        ("e2e-acme", "a-1", "completed"),
        ("e2e-acme", "a-2", "failed"),
    ]


def test_deploy_created_every_reference_deployment(deployed: dict[str, Any]) -> None:
    # Read from the server's API (what `prefect deployment ls/inspect` print), not through two
    # more CLI processes.
    from prefect.client.orchestration import SyncPrefectClient

    with SyncPrefectClient(deployed["server"].api_url) as client:
        found = {
            name: client.read_deployment_by_name(name)
            for name in (
                "ticket-triage/ticket-triage",
                "qa-runs-round/qa-runs",
                "engagement-campaign-waves/engagement-campaign",
            )
        }
    assert {d.work_pool_name for d in found.values()} == {"stalwart"}
    triage = found["ticket-triage/ticket-triage"]
    assert [getattr(s.schedule, "cron", None) for s in triage.schedules] == ["*/30 * * * *"]


@pytest.mark.usefixtures("on_prefect_server")
def test_the_maintenance_deployment_schedules_its_sweeps_and_runs_them(
    deployed: dict[str, Any],
) -> None:
    """Three schedules, each naming its sweep; two sweeps triggered at once both complete."""
    from prefect import get_client

    with get_client(sync_client=True) as client:
        schedules = client.read_deployment_by_name(MAINTENANCE).schedules
    by_task = {s.parameters["task"]: getattr(s.schedule, "cron", None) for s in schedules}
    assert by_task == {"reviews": "*/5 * * * *", "recover": "* * * * *", "prune": "30 3 * * *"}

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                _trigger(MAINTENANCE, {"task": "reviews"}),
                _trigger(MAINTENANCE, {"task": "prune", "retention": "3650d"}),
            )
        )

    for flow_run in asyncio.run(both()):
        assert flow_run.state.is_completed(), (
            flow_run.state,
            [w.log_tail() for w in deployed["workers"]],
        )


def _child_runs(parent_id: Any) -> list[Any]:
    """Flow runs started inside `parent_id` (an agent batch inside a reference flow)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    async def read() -> list[Any]:
        async with get_client() as client:
            return list(
                await client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(
                        parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[parent_id])
                    )
                )
            )

    return asyncio.run(read())


@pytest.mark.usefixtures("on_prefect_server")
def test_qa_runs_and_engagement_campaign_run_from_their_deployments(
    deployed: dict[str, Any], postgres_server_url: str
) -> None:
    """Both triggered at once: the two workers take one each."""
    from agents.store.tables import AgentRun, DecisionRecord, MemoryItem

    accounts = [
        json.loads(line)["account"]
        for line in (ROOT / "flows/data/accounts.jsonl").read_text().splitlines()[:4]
    ]

    async def both() -> list[Any]:
        return list(
            await asyncio.gather(
                _trigger(
                    "qa-runs-round/qa-runs",
                    {"projects": ["billing-api", "geo-utils"], "tenant": "e2e-qa", "round": "e2e"},
                ),
                _trigger(
                    "engagement-campaign-waves/engagement-campaign",
                    {"accounts": accounts, "tenant": "e2e-social", "waves": 1},
                ),
            )
        )

    qa_run, social_run = asyncio.run(both())
    logs = [w.log_tail() for w in deployed["workers"]]
    assert qa_run.state.is_completed(), (qa_run.state, logs)
    assert social_run.state.is_completed(), (social_run.state, logs)

    # qa-runs: every shard ran as an agent run, failures were decided, memory and reports exist.
    qa_rows = _rows(postgres_server_url, AgentRun, tenant="e2e-qa", agent="qa-runs")
    assert qa_rows and all(r.status == "completed" for r in qa_rows)
    assert _rows(postgres_server_url, DecisionRecord, tenant="e2e-qa", agent="qa-runs")
    assert _rows(postgres_server_url, MemoryItem, tenant="e2e-qa")
    qa_flow_runs = [qa_run.id, *(r.id for r in _child_runs(qa_run.id))]
    qa_keys = {a.key for run_id in qa_flow_runs for a in asyncio.run(_artifacts(run_id))}
    assert any(key and "billing-api" in key for key in qa_keys), qa_keys

    # engagement-campaign: one completed run per account, decisions logged, history remembered.
    social_rows = _rows(postgres_server_url, AgentRun, tenant="e2e-social")
    assert len(social_rows) == len(accounts)
    assert all(r.status == "completed" for r in social_rows)
    assert _rows(postgres_server_url, DecisionRecord, tenant="e2e-social")
    social_memory = _rows(
        postgres_server_url, MemoryItem, tenant="e2e-social", agent="engagement-campaign"
    )
    remembered = {m.subject for m in social_memory}
    assert remembered == {a["handle"] for a in accounts}

    assert {r.work_pool_name for r in (qa_run, social_run)} == {"stalwart"}


@pytest.mark.usefixtures("on_prefect_server")
def test_agent_serve_runs_triggered_flow_runs_without_a_worker(
    prefect_server: PrefectServer, postgres_server_url: str, tmp_path: Path
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    from agents.store.tables import AgentRun

    env = prefect_server.client_env(
        PYTHONPATH=str(ROOT),
        STALWART_DATABASE_URL=postgres_server_url,
        STALWART_DATA_DIR=str(tmp_path),
    )
    env.pop("STALWART_MODEL_URL", None)
    log = (tmp_path / "serve.log").open("wb")
    served = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "support" / "serve_agent.py"), "served-triage"],
        env=env,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )

    async def deployment_exists() -> bool:
        async with get_client() as client:
            try:
                await client.read_deployment_by_name("ticket-triage/served-triage")
            except ObjectNotFound:
                return False
        return True

    try:
        deadline = time.monotonic() + 90
        while not asyncio.run(deployment_exists()):
            assert served.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, "agent.serve() never created its deployment"
            time.sleep(0.5)
        inputs = [
            {
                "raw": {
                    "id": "S-1",
                    "subject": "Refund",
                    "body": "Charged twice",
                    "customer": "c-s",
                },
                "subject": "c-s",
            }
        ]
        flow_run = asyncio.run(
            _trigger("ticket-triage/served-triage", {"inputs": inputs, "tenant": "served"})
        )
        assert flow_run.state.is_completed(), (tmp_path / "serve.log").read_text()[-3000:]
        rows = _rows(postgres_server_url, AgentRun, flow_run_id=str(flow_run.id))
        assert [(r.tenant, r.subject, r.status) for r in rows] == [("served", "c-s", "completed")]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(served.pid, signal.SIGTERM)
        try:
            served.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(served.pid, signal.SIGKILL)
            served.wait(timeout=10)
