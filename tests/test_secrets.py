"""Secrets never leak: an API key, a Sentry DSN key and a database password are planted in blocks,
agents run through every path that handles them (a decision, a failing action, a model 401 and
model 500s), and every place Stalwart writes to is searched for them.

Searched: log records (root, `agents`, `prefect`, at DEBUG) and the process's stdout/stderr,
the Prefect API's logs, artifacts, flow runs and task runs of the runs, every row of every table
of the state database, everything the Sentry receiver got, exception messages with their
tracebacks and causes, and `RunResult.error`.
"""

from __future__ import annotations

import contextlib
import logging
import traceback
import uuid
from collections.abc import Iterator
from typing import Literal

import pytest
import sqlalchemy as sa
from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from agents import LLM, Agent, Decision, RunResult
from agents._errors import ProviderRejected, ProviderUnavailable
from agents._settings import reload_settings
from agents.blocks import (
    ModelEndpoint,
    SentryConfig,
    StateDatabase,
    forget_loaded_blocks,
    loaded_secrets,
)
from agents.modelserver import ModelServer
from agents.observe import flush, scrub_text, shutdown_sentry
from agents.store import queries
from agents.store.engine import get_engine
from agents.testing.sentry import SentryReceiver

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.postgres]


class Ticket(BaseModel):
    text: str


