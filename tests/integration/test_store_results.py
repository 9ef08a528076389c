"""Tests of agents.store.results.SQLResultStorage: the block alone, then as Prefect result storage.

The Prefect tests use the session's `prefect_test_harness` (fixture `prefect_api` of
tests/conftest.py: a temporary API server, ~10 s to start) and check the pitfall from
PREFECT-NOTES: the sync engine calls `read_path(key, _sync=True)`, so a sync task only hits the
cache if the block accepts `_sync`.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from agents.settings import temporary_settings
from agents.store import SQLResultStorage, get_engine
from agents.store.tables import StepResult
from tests.support.sqlcount import counted


def _row_count(url: str, key: str) -> int:
    with get_engine(url).connect() as conn:
        query = sa.select(sa.func.count()).where(StepResult.__table__.c.key == key)  # type: ignore[attr-defined]
        return int(conn.execute(query).scalar_one())


# -- the block on its own -----------------------------------------------------------------------


def test_block_identity() -> None:
    assert SQLResultStorage.get_block_type_slug() == "stalwart-sql-result-storage"
    assert SQLResultStorage.get_block_type_name() == "Stalwart SQL Result Storage"
    assert set(SQLResultStorage.model_fields) == {"database_url"}
    assert SQLResultStorage().database_url is None
    assert "hunter2" not in repr(SQLResultStorage(database_url="postgresql://u:hunter2@h/db"))


def test_sync_round_trip_and_overwrite(db_url: str) -> None:
    storage = SQLResultStorage(database_url=db_url)
    key = f"sync-{uuid.uuid4().hex}"
    with pytest.raises(FileNotFoundError, match=key):
        storage.read_path(key)
    payload = bytes(range(256)) * 10
    assert storage.write_path(key, payload) == key
    assert storage.read_path(key) == payload
    # Prefect's sync engine passes `_sync=True` (content as a keyword).
    assert storage.write_path(key, content=b"second", _sync=True) == key
    assert storage.read_path(key, _sync=True) == b"second"
    assert _row_count(db_url, key) == 1
    assert storage.delete_path(key) is True
    assert storage.delete_path(key) is False
    with pytest.raises(FileNotFoundError):
        storage.read_path(key)


def test_async_round_trip_and_overwrite(db_url: str) -> None:
    storage = SQLResultStorage(database_url=db_url)
    key = f"async-{uuid.uuid4().hex}"

    async def main() -> None:
        with pytest.raises(FileNotFoundError):
            await storage.aread_path(key)
        assert await storage.awrite_path(key, content=b"one") == key
        assert await storage.aread_path(key) == b"one"
        await asyncio.gather(*(storage.awrite_path(key, f"v{i}".encode()) for i in range(8)))
        assert (await storage.aread_path(key)).startswith(b"v")
        assert await storage.adelete_path(key) is True

    asyncio.run(main())
    assert _row_count(db_url, key) == 0


def test_concurrent_async_writes_and_reads_share_round_trips(db_url: str) -> None:
    """50 results written at once take a few transactions, not 50; each caller returns with its
    own row committed; a bad key fails alone; reads at once share queries and still tell a
    missing key apart."""
    storage = SQLResultStorage(database_url=db_url)
    prefix = uuid.uuid4().hex
    keys = [f"{prefix}-{i}" for i in range(50)]

    async def writes() -> list[Any]:
        return await asyncio.gather(
            *(storage.awrite_path(k, k.encode()) for k in keys),
            storage.awrite_path("", b"no key"),
            return_exceptions=True,
        )

    async def reads() -> list[Any]:
        return await asyncio.gather(
            *(storage.aread_path(k) for k in [*keys, f"{prefix}-absent"]),
            return_exceptions=True,
        )

    with counted(db_url) as write_trips:
        written = asyncio.run(writes())
    with counted(db_url) as read_trips:
        read = asyncio.run(reads())
    assert written[:50] == keys
    assert isinstance(written[50], ValueError)
    assert read[:50] == [k.encode() for k in keys]
    assert isinstance(read[50], FileNotFoundError)
    # A group's rows go in one statement (executemany), in one transaction.
    assert write_trips["commit"] <= 3 and write_trips["INSERT step_result"] <= 3, write_trips
    assert read_trips["SELECT step_result"] <= 3, read_trips
    assert all(_row_count(db_url, k) == 1 for k in keys)


def test_long_keys(db_url: str) -> None:
    storage = SQLResultStorage(database_url=db_url)
    key = "k" * 512
    storage.write_path(key, b"x")
    assert storage.read_path(key) == b"x"
    storage.delete_path(key)
    with pytest.raises(ValueError, match="512"):
        storage.write_path("k" * 513, b"x")


def test_url_defaults_to_settings_at_call_time(tmp_path: Path) -> None:
    storage = SQLResultStorage()
    for name in ("one", "two"):
        url = f"sqlite:///{tmp_path / name / 'state.db'}"
        with temporary_settings(database_url=url):
            storage.write_path("k", name.encode())
        assert SQLResultStorage(database_url=url).read_path("k") == name.encode()


# -- as Prefect's result storage -----------------------------------------------------------------


@pytest.fixture
def local_storage(tmp_path: Path) -> Iterator[Path]:
    """Prefect's local result storage, pointed at an empty directory that must stay empty."""
    from prefect.settings import PREFECT_LOCAL_STORAGE_PATH, temporary_settings

    path = tmp_path / "prefect-storage"
    path.mkdir()
    with temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: path}):
        yield path
    assert sorted(p.name for p in path.rglob("*")) == [], "results leaked to local storage"


