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
        self.flows: dict[str, str] = {}
        """Flow ids by name: what the server knows (`clear()` as a replaced database would)."""
        self.flow_posts = 0

    def app(self) -> Starlette:
        async def create_flow(request: Request) -> JSONResponse:
            body = await request.json()
            self.flow_posts += 1
            flow_id = self.flows.setdefault(body["name"], str(uuid.uuid4()))
            return JSONResponse({"id": flow_id, "name": body["name"]}, status_code=201)

        async def create_flow_run(request: Request) -> JSONResponse:
            from prefect.client.schemas.objects import FlowRun

            self.creations.append(time.monotonic())
            if len(self.creations) <= self.busy:
                return JSONResponse({"exception_message": "Service Unavailable"}, status_code=503)
            body = await request.json()
            if body["flow_id"] not in self.flows.values():  # as Prefect 3.9's server answers
                detail = "Data integrity conflict. ... a unique or foreign key constraint ..."
                return JSONResponse({"detail": detail}, status_code=409)
            self.created.append(body)
            name = body.get("name") or "busy-run"
            run = FlowRun(id=uuid.uuid4(), name=name, flow_id=body["flow_id"])
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
    # Quick tries within 0.15 s, then the client's own retry about 2 s later (which again
    # gets its quick tries).
    assert flow_run.name == "busy-run"
    assert len(api.creations) == 4
    gaps = [b - a for a, b in zip(api.creations, api.creations[1:], strict=False)]
    slow = [i for i, gap in enumerate(gaps) if gap > 1.0]
    assert len(slow) == 1 and slow[0] >= 1, gaps
    assert all(gap < 0.5 for gap in gaps[: slow[0]]), gaps


def test_the_flow_is_asked_for_once_per_api_and_again_when_the_server_forgot_it(
    busy_api: tuple[BusyAPI, str],
) -> None:
    """Prefect's client posts the flow before every flow run; its id is remembered instead,
    and asked for again when the server no longer knows it (its database was replaced)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from agents.execution.prefect import create_flow_run

    api, url = busy_api
    api.busy = 0
    flow = _flow()

    async def create(name: str) -> Any:
        return await create_flow_run(flow, {"inputs": []}, name=name)

    with temporary_settings(updates={PREFECT_API_URL: url}):
        first = asyncio.run(create("busy-agent/batch-1"))
        second = asyncio.run(create("busy-agent/batch-2"))
        assert api.flow_posts == 1
        api.flows.clear()
        third = asyncio.run(create("busy-agent/batch-3"))
    assert api.flow_posts == 2
    assert [first.name, second.name, third.name] == [
        "busy-agent/batch-1",
        "busy-agent/batch-2",
        "busy-agent/batch-3",
    ]
    assert [c["name"] for c in api.created] == [first.name, second.name, third.name]
    assert third.flow_id != first.flow_id  # the id the server gave the flow again


@pytest.mark.usefixtures("prefect_api")
def test_a_batch_asks_the_api_only_what_its_flow_run_needs(sqlite_url: str) -> None:
    """A batch's flow run is created with its name; Prefect's engine then neither renames it
    nor reads the server's default result storage (a blocking request on the event loop), and
    the flow is posted once per process, not per batch."""
    import httpx
    from prefect import get_client

    from agents import Agent

    agent = Agent("asks-little")

    @agent.perception
    def echo(text: str) -> str:
        return text.upper()

    @agent.learning
    def note(echo: str) -> str:
        return echo

    requests: list[tuple[str, str, bytes]] = []

    def recorded(send: Any) -> Any:
        if asyncio.iscoroutinefunction(send):

            async def asend(self: Any, request: httpx.Request, *args: Any, **kw: Any) -> Any:
                requests.append((request.method, request.url.path, request.content))
                return await send(self, request, *args, **kw)

            return asend

        def ssend(self: Any, request: httpx.Request, *args: Any, **kw: Any) -> Any:
            requests.append((request.method, request.url.path, request.content))
            return send(self, request, *args, **kw)

        return ssend

    agent.batch([{"text": "warm"}], tenant="acme")  # the block and the flow, once
    with pytest.MonkeyPatch.context() as patch:  # observes the requests, changes none
        patch.setattr(httpx.AsyncClient, "send", recorded(httpx.AsyncClient.send))
        patch.setattr(httpx.Client, "send", recorded(httpx.Client.send))
        results = agent.batch([{"text": "a"}, {"text": "b"}], tenant="acme")

    assert [r.outputs["echo"] for r in results] == ["A", "B"]
    paths = [(method, path) for method, path, _ in requests]
    assert ("POST", "/api/flow_runs/") in paths
    assert ("POST", "/api/flows/") not in paths
    assert not [p for p in paths if p[1].endswith("/admin/storage")], paths
    renames = [c for m, p, c in requests if m == "PATCH" and b'"name"' in c]
    assert not renames, renames

    async def flow_run_name() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(uuid.UUID(str(results[0].flow_run_id)))
        return run.name

    assert asyncio.run(flow_run_name()) == "asks-little/batch-2"
