"""The Prefect UI door of human review, on real parts: a review created by a deployment's flow
run is a flow run of that deployment waiting `Suspended` with Prefect's typed input form; it
holds no process; answering it through the API (as the UI form does) continues the run."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest

from agents.testing.prefect_server import PrefectServer, Worker, descendants

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.postgres, pytest.mark.slow]
POOL = "review-e2e"


@pytest.fixture(scope="module")
def worker(
    prefect_server: PrefectServer,
    postgres_server_url: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Worker, Path]]:
    """The test agent deployed on its own process pool, and one worker for it."""
    server = prefect_server
    server.cli("work-pool", "create", POOL, "--type", "process", "--overwrite")
    server.cli(
        "deploy",
        "tests/support/review_flow.py:review_flow",
        "--name",
        "review-e2e",
        "--pool",
        POOL,
        cwd=ROOT,
        timeout=240,
    )
    out = tmp_path_factory.mktemp("review-e2e")
    env = {
        "STALWART_PROJECT_DIR": str(ROOT),
        "STALWART_DATABASE_URL": postgres_server_url,
        "STALWART_TEST_OUT": str(out),
        "PYTHONPATH": str(ROOT),
    }
    unset = ("STALWART_MODEL_URL", "STALWART_API_KEY", "SENTRY_DSN")
    running = Worker(server, pool=POOL, cwd=ROOT, env=env, name="review-e2e", unset=unset)
    running.start()
    try:
        yield running, out
    finally:
        running.stop()


async def _wait_for(flow_run_id: UUID, done: Any, timeout: float = 180) -> Any:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while True:
            flow_run = await client.read_flow_run(flow_run_id)
            if done(flow_run) or time.monotonic() > deadline:
                return flow_run
            await asyncio.sleep(0.5)


@pytest.mark.usefixtures("on_prefect_server")
def test_a_deployment_review_waits_suspended_with_its_form_and_the_answer_continues_the_run(
    worker: tuple[Worker, Path], postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from agents import decisions, reviews
    from agents.execution.review import form_keyset
    from agents.settings import reload_settings
    from agents.store import queries

    running, out = worker
    monkeypatch.setenv("STALWART_DATABASE_URL", postgres_server_url)
    reload_settings()
    tenant = f"ui-{uuid.uuid4().hex[:8]}"
    inputs = [
        {"raw": {"id": 1, "text": "sure thing"}, "subject": "c-1"},
        {"raw": {"id": 2, "text": "unsure, ask a person"}, "subject": "c-2"},
    ]
    batch: Any = run_deployment(
        "review-e2e-agent/review-e2e",
        parameters={"inputs": inputs, "tenant": tenant},
        timeout=240,
        poll_interval=0.5,
    )
    assert batch.state.is_completed(), (batch.state, running.log_tail())
    runs = {r.subject: r.status for r in queries.runs(tenant=tenant, agent="review-e2e-agent")}
    assert runs == {"c-1": "completed", "c-2": "awaiting_review"}

    (review,) = reviews.pending(tenant=tenant)
    assert review.review_flow_run_id and review.deployment_id == str(batch.deployment_id)
    form_run_id = UUID(review.review_flow_run_id)
    keyset = form_keyset(review.id)

    async def form() -> tuple[Any, Any, Any]:
        async with get_client() as client:
            flow_run = await client.read_flow_run(form_run_id)
            schema = await client.read_flow_run_input(form_run_id, keyset["schema"])
            description = await client.read_flow_run_input(form_run_id, keyset["description"])
            return flow_run, schema, description

    flow_run, schema, description = asyncio.run(form())
    assert flow_run.state.name == "Suspended" and flow_run.state.is_paused()
    assert flow_run.deployment_id == batch.deployment_id
    assert flow_run.parameters["review"] == review.id
    assert set(json.loads(schema)["properties"]) >= {
        "verdict",
        "correction",
        "reviewer",
    }
    assert "confidence 0.30" in description.lower() and "q-model" in description
    # Waiting holds nothing: no process ever started for it, the worker has no child.
    assert flow_run.infrastructure_pid is None
    deadline = time.monotonic() + 30  # the batch's own process may still be exiting
    while descendants(running.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    children = descendants(running.pid)
    assert children == [], [Path(f"/proc/{pid}/cmdline").read_bytes() for pid in children]

    async def answer(run_input: dict[str, Any]) -> str:
        async with get_client() as client:
            response = await client.resume_flow_run(form_run_id, run_input=run_input)
            return str(response.status.value)

    # The form is typed: an answer without a reviewer is refused by Prefect's validation.
    assert asyncio.run(answer({"verdict": "approve"})).upper() == "REJECT"
    corrected = {"verdict": "correct", "correction": {"queue": "q-human"}, "reviewer": "ui-ana"}
    assert asyncio.run(answer(corrected)).upper() == "ACCEPT"
    done = asyncio.run(_wait_for(form_run_id, lambda fr: fr.state.is_final()))
    assert done.state.is_completed(), (done.state, running.log_tail())

    answered = reviews.get(review.id, tenant=tenant)
    assert (answered.state, answered.reviewer) == ("answered", "ui-ana")
    assert answered.continued_at is not None
    calls = (out / "calls.log").read_text().split("\n")
    sent = [line.split()[:2] for line in calls if line]
    assert sorted(sent) == [["1", "q-model"], ["2", "q-human"]]  # each action exactly once
    # The review's flow run executed the run again: its execution completed, the one that
    # stopped at the review is superseded.
    executions = queries.runs(tenant=tenant, agent="review-e2e-agent")
    by_subject = sorted((r.subject, r.status, r.flow_run_id) for r in executions)
    assert by_subject == [
        ("c-1", "completed", str(batch.id)),
        ("c-2", "completed", str(form_run_id)),
        ("c-2", "superseded", str(batch.id)),
    ]
    (logged,) = [d for d in decisions.query(tenant=tenant) if d.subject == "c-2"]
    assert (logged.path, logged.reviewer, logged.correction) == (
        "human",
        "ui-ana",
        {"queue": "q-human"},
    )


@pytest.mark.usefixtures("on_prefect_server")
def test_answering_a_deployment_review_from_python_wakes_its_flow_run_to_continue_the_run(
    worker: tuple[Worker, Path], postgres_server_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from prefect.deployments import run_deployment

    from agents import reviews
    from agents.settings import reload_settings
    from agents.store import queries

    running, out = worker
    monkeypatch.setenv("STALWART_DATABASE_URL", postgres_server_url)
    reload_settings()
    tenant = f"py-{uuid.uuid4().hex[:8]}"
    inputs = [{"raw": {"id": 7, "text": "unsure again"}, "subject": "c-7"}]
    batch: Any = run_deployment(
        "review-e2e-agent/review-e2e",
        parameters={"inputs": inputs, "tenant": tenant},
        timeout=240,
        poll_interval=0.5,
    )
    assert batch.state.is_completed(), (batch.state, running.log_tail())
    (review,) = reviews.pending(tenant=tenant)
    assert review.review_flow_run_id
    reviews.answer(review.id, tenant=tenant, verdict="approve", reviewer="py-bo")
    form_run_id = UUID(review.review_flow_run_id)
    done = asyncio.run(_wait_for(form_run_id, lambda fr: fr.state.is_final()))
    assert done.state.is_completed(), (done.state, running.log_tail())
    statuses = sorted(r.status for r in queries.runs(tenant=tenant, agent="review-e2e-agent"))
    assert statuses == ["completed", "superseded"]
    sent = [line.split()[:2] for line in (out / "calls.log").read_text().splitlines()]
    assert sent.count(["7", "q-model"]) == 1
