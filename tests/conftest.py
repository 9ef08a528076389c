"""Shared fixtures: an isolated data directory, one Prefect test harness per session, a fresh
state database per test (SQLite; PostgreSQL for tests marked `postgres`)."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="stalwart-tests-"))
os.environ["STALWART_DATA_DIR"] = str(_SESSION_DIR / "data")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(_SESSION_DIR / "prefect-storage")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
for _name in ("SENTRY_DSN", "STALWART_DATABASE_URL", "STALWART_API_KEY"):
    os.environ.pop(_name, None)

_model_url = os.environ.get("STALWART_MODEL_URL")
if _model_url and urlparse(_model_url).hostname not in {"127.0.0.1", "localhost", "::1"}:
    raise RuntimeError("tests only talk to model endpoints on loopback; unset STALWART_MODEL_URL")

PG_ADMIN_URL = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


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
    psycopg = pytest.importorskip("psycopg")
    name = f"stalwart_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:  # pragma: no cover - depends on the machine
        if os.environ.get("STALWART_REQUIRE_POSTGRES"):
            raise
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    with admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    url = f"{url}/{name}"
    from agents.store import upgrade

    upgrade(url)
    yield url
    from agents.store.engine import dispose_engines

    dispose_engines()
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
    is on the ephemeral test harness. Stopped by PID at the end of the session.
    """
    from agents.testing.prefect_server import PrefectServer

    with PrefectServer(postgres=PG_ADMIN_URL) as server:
        yield server


@pytest.fixture
def on_prefect_server(prefect_server: Any) -> Iterator[Any]:
    """Make `prefect_server` the Prefect API in force for this test (in this process)."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: prefect_server.api_url}):
        yield prefect_server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def state_db(request: pytest.FixtureRequest) -> str:
    """The state database in force for a test, once on SQLite and once on PostgreSQL."""
    fixture = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    return str(request.getfixturevalue(fixture))


@pytest.fixture
def model_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """The bundled model server on an ephemeral loopback port, made the endpoint in force."""
    from agents.settings import reload_settings
    from agents.modelserver import ModelServer

    with ModelServer(port=0) as server:
        monkeypatch.setenv("STALWART_MODEL_URL", server.url)
        monkeypatch.setenv("STALWART_API_KEY", "sk-test-not-a-real-key-0000000000000000000")
        reload_settings()
        yield server
    monkeypatch.delenv("STALWART_MODEL_URL")
    monkeypatch.delenv("STALWART_API_KEY")
    reload_settings()