class Routing(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


@contextlib.contextmanager
def environment(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Iterator[None]:
    """Set environment variables (and reload settings) for the block; remove them after."""
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    reload_settings()
    try:
        yield
    finally:
        for name in variables:
            monkeypatch.delenv(name, raising=False)
        reload_settings()
        forget_loaded_blocks()


def careless_agent(name: str, secrets: tuple[str, ...]) -> Agent:
    """Decides through the model; its action fails on "crash" tickets holding secrets in locals
    (Sentry sends stack-frame variables, so only scrubbing keeps them out of the event)."""
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def send(route: Routing, ticket: Ticket) -> str:
        held = secrets  # a local variable: Sentry sends it with the frame
        if "crash" in ticket.text:
            raise ConnectionError(f"the CRM refused the {route.category} ticket ({len(held)})")
        return route.category

    return agent


def _prefect_records(flow_run_ids: list[str]) -> str:
    """Everything the Prefect API keeps about these flow runs, as JSON text."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterFlowRunId,
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    ids = [uuid.UUID(i) for i in flow_run_ids]
    parts: list[str] = []
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=ids)))
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=ids))
        )
        flow_runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=ids))
        )
        task_runs = client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))
        )
        states = [client.read_task_run_states(t.id) for t in task_runs]
    assert artifacts and flow_runs and task_runs  # the search below has something to search
    for item in [
        *logs,
        *artifacts,
        *flow_runs,
        *task_runs,
        *(s for group in states for s in group),
    ]:
        parts.append(item.model_dump_json())
    return "\n".join(parts)


def _database_dump(url: str) -> str:
    """Every row of every Stalwart table, as text (bytes decoded leniently)."""
    rows: list[str] = []
    with get_engine(url).connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        value = bytes(value).decode("utf-8", errors="replace")
                    rows.append(f"{table.name}: {value!r}")
    return "\n".join(rows)


def _exception_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc)) + repr(exc)


def test_planted_secrets_appear_nowhere(
    postgres_server_url: str,
    model_server: ModelServer,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    tag = uuid.uuid4().hex[:12]
    # No `sk-` prefix and no `password=`: only the scrubbing of the blocks' own values catches
    # these, not the generic patterns.
    api_key = f"plantedApiKey{tag}"
    dsn_key = f"plantedDsnKey{tag}"
    password = f"Pl4ntedPassw0rd{tag}"
    database_url = (
        make_url(postgres_server_url).set(password=password).render_as_string(hide_password=False)
    )
    planted = {"API key": api_key, "DSN key": dsn_key, "database password": password}

    for name in ("", "agents", "prefect", "openai", "httpx", "sqlalchemy"):
        caplog.set_level(logging.DEBUG, logger=name or None)
    results: list[RunResult] = []
    exceptions: list[BaseException] = []
    with SentryReceiver() as receiver:
        dsn = f"http://{dsn_key}@127.0.0.1:{receiver.port}/{receiver.project_id}"
        ModelEndpoint(
            base_url=model_server.url, model="secret-model", api_key=SecretStr(api_key)
        ).save(f"model-{tag}")
        StateDatabase(database_url=SecretStr(database_url)).save(f"db-{tag}")
        SentryConfig(dsn=SecretStr(dsn), environment="secrets-test").save(f"sentry-{tag}")
        agent = careless_agent(f"careless-{tag}", tuple(planted.values()))
        try:
            with environment(
                monkeypatch,
                STALWART_MODEL_BLOCK=f"model-{tag}",
                STALWART_DATABASE_BLOCK=f"db-{tag}",
                STALWART_SENTRY_BLOCK=f"sentry-{tag}",
                STALWART_MODEL_MAX_ATTEMPTS="2",
                STALWART_MODEL_RETRY_BASE_SECONDS="0.01",
            ):
                results.append(agent.run(tenant="acme", raw="I was charged twice, refund me"))
                results.append(agent.run(tenant="acme", raw="crash: I need a refund"))
                model_server.faults.update(fail_next=["401"])
                results.append(agent.run(tenant="acme", raw="my parcel is late"))
                model_server.faults.update(fail_next=["500", "500"])
                results.append(agent.run(tenant="acme", raw="I cannot log in to my account"))
                # The same errors raised to a caller, outside any flow.
                for faults, expected in (
                    (["403"], ProviderRejected),
                    (["503"] * 2, ProviderUnavailable),
                ):
                    model_server.faults.update(fail_next=faults)
                    with pytest.raises(expected) as caught:
                        LLM(cache=False).decide(Routing, "Route: where is my parcel?")
                    exceptions.append(caught.value)
                # The blocks were loaded: their secrets are known to the scrubber.
                assert set(planted.values()) <= set(loaded_secrets())
                scrubbed = scrub_text(f"key {api_key}, dsn {dsn_key}, db {password}")
                flush()
                receiver.wait_for(3, timeout=10)
                database = _database_dump(database_url)
        finally:
            shutdown_sentry(timeout=1.0)
        sentry_text = receiver.raw_text()
        events = receiver.events()

    # The runs went where the blocks said, through every path.
    assert [r.status for r in results] == ["completed", "failed", "failed", "failed"]
    assert "ProviderRejected" in (results[2].error or "")
    assert "ProviderUnavailable" in (results[3].error or "")
    assert model_server.stats.requests_by_model.get("secret-model", 0) >= 6
    assert {e["environment"] for e in events} == {"secrets-test"}
    assert len(events) >= 3  # the action's failure, the 401 and the 500s
    assert queries.runs(tenant="acme", agent=agent.name, url=database_url)
    assert "decision_record" in database and "secret-model" in database

    captured = capfd.readouterr()
    records = "\n".join(
        f"{r.name} {r.getMessage()} {r.exc_text or ''}"
        + ("".join(traceback.format_exception(*r.exc_info)) if r.exc_info else "")
        for r in caplog.records
    )
    sources = {
        "log records": records,
        "stdout": captured.out,
        "stderr": captured.err,
        "Prefect logs, artifacts, runs and states": _prefect_records(
            [r.flow_run_id for r in results if r.flow_run_id]
        ),
        "state database": database,
        "Sentry": sentry_text,
        "exceptions": "\n".join(_exception_text(e) for e in exceptions),
        "RunResult": "\n".join(f"{r!r} {r.error}" for r in results),
        "scrub_text": scrubbed,
    }
    leaks = [
        f"{what} in {where}"
        for where, text in sources.items()
        for what, secret in planted.items()
        if secret in text
    ]
    assert leaks == []
    assert records and database and sentry_text  # each source had content to search
