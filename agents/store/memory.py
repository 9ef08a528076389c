"""Memory: the durable key → JSON store a step receives, scoped to (tenant, agent, subject).

Owns the `memory_item` table's write rules: every write bumps the row's `version` atomically;
`set(..., expected_version=n)` is a compare-and-set that raises `MemoryConflict` when another
writer got there first; `update(key, fn)` is a read-modify-write loop on top of it. Values are
plain JSON (pydantic models are dumped). Subject None means agent-wide memory (stored as "").

Every read and write survives a lost connection (`engine.retrying`). Each write stamps the row
with a fresh token (`writer`): a write retried after the connection dropped first looks for its
token, so a COMMIT that landed unacknowledged is not applied twice (an `update` counter is not
incremented twice). The one case it cannot tell is another writer overwriting the row in the
instant between our lost COMMIT and the retry.

Example:
    >>> mem = Memory("acme", "triage", "customer-42", url="sqlite://")
    >>> mem.set("visits", 1)
    1
    >>> mem.update("visits", lambda n: n + 1)
    2
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from collections.abc import Callable
from typing import Any

from sqlalchemy import delete, insert, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from agents.errors import MemoryConflict
from agents.store._convert import require_tenant, to_json_value
from agents.store.engine import reconnecting, retrying, session
from agents.store.tables import MemoryItem, utcnow

__all__ = ["Memory"]


class Memory:
    """A handle on one agent's memory about one subject, within one tenant.

    Sync methods do the work; each has an `a`-prefixed async twin that runs it in a worker
    thread. The handle holds no connection and is safe to share between threads.

    Args:
        tenant: mandatory, non-empty; memory never crosses tenants.
        agent: the agent's name.
        subject: whom or what the memory is about; None for agent-wide memory.
        url: database URL; None means the settings' URL at call time.

    Example:
        >>> mem = Memory("acme", "triage", url="sqlite://")
        >>> mem.get("missing", default=0)
        0
    """

    __slots__ = ("_agent", "_subject", "_tenant", "_url")

    def __init__(
        self, tenant: str, agent: str, subject: str | None = None, *, url: str | None = None
    ) -> None:
        require_tenant(tenant)  # memory is always tenant-scoped
        if not isinstance(agent, str) or not agent:
            raise ValueError("Memory needs a non-empty agent name.")
        self._tenant = tenant
        self._agent = agent
        self._subject = subject or ""
        self._url = url

    def __repr__(self) -> str:
        return f"Memory(tenant={self._tenant!r}, agent={self._agent!r}, subject={self.subject!r})"

    @property
    def tenant(self) -> str:
        """The tenant this handle is bound to."""
        return self._tenant

    @property
    def agent(self) -> str:
        """The agent this handle is bound to."""
        return self._agent

    @property
    def subject(self) -> str | None:
        """The subject this handle is bound to, None for agent-wide memory."""
        return self._subject or None

    def for_subject(self, subject: str | None) -> Memory:
        """The same tenant and agent's memory about another subject.

        Example:
            >>> Memory("acme", "triage", url="sqlite://").for_subject("c-7").subject
            'c-7'
        """
        return Memory(self._tenant, self._agent, subject, url=self._url)

    # -- reads ------------------------------------------------------------------------------

    def _scope_all(self) -> list[Any]:
        return [
            col(MemoryItem.tenant) == self._tenant,
            col(MemoryItem.agent) == self._agent,
            col(MemoryItem.subject) == self._subject,
        ]

    def _scope(self, key: str) -> list[Any]:
        return [*self._scope_all(), col(MemoryItem.key) == key]

    @reconnecting
    def get_item(self, key: str) -> MemoryItem | None:
        """The stored row (value and version) for a key, or None.

        Example:
            >>> mem = Memory("acme", "triage", url="sqlite://")
            >>> mem.set("plan", "gold")
            1
            >>> mem.get_item("plan").version
            1
        """
        with session(self._url) as s:
            return s.exec(select(MemoryItem).where(*self._scope(key))).one_or_none()

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under a key, or `default` when there is none.

        Example:
            >>> Memory("acme", "triage", url="sqlite://").get("nothing", default=[])
            []
        """
        item = self.get_item(key)
        return default if item is None else item.value

    @reconnecting
    def keys(self) -> list[str]:
        """Every key stored for this (tenant, agent, subject), sorted.

        Example:
            >>> Memory("acme", "keys-demo", url="sqlite://").keys()
            []
        """
        with session(self._url) as s:
            rows = s.exec(
                select(MemoryItem.key).where(*self._scope_all()).order_by(col(MemoryItem.key))
            ).all()
        return list(rows)

    @reconnecting
    def items(self) -> dict[str, Any]:
        """Every key and value stored for this (tenant, agent, subject).

        Example:
            >>> Memory("acme", "items-demo", url="sqlite://").items()
            {}
        """
        with session(self._url) as s:
            rows = s.exec(
                select(MemoryItem).where(*self._scope_all()).order_by(col(MemoryItem.key))
            ).all()
        return {row.key: row.value for row in rows}

    # -- writes -----------------------------------------------------------------------------

    def set(self, key: str, value: Any, *, expected_version: int | None = None) -> int:
        """Store a JSON value under a key and return the row's new version.

        Without `expected_version` the last writer wins (the version still goes up by one,
        atomically). With it, the write is a compare-and-set: 0 means "the key must not exist
        yet", n > 0 means "the stored version must be n".

        Args:
            key: the key, non-empty.
            value: dict, list, str, number, bool, None, or a pydantic model.
            expected_version: the version read before computing `value`, for optimistic writes.

        Returns:
            The version now stored (1 for a new key).

        Raises:
            MemoryConflict: `expected_version` does not match the stored version.
            TypeError: the value is not JSON.

        Example:
            >>> mem = Memory("acme", "triage", url="sqlite://")
            >>> v = mem.set("tier", "gold")
            >>> mem.set("tier", "platinum", expected_version=v) == v + 1
            True
        """
        if not key:
            raise ValueError("Memory keys must be non-empty strings.")
        data = to_json_value(value, what=f"Memory value for key {key!r}")
        token = uuid.uuid4().hex
        if expected_version is None:

            def last_writer_wins(retry: bool) -> int:
                landed = self._landed(key, token) if retry else None
                return landed or self._set_last_writer_wins(key, data, token)

            return retrying(last_writer_wins, what="memory write")
        if expected_version < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected_version}.")

        def compare_and_set(retry: bool) -> int:
            landed = self._landed(key, token) if retry else None
            if landed is not None:
                return landed
            if expected_version == 0:
                try:
                    with session(self._url) as s:
                        self._insert(s, key, data, token)
                    return 1
                except IntegrityError:
                    raise MemoryConflict(key, 0, self._version(key)) from None
            with session(self._url) as s:
                new_version = s.exec(
                    update(MemoryItem)
                    .where(*self._scope(key), col(MemoryItem.version) == expected_version)
                    .values(
                        value=data,
                        version=col(MemoryItem.version) + 1,
                        updated_at=utcnow(),
                        writer=token,
                    )
                    .returning(col(MemoryItem.version))
                ).scalar_one_or_none()
            if new_version is None:
                raise MemoryConflict(key, expected_version, self._version(key))
            return int(new_version)

        return retrying(compare_and_set, what="memory write")

    def _landed(self, key: str, token: str) -> int | None:
        """The row's version if our write (its token) is the one stored, else None."""
        with session(self._url) as s:
            version = s.exec(
                select(MemoryItem.version).where(*self._scope(key), col(MemoryItem.writer) == token)
            ).one_or_none()
        return None if version is None else int(version)

    def _set_last_writer_wins(self, key: str, data: Any, token: str) -> int:
        for attempt in range(2):
            with session(self._url) as s:
                new_version = self._bump(s, key, data, token)
                if new_version is not None:
                    return new_version
            try:
                with session(self._url) as s:
                    self._insert(s, key, data, token)
                return 1
            except IntegrityError:
                # Another writer inserted the key between our UPDATE and INSERT: update it.
                if attempt:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _bump(self, s: Session, key: str, data: Any, token: str) -> int | None:
        version = s.exec(
            update(MemoryItem)
            .where(*self._scope(key))
            .values(
                value=data, version=col(MemoryItem.version) + 1, updated_at=utcnow(), writer=token
            )
            .returning(col(MemoryItem.version))
        ).scalar_one_or_none()
        return None if version is None else int(version)

    def _insert(self, s: Session, key: str, data: Any, token: str) -> None:
        s.exec(
            insert(MemoryItem).values(
                tenant=self._tenant,
                agent=self._agent,
                subject=self._subject,
                key=key,
                value=data,
                version=1,
                updated_at=utcnow(),
                writer=token,
            )
        )

    @reconnecting
    def _version(self, key: str) -> int | None:
        with session(self._url) as s:
            return s.exec(select(MemoryItem.version).where(*self._scope(key))).one_or_none()

    def update(
        self, key: str, fn: Callable[[Any], Any], default: Any = None, retries: int = 5
    ) -> Any:
        """Read-modify-write a key with optimistic concurrency, retrying lost races.

        `fn` gets the current value (or `default` when the key is absent) and returns the new
        one; it may run several times, so keep it free of side effects.

        Args:
            key: the key.
            fn: computes the new value from the current one.
            default: the value `fn` sees when the key does not exist yet.
            retries: how many times to retry after a `MemoryConflict` (with jittered backoff).

        Returns:
            The value written.

        Raises:
            MemoryConflict: still losing the race after `retries` retries.

        Example:
            >>> mem = Memory("acme", "triage", url="sqlite://")
            >>> mem.update("seen", lambda tags: [*tags, "vip"], default=[])
            ['vip']
        """
        attempt = 0
        while True:
            item = self.get_item(key)
            current, version = (default, 0) if item is None else (item.value, item.version)
            new_value = to_json_value(fn(current), what=f"Memory value for key {key!r}")
            try:
                self.set(key, new_value, expected_version=version)
                return new_value
            except MemoryConflict:
                if attempt >= retries:
                    raise
                attempt += 1
                time.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))

    @reconnecting
    def delete(self, key: str) -> bool:
        """Forget a key; True if it existed.

        Example:
            >>> Memory("acme", "triage", url="sqlite://").delete("never-set")
            False
        """
        with session(self._url) as s:
            result = s.exec(delete(MemoryItem).where(*self._scope(key)))
            return bool(result.rowcount)

    # -- async twins --------------------------------------------------------------------------

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async `get` (runs in a worker thread)."""
        return await asyncio.to_thread(self.get, key, default)

    async def aget_item(self, key: str) -> MemoryItem | None:
        """Async `get_item` (runs in a worker thread)."""
        return await asyncio.to_thread(self.get_item, key)

    async def aset(self, key: str, value: Any, *, expected_version: int | None = None) -> int:
        """Async `set` (runs in a worker thread)."""
        return await asyncio.to_thread(self.set, key, value, expected_version=expected_version)

    async def aupdate(
        self, key: str, fn: Callable[[Any], Any], default: Any = None, retries: int = 5
    ) -> Any:
        """Async `update` (runs in a worker thread; `fn` is a plain function)."""
        return await asyncio.to_thread(self.update, key, fn, default, retries)

    async def adelete(self, key: str) -> bool:
        """Async `delete` (runs in a worker thread)."""
        return await asyncio.to_thread(self.delete, key)

    async def akeys(self) -> list[str]:
        """Async `keys` (runs in a worker thread)."""
        return await asyncio.to_thread(self.keys)

    async def aitems(self) -> dict[str, Any]:
        """Async `items` (runs in a worker thread)."""
        return await asyncio.to_thread(self.items)
