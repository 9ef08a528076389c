"""Creating a batch's flow run rides out a busy API server's 503s with short waits.

A temporary API server (SQLite) answers 503 while it commits a large batch's events, and
Prefect's client waits 2 s, then 4 s, before trying again: the next batch of a process started
its flow run up to 15 s late. The server here is a loopback stand-in for the Prefect API that
answers the flow-run creation 503 a given number of times.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from agents.testing.loopback import LoopbackServer


class BusyAPI:
    """Just enough of the Prefect API to create a flow run, busy `busy` times first."""

    def __init__(self, busy: int) -> None:
        self.busy = busy
        self.creations: list[float] = []
        self.created: list[dict[str, Any]] = []

    def app(self) -> Starlette:
        async def create_flow(request: Request) -> JSONResponse:
            body = await request.json()
            return JSONResponse({"id": str(uuid.uuid4()), "name": body["name"]}, status_code=201)

        async def create_flow_run(request: Request) -> JSONResponse:
            from prefect.client.schemas.objects import FlowRun

            self.creations.append(time.monotonic())
            if len(self.creations) <= self.busy:
                return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
            body = await request.json()
            self.created.append(body)
            run = FlowRun(id=uuid.uuid4(), name="busy-run", flow_id=body["flow_id"])
            return JSONResponse(run.model_dump(mode="json"), status_code=201)

        async def anything(request: Request) -> JSONResponse:
            return JSONResponse({}, status_code=404)

        return Starlette(
            routes=[
                Route("/api/flows/", create_flow, methods=["POST"]),
                Route("/api/flow_runs/", create_flow_run, methods=["POST"]),
                Route("/{path:path}", anything, methods=["GET", "POST", "PATCH"]),
            ]
        )


@pytest.fixture
def busy_api() -> Iterator[tuple[BusyAPI, str]]:
    api = BusyAPI(busy=3)
    with LoopbackServer(api.app, label="busy Prefect API") as server:
        yield api, f"{server.url}/api"


def _flow() -> Any:
    from prefect import Flow

    async def batch(inputs: list[dict[str, Any]], tenant: str = "default") -> None: ...

    return Flow(fn=batch, name="busy-agent")


def test_a_busy_servers_503s_are_retried_within_a_second(busy_api: tuple[BusyAPI, str]) -> None:
    from prefect import tags
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.prefect import create_flow_run

    api, url = busy_api
    with temporary_settings(updates={PREFECT_API_URL: url}), tags("tenant:acme"):
        flow_run = asyncio.run(create_flow_run(_flow(), {"inputs": [{"n": 1}], "tenant": "acme"}))
    assert flow_run.name == "busy-run"
    assert len(api.creations) == 4  # three 503s, then created once
    # Prefect's client alone waits 2 s, then 4 s, then 8 s between these.
    gaps = [b - a for a, b in zip(api.creations, api.creations[1:], strict=False)]
    assert max(gaps) < 1.6, gaps
    (created,) = api.created
    assert created["parameters"] == {"inputs": [{"n": 1}], "tenant": "acme"}
    assert created["state"]["type"] == "PENDING"
    assert "tenant:acme" in created["tags"]


def test_past_its_patience_the_creation_is_left_to_prefects_retries(
    busy_api: tuple[BusyAPI, str],
) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.prefect import create_flow_run

    api, url = busy_api
    with temporary_settings(updates={PREFECT_API_URL: url}):
        flow_run = asyncio.run(create_flow_run(_flow(), {"inputs": []}, patience_s=0.15))
    # Two quick tries within 0.15 s, then the client's own retry about 2 s later (which again
    # gets its quick tries).
    assert flow_run.name == "busy-run"
    assert len(api.creations) == 4
    gaps = [b - a for a, b in zip(api.creations, api.creations[1:], strict=False)]
    assert gaps[0] < 1.0 and gaps[1] > 1.0, gaps
