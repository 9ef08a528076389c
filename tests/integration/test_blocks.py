"""Blocks, end to end: registered with the real `prefect block register -m blocks`, saved in the
test Prefect API, selected by name (`STALWART_*_BLOCK`) and used by real agent runs: the model
block against the bundled model server, the database block on SQLite and PostgreSQL, the Sentry
block against a local `SentryReceiver`.

Covers `agents.blocks` and its callers (`resolve_endpoint`, the engine, `init_sentry`, `cost_of`).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sentry_sdk
from pydantic import SecretStr

from agents import LLM, Agent, ConfigurationError
from agents.blocks import ModelEndpoint, SentryConfig, StateDatabase, forget_loaded_blocks
from agents.endpoint import resolve_endpoint
from agents.modelserver import ModelServer
from agents.observe import flush, shutdown_sentry
from agents.observe.sentry import traces_sample_rate
from agents.settings import reload_settings
from agents.store import find_decisions, queries
from agents.testing.sentry import SentryReceiver
from tests.support.models import Routing, Ticket

pytestmark = pytest.mark.usefixtures("prefect_api")

REPO = Path(__file__).resolve().parents[2]
UNREACHABLE_MODEL_URL = "http://127.0.0.1:9/v1"  # discard port: nothing answers there


# -- helpers ---------------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_block_cache() -> Iterator[None]:
    """Each test loads its blocks itself (the cache is per process)."""
    forget_loaded_blocks()
    yield
    forget_loaded_blocks()


@contextlib.contextmanager
def environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Iterator[None]:
    """Set environment variables (and reload settings) for the block; restore both after."""
    before = {name: os.environ.get(name) for name in variables}
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)
        reload_settings()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class RecordingProxy:
    """Forwards requests to a model server and records each request's Authorization header.

    The bundled model server does not keep headers; this proves which key was sent.
    """

    def __init__(self, target: str) -> None:
        self.target = target
        self.authorizations: list[str | None] = []
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                proxy.authorizations.append(self.headers.get("Authorization"))
                request = urllib.request.Request(
                    proxy.target + self.path,
                    data=body,
                    headers={"Content-Type": "application/json"},
                    method="POST",
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, data = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, data = error.code, error.read()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> RecordingProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def llm_agent(name: str, *, asynchronous: bool = False) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    if asynchronous:

        @agent.reasoning(threshold=0.5)
        async def route(ticket: Ticket, llm: LLM) -> Routing:
            return await llm.adecide(Routing, f"Route this ticket: {ticket.text}")

    else:

        @agent.reasoning(threshold=0.5)
        def route(ticket: Ticket, llm: LLM) -> Routing:
            return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    return agent


def failing_agent(name: str, message: str = "the outside system is down") -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning
    def route(ticket: Ticket) -> Routing:
        return Routing(category="billing", confidence=0.9, rationale="rule")

    @agent.action
    def send(route: Routing) -> None:
        raise ConnectionError(message)

    return agent


# -- registration ----------------------------------------------------------------------------------


def test_prefect_block_register_registers_every_stalwart_block() -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL

    env = {
        **os.environ,
        "PREFECT_API_URL": str(PREFECT_API_URL.value()),
        "PYTHONPATH": str(REPO),
    }
    done = subprocess.run(
        [sys.executable, "-m", "prefect", "block", "register", "-m", "blocks"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    expected = {
        "stalwart-model-endpoint": {"api_key"},
        "stalwart-state-database": {"database_url"},
        "stalwart-sentry": {"dsn"},
        "stalwart-sql-result-storage": {"database_url"},
    }
    with get_client(sync_client=True) as client:
        for slug, secrets in expected.items():
            block_type = client.read_block_type_by_slug(slug)
            schema = client.get_most_recent_block_schema_for_block_type(block_type.id)
            assert schema is not None, slug
            assert set(schema.fields["secret_fields"]) == secrets, slug
            if slug != "stalwart-sql-result-storage":
                assert block_type.documentation_url and block_type.logo_url, slug


# -- model endpoint --------------------------------------------------------------------------------


@pytest.mark.parametrize("asynchronous", [False, True])
def test_a_model_block_replaces_the_environment_and_prices_the_calls(
    sqlite_url: str,
    model_server: ModelServer,
    monkeypatch: pytest.MonkeyPatch,
    asynchronous: bool,
) -> None:
    name, key = unique("model"), f"block-key-{uuid.uuid4().hex}"
    with RecordingProxy(model_server.base_url) as proxy:
        ModelEndpoint(
            base_url=proxy.url,
            model="block-model",
            fallback_model="block-fallback",
            api_key=SecretStr(key),
            price_in_per_1k=2.0,
            price_out_per_1k=3.0,
            timeout_seconds=7.5,
        ).save(name)
        agent = llm_agent(unique("block-llm"), asynchronous=asynchronous)
        # The environment points elsewhere: only the block can make this run succeed.
        with environment(
            monkeypatch,
            STALWART_MODEL_BLOCK=name,
            STALWART_MODEL_URL=UNREACHABLE_MODEL_URL,
            STALWART_MODEL="env-model",
            STALWART_MODEL_PRICES='{"block-model": [100.0, 100.0]}',
        ):
            # First load inside the run: in a step thread (sync) or on the event loop (async).
            result = agent.run(tenant="acme", raw="I was charged twice, I need a refund")
            endpoint = resolve_endpoint()

    assert (endpoint.base_url, endpoint.model, endpoint.fallback_model) == (
        proxy.url,
        "block-model",
        "block-fallback",
    )
    assert endpoint.timeout == 7.5 and endpoint.name == f"block:{name}"
    assert result.status == "completed", result.error
    assert result.outputs["route"].category == "billing"
    assert model_server.stats.requests_by_model == {"block-model": 1}
    assert proxy.authorizations == [f"Bearer {key}"]
    [row] = find_decisions(tenant="acme", agent=agent.name)
    assert row.model == "block-model" and row.endpoint == f"block:{name}"
    assert row.tokens_in > 0 and row.tokens_out > 0
    # The block's prices win over STALWART_MODEL_PRICES for its model.
    assert row.cost == pytest.approx((row.tokens_in * 2.0 + row.tokens_out * 3.0) / 1000)


def test_a_missing_model_block_is_a_clear_configuration_error(
    sqlite_url: str, model_server: ModelServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("absent")
    agent = llm_agent(unique("no-block"))
    with environment(monkeypatch, STALWART_MODEL_BLOCK=name):
        with pytest.raises(ConfigurationError) as caught:
            resolve_endpoint()
        result = agent.run(tenant="acme", raw="my parcel is late")

    message = str(caught.value)
    assert f"No Stalwart Model Endpoint block named {name!r}" in message
    assert "STALWART_MODEL_BLOCK" in message
    assert result.status == "failed"
    assert result.error is not None and name in result.error
    assert "ConfigurationError" in result.error
    assert model_server.stats.requests_total == 0  # not retried, never sent anywhere


def test_without_a_model_block_the_environment_is_used(model_server: ModelServer) -> None:
    endpoint = resolve_endpoint()
    assert endpoint.base_url == model_server.url and endpoint.name == "configured"
    assert endpoint.api_key is not None
    assert endpoint.api_key.get_secret_value() == os.environ["STALWART_API_KEY"]


# -- state database --------------------------------------------------------------------------------


def test_a_database_block_selects_the_state_database(
    state_db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("db")
    StateDatabase(database_url=SecretStr(state_db)).save(name)
    decoy = tmp_path / "environment.db"
    agent = failing_agent(unique("db-block"))
    with environment(
        monkeypatch, STALWART_DATABASE_BLOCK=name, STALWART_DATABASE_URL=f"sqlite:///{decoy}"
    ):
        result = agent.run(tenant="acme", raw="hello")

    assert result.status == "failed"  # the action raises; the run is still recorded
    [run] = queries.runs(tenant="acme", agent=agent.name, url=state_db)
    assert run.id == result.run_id and run.status == "failed"
    steps = {
        s.step: s.status for s in queries.steps(tenant="acme", agent_run_id=run.id, url=state_db)
    }
    assert steps["ticket"] == "completed" and steps["send"] == "failed"
    assert not decoy.exists()  # STALWART_DATABASE_URL was never opened


# -- Sentry ----------------------------------------------------------------------------------------


def test_a_sentry_block_routes_failures_with_its_environment(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("sentry")
    agent = failing_agent(unique("sentry-block"))
    with SentryReceiver() as receiver:
        SentryConfig(
            dsn=SecretStr(receiver.dsn),
            environment="blocks-test",
            sample_rate=1.0,
            traces_sample_rate=0.25,
        ).save(name)
        try:
            with environment(monkeypatch, STALWART_SENTRY_BLOCK=name):
                result = agent.run(tenant="acme", subject="cust-1", raw="hello")
                options = sentry_sdk.get_client().options
                runs_traced = traces_sample_rate()
                flush()
                events = receiver.wait_for(1, timeout=10)
        finally:
            shutdown_sentry(timeout=1.0)

    assert result.status == "failed"
    assert len(events) == 1
    event = events[0]
    assert event["environment"] == "blocks-test"
    assert dict(event["tags"])["step"] == "send"
    # The block's rate is the share of agent runs traced (decided per run by Stalwart); Sentry
    # gets a traces_sampler that keeps only the transactions of those runs.
    assert runs_traced == 0.25 and options["sample_rate"] == 1.0
    assert options["traces_sampler"] is not None


def test_a_missing_sentry_block_names_itself(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.observe import init_sentry

    name = unique("nosentry")
    with (
        environment(monkeypatch, STALWART_SENTRY_BLOCK=name),
        pytest.raises(ConfigurationError, match=f"Stalwart Sentry block named '{name}'"),
    ):
        init_sentry()
