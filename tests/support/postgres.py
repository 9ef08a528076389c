"""Throw-away PostgreSQL databases on the local server (admin URL `STALWART_TEST_PG`).

A server that stays unreachable skips the test with the reason, or fails it when
`STALWART_REQUIRE_POSTGRES` is set (CI: a missing server is a failure).
"""

from __future__ import annotations

import os
import time
import uuid

import psycopg
import pytest
from psycopg import sql

PG_ADMIN_URL = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
_pg_unreachable: str | None = None


def admin_connect() -> psycopg.Connection:
    """An autocommit connection to the admin database, retried a few times before giving up."""
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


def pg_url(dbname: str) -> str:
    """The SQLAlchemy (psycopg 3) URL of database `dbname` on the admin URL's server."""
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return f"{base}/{dbname}".replace("postgresql://", "postgresql+psycopg://", 1)


def create_pg_database() -> tuple[str, str]:
    """Create an empty database; return (name, SQLAlchemy URL)."""
    name = f"stalwart_test_{uuid.uuid4().hex[:12]}"
    with admin_connect() as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name, pg_url(name)


def drop_pg_database(name: str) -> None:
    """Dispose of the engines (they hold connections to it), then drop database `name`."""
    from agents.store.engine import dispose_engines

    dispose_engines()
    with admin_connect() as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
