"""Planted-secret search: plant an API key, a Sentry DSN key and a database password, drive an
agent through every path that handles them, and search everything Stalwart wrote for them.

This module owns the search (`exercise`, `find_leaks` and the source readers); the caller owns
the services it runs against (a model server, a PostgreSQL database, a Sentry receiver, a Prefect
API) and what it captures from logs and the process's output. `tests/faults/test_secrets.py` and
`bench/faults/s6_secrets.py` both use it.

Example:
    >>> planted = PlantedSecrets.make("abc123")
    >>> find_leaks({"log": "nothing here"}, planted.named())
    []
    >>> find_leaks({"log": f"key={planted.api_key}"}, planted.named())
    ['API key in log']
"""

from __future__ import annotations

import logging
import os
import traceback
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from sqlalchemy.engine import make_url

from agents import LLM, Agent, Decision, RunResult

__all__ = [
    "CAPTURED_LOGGERS",
    "Exercise",
    "LogCapture",
    "PlantedSecrets",
    "careless_agent",
    "database_dump",
    "exception_text",
    "exercise",
    "find_leaks",
    "prefect_records",
    "sources",
]

#: Loggers captured at DEBUG while the agent runs ("" is the root logger).
CAPTURED_LOGGERS = ("", "agents", "prefect", "openai", "httpx", "sqlalchemy")


@dataclass(frozen=True)
class PlantedSecrets:
    """Three secrets unique to one search (no `sk-` prefix, no `password=`: only the scrubbing
    of the blocks' own values catches them, not the generic patterns)."""

    api_key: str
    """The model endpoint's API key."""
    dsn_key: str
    """The public key inside the Sentry DSN."""
    password: str
    """The state database's password."""

    @classmethod
    def make(cls, tag: str) -> PlantedSecrets:
        """Secrets marked with `tag`.

        Example:
            >>> PlantedSecrets.make("t1").api_key
            'plantedApiKeyt1'
        """
        return cls(f"plantedApiKey{tag}", f"plantedDsnKey{tag}", f"Pl4ntedPassw0rd{tag}")

    def named(self) -> dict[str, str]:
        """Name → secret, for `find_leaks`.

        Example:
            >>> sorted(PlantedSecrets.make("t").named())
            ['API key', 'DSN key', 'database password']
        """
        return {
            "API key": self.api_key,
            "DSN key": self.dsn_key,
            "database password": self.password,
        }


class _Ticket(BaseModel):
    text: str


