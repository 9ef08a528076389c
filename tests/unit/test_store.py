"""Tests of agents.store that need no database server: SQLite engines (upgraded on first use and
tuned, in memory across threads, the default URL from settings), URL normalising and redaction,
and the tenant every query and memory requires.

The rest, on SQLite and PostgreSQL: tests/integration/test_store.py.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agents.settings import temporary_settings
from agents.store import (
    AgentRun,
    Memory,
    actions,
    current_revision,
    get_engine,
    head_revision,
    memory,
    record_run_end,
    record_run_start,
    redact_url,
    runs,
    steps,
)
from agents.store.engine import dispose_engines, normalize_url


def test_sqlite_is_upgraded_on_first_use_and_tuned(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'a' / 'b' / 'state.db'}"
    engine = get_engine(url)
    assert engine is get_engine(url)
    assert (tmp_path / "a" / "b" / "state.db").exists()
    assert current_revision(url) == head_revision()
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1


def test_in_memory_sqlite_works_across_threads() -> None:
    dispose_engines()
    url = "sqlite://"
    mem = Memory("t", "a", url=url)
    mem.set("k", 1)
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(lambda _: mem.get("k"), range(4))) == [1, 1, 1, 1]
    assert get_engine(url).pool.__class__.__name__ == "StaticPool"
    dispose_engines()


def test_default_url_comes_from_settings(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'settings.db'}"
    with temporary_settings(database_url=url):
        assert get_engine() is get_engine(url)
        Memory("t", "a").set("k", "v")
    assert Memory("t", "a", url=url).get("k") == "v"


def test_driverless_postgres_url_gets_psycopg() -> None:
    assert normalize_url("postgresql://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert normalize_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (
            "postgresql+psycopg://bob:hunter2@db:5432/app",
            "postgresql+psycopg://bob:***@db:5432/app",
        ),
        ("postgresql://bob@db/app", "postgresql://bob@db/app"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        (
            "postgresql://db/app?user=bob&password=hunter2&sslmode=require",
            "postgresql://db/app?user=bob&password=***&sslmode=require",
        ),
        ("postgresql://bob:p%40ss@db/app", "postgresql://bob:***@db/app"),
        ("not a url://bob:hunter2@host", "not a url://bob:***@host"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected
    assert "hunter2" not in redact_url(url)


def test_memory_requires_a_tenant() -> None:
    with pytest.raises(ValueError, match="tenant"):
        Memory("", "a")
    with pytest.raises(ValueError, match="tenant"):
        Memory(None, "a")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="tenant"):
        Memory(" \t", "a")  # whitespace is no tenant either (the runtime refuses it too)


def _run(tenant: str, agent: str = "triage", status: str = "running", **kw: object) -> AgentRun:
    return AgentRun(
        tenant=tenant, agent=agent, run_key="rk", status=status, inputs_digest="0" * 64, **kw
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: runs(tenant=""),
        lambda: runs(tenant=" \r\n\t"),  # blank is no tenant either
        lambda: steps(tenant="", agent_run_id="x"),
        lambda: memory(tenant=""),
        lambda: actions(tenant=""),
        lambda: record_run_end("x", tenant="", status="completed"),
        lambda: record_run_start(_run("")),
    ],
)
def test_queries_require_a_tenant(call: object) -> None:
    with pytest.raises(ValueError, match="tenant"):
        call()  # type: ignore[operator]


def test_query_functions_take_tenant_as_keyword_only() -> None:
    with pytest.raises(TypeError):
        runs("acme")  # type: ignore[misc]
