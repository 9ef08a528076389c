"""The tests' fixtures, in one place (a tier's conftest.py only adds what is its own).

* Environment: an isolated data directory and Prefect storage for the session; no Sentry DSN,
  state database URL or API key from the caller's environment; model endpoints on loopback only.
* Prefect: `prefect_api` (one test harness, a temporary API server, per session), `prefect_server`
  (a real `prefect server` on the local PostgreSQL) and `on_prefect_server` (make it the API).
* State database in force (settings): `sqlite_url`, `postgres_url` (one PostgreSQL database per
  session), `state_db` (parametrised over both).
* Database URLs not made the one in force (store tests): `db_url` (an upgraded database shared
  by the session, one per backend), `fresh_db_url` (a new, empty database per test; both
  backends), `fresh_pg_url` (PostgreSQL only), `new_tenant` (a unique tenant name).
* `model_server`: the bundled model server, made the endpoint in force.

PostgreSQL tests carry the `postgres` marker; an unreachable server skips them with the reason,
or fails them when STALWART_REQUIRE_POSTGRES is set (CI). See tests/support/postgres.py.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from agents.execution.recording import prepare_temporary_server
from tests.support.postgres import PG_ADMIN_URL, create_pg_database, drop_pg_database

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="stalwart-tests-"))
os.environ["STALWART_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect-storage")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
prepare_temporary_server()  # the test harness records task runs in batches, as users' servers do
for _name in ("SENTRY_DSN", "STALWART_DATABASE_URL", "STALWART_API_KEY"):
    os.environ.pop(_name, None)

_model_url = os.environ.get("STALWART_MODEL_URL")
if _model_url and urlparse(_model_url).hostname not in {"127.0.0.1", "localhost", "::1"}:
    raise RuntimeError("tests only talk to model endpoints on loopback; unset STALWART_MODEL_URL")


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[None]:
    """One Prefect test harness (a temporary API server) for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    # 180 s: on a loaded two-core machine the temporary server took over 60 s to answer.
    with prefect_test_harness(server_startup_timeout=180):
        yield


def _use_database(monkeypatch: pytest.MonkeyPatch, url: str) -> str:
    from agents.settings import reload_settings

    monkeypatch.setenv("STALWART_DATABASE_URL", url)
    reload_settings()
    return url


@pytest.fixture
def sqlite_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A fresh SQLite state database for one test, made the one in force."""
    yield _use_database(monkeypatch, f"sqlite:///{tmp_path / 'state.db'}")
    from agents.settings import reload_settings
    from agents.store.engine import dispose_engines

    dispose_engines()
    monkeypatch.delenv("STALWART_DATABASE_URL")
    reload_settings()


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A fresh PostgreSQL database for the session, upgraded with Alembic, dropped at the end."""
    name, url = create_pg_database()
    try:
        from agents.store import upgrade

        upgrade(url)
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def postgres_url(postgres_server_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    yield _use_database(monkeypatch, postgres_server_url)
    from agents.settings import reload_settings

    monkeypatch.delenv("STALWART_DATABASE_URL")
    reload_settings()


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[Any]:
    """A real `prefect server` on loopback, its database on the local PostgreSQL (session-wide).

    Production-like: flow-run creation is not throttled by SQLite's `database is locked`, as it
    is on the ephemeral test harness, and its events go through Redis (`STALWART_TEST_REDIS`),
    as docs/deployment.md advises, so none is dropped. Stopped by PID at the end of the session.
    """
    from agents.testing.prefect_server import PrefectServer

    redis_url = os.environ.get("STALWART_TEST_REDIS", "redis://127.0.0.1:6379")
    with PrefectServer(postgres=PG_ADMIN_URL, redis=redis_url) as server:
        yield server


@pytest.fixture
def on_prefect_server(prefect_server: Any) -> Iterator[Any]:
    """Make `prefect_server` the Prefect API in force for this test (in this process).

    Prefect keeps one events worker per process for any running server, bound to the API URL in
    force when it started: it is drained before and after, so task-run events go to the server
    of the test that made them (the tests after this one use the test harness again).
    """
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL, temporary_settings

    EventsWorker.drain_all()
    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        try:
            yield prefect_server
        finally:
            EventsWorker.drain_all()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_db(request: pytest.FixtureRequest) -> str:
    """The state database in force for a test, once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The bundled model server on an ephemeral loopback port, made the endpoint in force."""
    from agents.modelserver import ModelServer
    from agents.settings import reload_settings

    with ModelServer(port=0) as server:
        monkeypatch.setenv("STALWART_MODEL_URL", server.url)
        monkeypatch.setenv("STALWART_API_KEY", "sk-test-not-a-real-key-0000000000000000000")
        reload_settings()
        yield server
    monkeypatch.delenv("STALWART_MODEL_URL")
    monkeypatch.delenv("STALWART_API_KEY")
    reload_settings()


@pytest.fixture
def steered_model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """`steered_model_server(rules)`: the bundled model server with these steering rules, on an
    ephemeral loopback port, made the endpoint in force (stopped at the end of the test)."""
    from contextlib import ExitStack

    from agents.modelserver import ModelServer
    from agents.settings import reload_settings

    with ExitStack() as stack:

        def start(rules: Any) -> ModelServer:
            server = stack.enter_context(ModelServer(port=0, rules=rules))
            monkeypatch.setenv("STALWART_MODEL_URL", server.url)
            monkeypatch.setenv("STALWART_API_KEY", "sk-test-not-a-real-key-0000000000000000000")
            reload_settings()
            return server

        yield start
    reload_settings()


@pytest.fixture
def steplog_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point the cross-process test agents' execution logs (`tests.support.steplog`) here."""
    from tests.support import steplog

    monkeypatch.setattr(steplog, "OUT", str(tmp_path))
    return tmp_path


# -- database URLs for the store tests (not made the one in force) ---------------------------

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def _sqlite_session_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    from agents.store.engine import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'nested' / 'stalwart.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def _pg_session_url() -> Iterator[str]:
    from agents.store.engine import upgrade

    name, url = create_pg_database()
    try:
        upgrade(url)
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """An upgraded database URL shared by the session, one per backend."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("_sqlite_session_url"))
    return str(request.getfixturevalue("_pg_session_url"))


@pytest.fixture(params=BACKENDS)
def fresh_db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A new, empty database (no schema) for this test only."""
    if request.param == "sqlite":
        from agents.store.engine import dispose_engines

        yield f"sqlite:///{tmp_path / 'fresh' / 'stalwart.db'}"
        dispose_engines()
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test only (mark the test `postgres`)."""
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def new_tenant() -> str:
    """A unique tenant name, so tests sharing a database never see each other's rows."""
    return f"tenant-{uuid.uuid4().hex[:10]}"
