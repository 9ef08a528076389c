"""End to end on real parts: `prefect server` on PostgreSQL, `prefect deploy --all` from
prefect.yaml, two process workers, each reference agent triggered with `run_deployment`.

Everything runs on loopback and is stopped by PID. The state database is the session's
PostgreSQL database, reached by the workers through a saved `StateDatabase` block (no URL in
their environment).
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from agents.testing.prefect_server import PrefectServer, Worker

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.postgres, pytest.mark.slow]


@pytest.fixture(scope="module")
def deployed(
    prefect_server: PrefectServer,
    postgres_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, Any]]:
    """The work pool, the three deployments and two workers on the session's Prefect server."""
    server = prefect_server
    server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
    deployed_out = server.cli("deploy", "--all", cwd=ROOT, timeout=240)
    server.cli("block", "register", "-m", "blocks", cwd=ROOT)
    save = (
        "from blocks import StateDatabase; "
        f"StateDatabase(database_url={postgres_server_url!r}).save('e2e-state', overwrite=True)"
    )
    env = server.client_env(PYTHONPATH=str(ROOT))
    import subprocess
    import sys

    subprocess.run([sys.executable, "-c", save], env=env, check=True, timeout=120)
    data_dir = tmp_path_factory.mktemp("worker-data")
    worker_env = {
        "STALWART_PROJECT_DIR": str(ROOT),
        "STALWART_DATABASE_BLOCK": "e2e-state",
        "STALWART_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(ROOT),
    }
    for name in ("STALWART_DATABASE_URL", "STALWART_MODEL_URL", "SENTRY_DSN"):
        os.environ.get(name)  # the workers must not inherit the test process's choices
    workers = [
        Worker(server, pool="stalwart", cwd=ROOT, env=worker_env, name=f"e2e-{i}") for i in range(2)
    ]
    for worker in workers:
        worker.start()
    try:
        yield {"server": server, "workers": workers, "deploy_output": deployed_out}
    finally:
        for worker in workers:
            worker.stop()


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


def test_deploy_created_every_reference_deployment(deployed: dict[str, Any]) -> None:
    listed = deployed["server"].cli("deployment", "ls")
    for name in ("ticket-triage", "qa-runs", "engagement-campaign"):
        assert name in listed
    described = json.dumps(
        deployed["server"].cli("deployment", "inspect", "ticket-triage/ticket-triage")
    )
    assert "*/30 * * * *" in described and "stalwart" in described