class _Routing(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


def careless_agent(name: str, secrets: tuple[str, ...]) -> Agent:
    """An agent that decides through the model and whose action fails on "crash" tickets while
    holding the secrets in a local variable (Sentry sends stack-frame variables, so only
    scrubbing keeps them out of the event).

    Example:
        >>> careless_agent("careless-doc", ("s",)).name
        'careless-doc'
    """
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> _Ticket:
        return _Ticket(text=raw)

    @agent.reasoning(threshold=0.5)
    def route(ticket: _Ticket, llm: LLM) -> _Routing:
        return llm.decide(_Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def send(route: _Routing, ticket: _Ticket) -> str:
        held = secrets  # a local variable: Sentry sends it with the frame
        if "crash" in ticket.text:
            raise ConnectionError(f"the CRM refused the {route.category} ticket ({len(held)})")
        return route.category

    return agent


def prefect_records(flow_run_ids: Sequence[str]) -> str:
    """Everything the Prefect API keeps about these flow runs (logs, artifacts, flow and task
    runs, task-run states), as JSON text.

    Example:
        >>> "secret" in prefect_records([result.flow_run_id])  # doctest: +SKIP
        False
    """
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
    if not (artifacts and flow_runs and task_runs):
        raise AssertionError("the Prefect API holds nothing to search for these flow runs")
    items: list[Any] = [*logs, *artifacts, *flow_runs, *task_runs]
    items += [s for group in states for s in group]
    parts.extend(item.model_dump_json() for item in items)
    return "\n".join(parts)


def database_dump(url: str) -> str:
    """Every row of every Stalwart table, as text (bytes decoded leniently).

    Example:
        >>> database_dump("sqlite://")
        ''
    """
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    from agents.store.engine import get_engine

    rows: list[str] = []
    with get_engine(url).connect() as conn:
        for table in SQLModel.metadata.sorted_tables:
            if not sa.inspect(conn).has_table(table.name):
                continue
            for row in conn.execute(sa.select(table)):
                for value in row:
                    if isinstance(value, bytes | bytearray | memoryview):
                        value = bytes(value).decode("utf-8", errors="replace")
                    rows.append(f"{table.name}: {value!r}")
    return "\n".join(rows)


def exception_text(exc: BaseException) -> str:
    """An exception's message, traceback, causes and repr.

    Example:
        >>> "boom" in exception_text(ValueError("boom"))
        True
    """
    return "".join(traceback.format_exception(exc)) + repr(exc)


def find_leaks(sources: Mapping[str, str], planted: Mapping[str, str]) -> list[str]:
    """`"<secret name> in <source>"` for every planted secret found in a source's text.

    Example:
        >>> find_leaks({"stdout": "pw: hunter2"}, {"password": "hunter2"})
        ['password in stdout']
    """
    return [
        f"{what} in {where}"
        for where, text in sources.items()
        for what, secret in planted.items()
        if secret in text
    ]


class LogCapture(logging.Handler):
    """Keeps every record of `CAPTURED_LOGGERS` at DEBUG while active (a context manager).

    Example:
        >>> with LogCapture() as logs:
        ...     logging.getLogger("agents").debug("hello %s", "there")
        >>> "hello there" in logs.text()
        True
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self._levels: dict[str, int] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def __enter__(self) -> LogCapture:
        for name in CAPTURED_LOGGERS:
            logger = logging.getLogger(name or None)
            self._levels[name] = logger.level
            logger.setLevel(logging.DEBUG)
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeHandler(self)
        for name, level in self._levels.items():
            logging.getLogger(name or None).setLevel(level)

    def text(self) -> str:
        """Every record as `name message exc_text traceback`."""
        return "\n".join(
            f"{r.name} {r.getMessage()} {r.exc_text or ''}"
            + ("".join(traceback.format_exception(*r.exc_info)) if r.exc_info else "")
            for r in self.records
        )


@contextmanager
def _environment(**variables: str) -> Iterator[None]:
    """Set environment variables (and reload settings) for the block; restore them after."""
    from agents.blocks import forget_loaded_blocks
    from agents.settings import reload_settings

    before = {name: os.environ.get(name) for name in variables}
    os.environ.update(variables)
    reload_settings()
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        reload_settings()
        forget_loaded_blocks()


@dataclass
class Exercise:
    """What `exercise` did: the runs, the errors raised to a caller, and what it read back."""

    planted: PlantedSecrets
    agent: str
    database_url: str
    results: list[RunResult] = field(default_factory=list)
    exceptions: list[BaseException] = field(default_factory=list)
    scrubbed: str = ""
    database: str = ""
    loaded_secrets: set[str] = field(default_factory=set)


def exercise(
    *, model_server: Any, receiver: Any, admin_database_url: str, tag: str | None = None
) -> Exercise:
    """Plant the three secrets in blocks and run every path that handles them.

    Saves a model endpoint, a state database (the admin URL with the planted password) and a
    Sentry config as blocks, then runs a decision, a failing action, a model 401 and model 500s
    through the agent, and raises a 403 and 503s to a caller outside any flow. Needs a Prefect
    API in force; the database must trust the connection whatever the password (trust auth).

    Args:
        model_server: A running `agents.modelserver.ModelServer`.
        receiver: A running `agents.testing.sentry.SentryReceiver`.
        admin_database_url: A migrated PostgreSQL database the runs write to.
        tag: Marks the secrets and block names (default: random).

    Example:
        >>> done = exercise(model_server=server, receiver=receiver,
        ...                 admin_database_url=url)  # doctest: +SKIP
        >>> [r.status for r in done.results]  # doctest: +SKIP
        ['completed', 'failed', 'failed', 'failed']
    """
    from agents.blocks import ModelEndpoint, SentryConfig, StateDatabase, loaded_secrets
    from agents.errors import ProviderRejected, ProviderUnavailable
    from agents.observe import flush, shutdown_sentry
    from agents.redact import scrub_text

    tag = tag or uuid.uuid4().hex[:12]
    planted = PlantedSecrets.make(tag)
    database_url = (
        make_url(admin_database_url)
        .set(password=planted.password)
        .render_as_string(hide_password=False)
    )
    dsn = f"http://{planted.dsn_key}@127.0.0.1:{receiver.port}/{receiver.project_id}"
    ModelEndpoint(
        base_url=model_server.url, model="secret-model", api_key=SecretStr(planted.api_key)
    ).save(f"model-{tag}")
    StateDatabase(database_url=SecretStr(database_url)).save(f"db-{tag}")
    SentryConfig(dsn=SecretStr(dsn), environment="secrets-test").save(f"sentry-{tag}")
    agent = careless_agent(f"careless-{tag}", tuple(planted.named().values()))
    done = Exercise(planted=planted, agent=agent.name, database_url=database_url)
    try:
        with _environment(
            STALWART_MODEL_BLOCK=f"model-{tag}",
            STALWART_DATABASE_BLOCK=f"db-{tag}",
            STALWART_SENTRY_BLOCK=f"sentry-{tag}",
            STALWART_MODEL_MAX_ATTEMPTS="2",
            STALWART_MODEL_RETRY_BASE_SECONDS="0.01",
        ):
            done.results.append(agent.run(tenant="acme", raw="I was charged twice, refund me"))
            done.results.append(agent.run(tenant="acme", raw="crash: I need a refund"))
            model_server.faults.update(fail_next=["401"])
            done.results.append(agent.run(tenant="acme", raw="my parcel is late"))
            model_server.faults.update(fail_next=["500", "500"])
            done.results.append(agent.run(tenant="acme", raw="I cannot log in to my account"))
            # The same errors raised to a caller, outside any flow.
            for faults, expected in (
                (["403"], ProviderRejected),
                (["503"] * 2, ProviderUnavailable),
            ):
                model_server.faults.update(fail_next=faults)
                try:
                    LLM(cache=False).decide(_Routing, "Route: where is my parcel?")
                except expected as exc:
                    done.exceptions.append(exc)
                else:
                    raise AssertionError(f"{faults} did not raise {expected.__name__}")
            done.loaded_secrets = set(loaded_secrets())
            done.scrubbed = scrub_text(
                f"key {planted.api_key}, dsn {planted.dsn_key}, db {planted.password}"
            )
            flush()
            receiver.wait_for(3, timeout=10)
            done.database = database_dump(database_url)
    finally:
        shutdown_sentry(timeout=1.0)
    return done


def sources(done: Exercise, receiver: Any, logs: str, out: str, err: str) -> dict[str, str]:
    """Every place searched, by name → its text.

    Example:
        >>> sorted(sources(done, receiver, "", "", ""))[:2]  # doctest: +SKIP
        ['Prefect logs, artifacts, runs and states', 'RunResult']
    """
    return {
        "log records": logs,
        "stdout": out,
        "stderr": err,
        "Prefect logs, artifacts, runs and states": prefect_records(
            [r.flow_run_id for r in done.results if r.flow_run_id]
        ),
        "state database": done.database,
        "Sentry": receiver.raw_text(),
        "exceptions": "\n".join(exception_text(e) for e in done.exceptions),
        "RunResult": "\n".join(f"{r!r} {r.error}" for r in done.results),
        "scrub_text": done.scrubbed,
    }
