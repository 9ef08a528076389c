"""Results: a Prefect result-storage block that keeps task results in the `step_result` table.

Owns `SQLResultStorage`, so Prefect's persisted results (and therefore its cache hits) live in
Stalwart's database, on SQLite or PostgreSQL, and never in `~/.prefect/storage`.

How Prefect 3.9 calls a storage block (`prefect/_internal/compatibility/blocks.py`):

* async engine: `aread_path(key)` / `awrite_path(key, content=...)` when the block has them;
* sync engine: `read_path(key, _sync=True)` / `write_path(key, content=..., _sync=True)`.

Hence plain sync `read_path`/`write_path` that accept (and ignore) `_sync`, plus async
`aread_path`/`awrite_path`. Without `_sync`, sync tasks log a TypeError, finish Completed and never
hit the cache. Reads and writes survive a lost connection (a write is an upsert: safe to repeat).

Example:
    >>> storage = SQLResultStorage(database_url="sqlite://")
    >>> storage.write_path("k", b"v")
    'k'
    >>> storage.read_path("k")
    b'v'
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from prefect.filesystems import WritableFileSystem
from pydantic import Field, SecretStr
from sqlalchemy import bindparam, delete
from sqlmodel import col, select

from agents.store._group import database_of, shared
from agents.store._writes import upsert
from agents.store.engine import get_engine, reconnecting, session
from agents.store.tables import StepResult, utcnow

__all__ = ["SQLResultStorage"]

MAX_KEY_LENGTH = 512


class SQLResultStorage(WritableFileSystem):
    """Prefect result storage in Stalwart's `step_result` table (one row per result key).

    Save it once (`SQLResultStorage().save("stalwart")`) and pass it, or its reference
    `"stalwart-sql-result-storage/stalwart"`, as a task's `result_storage`.

    Attributes:
        database_url: the database to use; None means Stalwart's settings URL at call time
            (`STALWART_DATABASE_URL` or the default SQLite file).

    Example:
        >>> from prefect import task
        >>> from prefect.cache_policies import INPUTS
        >>> storage = SQLResultStorage()  # then: storage.save("stalwart", overwrite=True)
        >>> # @task(persist_result=True, result_storage=storage, cache_policy=INPUTS)
    """

    _block_type_name = "Stalwart SQL Result Storage"
    _block_type_slug = "stalwart-sql-result-storage"
    _description = "Stores Prefect task results in Stalwart's SQL database (SQLite or PostgreSQL)."

    database_url: SecretStr | None = Field(
        default=None,
        description="SQLAlchemy URL of the database; empty means STALWART_DATABASE_URL.",
    )

    def _url(self) -> str | None:
        if self.database_url is None:
            return None
        return self.database_url.get_secret_value() or None

    # -- sync: what Prefect's sync engine calls (with `_sync=True`) ---------------------------

    @reconnecting
    def read_path(self, path: str, _sync: bool | None = None) -> bytes:  # type: ignore[override]
        """The bytes stored under a key.

        Args:
            path: the result key.
            _sync: passed by Prefect's sync engine; ignored (this method is always sync).

        Raises:
            FileNotFoundError: nothing is stored under the key.

        Example:
            >>> SQLResultStorage(database_url="sqlite://").read_path("absent")
            Traceback (most recent call last):
            FileNotFoundError: No result stored under key 'absent' (table step_result).
        """
        with session(self._url()) as s:
            content = s.exec(
                select(StepResult.content).where(col(StepResult.key) == path)
            ).one_or_none()
        if content is None:
            raise _missing(path)
        return bytes(content)

    def write_path(  # type: ignore[override]
        self, path: str, content: bytes, _sync: bool | None = None
    ) -> str:
        """Store bytes under a key, replacing what was there; return the key.

        Args:
            path: the result key (at most 512 characters).
            content: the serialized result record.
            _sync: passed by Prefect's sync engine; ignored (this method is always sync).

        Example:
            >>> SQLResultStorage(database_url="sqlite://").write_path("k", b"x")
            'k'
        """
        _check_key(path)
        _write_rows(self._url(), [(path, content)])
        return path

    def write_paths(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Store several results in one transaction (what concurrent `awrite_path`s share)."""
        _write_rows(self._url(), items)

    @reconnecting
    def delete_path(self, path: str) -> bool:
        """Delete the result stored under a key (forcing a re-run); True if it existed.

        Example:
            >>> SQLResultStorage(database_url="sqlite://").delete_path("absent")
            False
        """
        with session(self._url()) as s:
            result = s.exec(delete(StepResult).where(col(StepResult.key) == path))
            return bool(result.rowcount)

    # -- async: what Prefect's async engine calls ------------------------------------------

    async def aread_path(self, path: str) -> bytes:
        """Async `read_path`: the reads of one event loop that arrive while a query runs share
        the next query (`WHERE key IN (...)`; where it runs: `agents.store._group`).

        Raises:
            FileNotFoundError: nothing is stored under the key.
        """
        found = await shared(_read_together, database_of(self._url()), path)
        if found is None:
            raise _missing(path)
        return found

    def read_paths(self, paths: Sequence[str]) -> dict[str, bytes]:
        """The results stored under several keys, in one query (absent keys are left out)."""
        return _read_rows(self._url(), paths)

    async def awrite_path(self, path: str, content: bytes) -> str:
        """Async `write_path`: the writes of one event loop that arrive while a transaction is
        being committed share the next one (group commit; where: `agents.store._group`).

        A batch runs dozens of steps at once; one transaction per result made the database's
        write lock and commit the bottleneck (on SQLite, one writer at a time). It returns once
        its own result is committed, as `write_path` does.
        """
        _check_key(path)
        await shared(_write_together, database_of(self._url()), (path, bytes(content)))
        return path

    async def adelete_path(self, path: str) -> bool:
        """Async `delete_path` (the query runs in a worker thread)."""
        return await asyncio.to_thread(self.delete_path, path)


def _missing(path: str) -> FileNotFoundError:
    return FileNotFoundError(f"No result stored under key {path!r} (table step_result).")


def _check_key(path: str) -> None:
    if not path or len(path) > MAX_KEY_LENGTH:
        raise ValueError(
            f"Result keys must have 1 to {MAX_KEY_LENGTH} characters, got {len(path)}."
        )


_READ = select(StepResult.key, StepResult.content).where(
    col(StepResult.key).in_(bindparam("keys", expanding=True))
)


@reconnecting
def _write_rows(url: str | None, items: Sequence[tuple[str, bytes]]) -> None:
    """Insert or replace result rows, in one transaction."""
    now = utcnow()
    rows = [{"key": path, "content": bytes(content), "created_at": now} for path, content in items]
    with session(url) as s:
        upsert(s, StepResult, rows, ["content", "created_at"])


@reconnecting
def _read_rows(url: str | None, paths: Sequence[str]) -> dict[str, bytes]:
    with get_engine(url).connect() as conn:
        rows = conn.execute(_READ, {"keys": list(paths)}).all()
    return {key: bytes(content) for key, content in rows}


def _write_together(url: str, items: list[tuple[str, bytes]]) -> list[None]:
    """Concurrent `awrite_path`s: one transaction (one commit for all)."""
    _write_rows(url, items)
    return [None] * len(items)


def _read_together(url: str, items: list[str]) -> list[bytes | None]:
    """Concurrent `aread_path`s: one query."""
    found = _read_rows(url, sorted(set(items)))
    return [found.get(path) for path in items]