def _saved_block(url: str) -> SQLResultStorage:
    block = SQLResultStorage(database_url=url)
    block.save(f"test-{uuid.uuid4().hex[:8]}", overwrite=True)
    return block


def _keys(url: str) -> set[str]:
    with get_engine(url).connect() as conn:
        return set(conn.execute(sa.select(StepResult.__table__.c.key)).scalars())  # type: ignore[attr-defined]


def test_sync_task_hits_the_cache(db_url: str, prefect_api: None, local_storage: Path) -> None:
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    block = _saved_block(db_url)
    calls: list[Any] = []

    @task(persist_result=True, result_storage=block, cache_policy=INPUTS)
    def double(x: str) -> str:
        calls.append(x)
        return x * 2

    @flow(persist_result=False)
    def pipeline(x: str) -> tuple[str, str]:
        state = double(x, return_state=True)
        return state.name, state.result()

    token = uuid.uuid4().hex
    before = _keys(db_url)
    assert pipeline(token) == ("Completed", token * 2)
    new_keys = _keys(db_url) - before
    assert len(new_keys) == 1
    assert pipeline(token) == ("Cached", token * 2)
    assert calls == [token]

    # Deleting the stored result makes the task run again.
    SQLResultStorage(database_url=db_url).delete_path(new_keys.pop())
    assert pipeline(token) == ("Completed", token * 2)
    assert calls == [token, token]


def test_async_task_hits_the_cache_with_a_block_reference(
    db_url: str, prefect_api: None, local_storage: Path
) -> None:
    from prefect import flow, task
    from prefect.cache_policies import INPUTS

    block = _saved_block(db_url)
    reference = f"{SQLResultStorage.get_block_type_slug()}/{block._block_document_name}"
    calls: list[Any] = []

    @task(persist_result=True, result_storage=reference, cache_policy=INPUTS)
    async def triple(x: str) -> str:
        calls.append(x)
        return x * 3

    @flow(persist_result=False)
    async def pipeline(x: str) -> tuple[str, str]:
        state = await triple(x, return_state=True)
        return state.name, await state.result()

    token = uuid.uuid4().hex
    before = _keys(db_url)
    assert asyncio.run(pipeline(token)) == ("Completed", token * 3)
    assert len(_keys(db_url) - before) == 1
    assert asyncio.run(pipeline(token)) == ("Cached", token * 3)
    assert calls == [token]
