"""Shared fixtures of the store tests (imported by tests/test_store*.py, not a pytest conftest).

* `db_url`: parametrised over a temporary SQLite file and a fresh PostgreSQL database (one per
  test session, created on 127.0.0.1 as user postgres and dropped at the end), both upgraded.
* `fresh_db_url`: the same two backends, but a brand-new, *empty* database per test
  (`fresh_pg_url`: PostgreSQL only).
* `new_tenant`: a unique tenant name, so tests sharing a database never see each other's rows.

PostgreSQL tests carry the `postgres` marker and are skipped, with the reason, only if the
server stays unreachable (a failure with STALWART_REQUIRE_POSTGRES set). The admin URL is
STALWART_TEST_PG, as in tests/conftest.py.

Test modules `import conftest_store` first (it puts the repository on sys.path for a bare
`pytest`) and register it with `pytest_plugins = ["conftest_store"]`, so session fixtures are
shared; hence PYTEST_DONT_REWRITE (it is imported before pytest could rewrite it).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

# Make the repository importable under a bare `pytest` (a no-op when pytest already does it).
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import psycopg  # noqa: E402
from psycopg import sql  # noqa: E402

from agents.store.engine import dispose_engines, upgrade  # noqa: E402

PG_ADMIN_URL = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_pg_unreachable: str | None = None


def _admin_connect() -> psycopg.Connection:
    global _pg_unreachable
    if _pg_unreachable is not None:
        pytest.skip(_pg_unreachable)
    last: Exception | None = None
    for delay in (0.0, 0.5, 1.5, 3.0):
        time.sleep(delay)
        try:
            return psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5)
        except psycopg.OperationalError as exc:
            last = exc
    _pg_unreachable = (
        f"PostgreSQL unreachable at {PG_ADMIN_URL.split('@')[-1]} after 4 tries: {last}"
    )
    if os.environ.get("STALWART_REQUIRE_POSTGRES"):  # CI: a missing server is a failure
        raise RuntimeError(_pg_unreachable) from last
    pytest.skip(_pg_unreachable)


def _pg_url(dbname: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}".replace("postgresql://", "postgresql+psycopg://", 1)


def create_pg_database() -> tuple[str, str]:
    """Create an empty database; return (name, SQLAlchemy URL)."""
    name = f"stalwart_test_{uuid.uuid4().hex[:12]}"
    with _admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, _pg_url(name)


def drop_pg_database(name: str) -> None:
    dispose_engines()
    with _admin_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
]


@pytest.fixture(scope="session")
def _sqlite_session_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('store') / 'nested' / 'stalwart.db'}"
    upgrade(url)
    return url


@pytest.fixture(scope="session")
def _pg_session_url() -> Iterator[str]:
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
        yield f"sqlite:///{tmp_path / 'fresh' / 'stalwart.db'}"
        dispose_engines()
        return
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)


@pytest.fixture
def new_tenant() -> str:
    return f"tenant-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A new, empty PostgreSQL database for this test only (mark the test `postgres`)."""
    name, url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(name)
