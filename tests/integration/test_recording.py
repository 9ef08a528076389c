"""After a batch returns, Prefect's API has already recorded every step as a terminal task run,
and holds no per-step "Finished in state" log rows (issue 19: the API used to record a batch a
minute after it returned, and the next flow run waited for it)."""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from agents import Agent

pytestmark = pytest.mark.usefixtures("prefect_api")


@pytest.fixture
def task_run_info_lines() -> Iterator[None]:
    """Let Prefect emit its INFO state lines (the suite runs Prefect at WARNING)."""
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(level)


def _agent(name: str) -> Agent:
    agent = Agent(name, description="Three cheap steps.")

    @agent.perception
    async def parsed(raw: dict[str, Any]) -> int:
        return int(raw["n"])

    @agent.perception
    async def doubled(parsed: int) -> int:
        return parsed * 2

    @agent.learning
    async def noted(doubled: int) -> None:
        return None

    return agent


@pytest.mark.usefixtures("state_db", "task_run_info_lines")
def test_a_returned_batch_is_recorded_without_state_log_rows() -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import (
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    agent = _agent(f"recorded-{uuid.uuid4().hex[:6]}")
    runs = 40
    results = agent.batch([{"raw": {"n": i}} for i in range(runs)], tenant="acme", concurrency=8)
    assert [r.status for r in results] == ["completed"] * runs
    flow_run_id = results[0].flow_run_id
    assert flow_run_id

    task_runs = TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 5  # the recorder writes at least once a second
        while True:
            found = client.read_task_runs(task_run_filter=task_runs, limit=200)
            finished = [t for t in found if t.state is not None and t.state.is_final()]
            if len(finished) == runs * 3 or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        lines = client.read_logs(
            log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
        )
    assert len(finished) == runs * 3, f"{len(finished)} of {runs * 3} recorded"
    state_lines = [line for line in lines if line.message.startswith("Finished in state")]
    assert [line.message for line in state_lines if line.task_run_id] == []


def test_the_temporary_server_runs_with_batched_recording() -> None:
    """The harness's API server (a subprocess, like a user's ephemeral server) inherited the
    settings: read from its own environment, not from ours."""
    from prefect.server.api.server import SubprocessASGIServer

    from agents.execution.recording import TEMPORARY_SERVER_SETTINGS

    server = SubprocessASGIServer._instances.get(None)
    assert server is not None and server.server_process is not None
    with open(f"/proc/{server.server_process.pid}/environ", "rb") as handle:
        pairs = [item.split(b"=", 1) for item in handle.read().split(b"\0") if b"=" in item]
    environment = {k.decode(): v.decode() for k, v in pairs}
    for name, value in TEMPORARY_SERVER_SETTINGS.items():
        expected = os.environ.get(name, value)
        if expected.replace(".", "").isdigit():  # Prefect writes 1 back as "1.0"
            assert float(environment.get(name, "nan")) == float(expected), name
        else:
            assert environment.get(name, "").lower() == expected.lower(), name


def test_the_temporary_server_streams_events_uncompressed() -> None:
    """The harness's API server, started with Stalwart's server settings as a user's temporary
    server is, negotiates no per-message deflate on the events websocket: every event was
    deflated by the client and inflated by the server, on loopback."""
    import asyncio

    from prefect.events.clients import PrefectEventsClient
    from prefect.settings import PREFECT_API_URL

    async def negotiated() -> list[str]:
        async with PrefectEventsClient(PREFECT_API_URL.value()) as client:
            assert client._websocket is not None
            return [str(e.name) for e in client._websocket.protocol.extensions]

    assert asyncio.run(negotiated()) == []
