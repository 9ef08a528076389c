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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, delete, tuple_, update
from sqlmodel import Session, col, select

from agents._ids import new_hex
from agents.errors import MemoryConflict
from agents.store._convert import require_tenant, to_json_value
from agents.store._group import database_of, shared
from agents.store._writes import conflict_ignoring
from agents.store.engine import reconnecting, retrying, session
from agents.store.tables import MemoryItem, utcnow

__all__ = ["Memory"]


class Memory:
    """A handle on one agent's memory about one subject, within one tenant.

    Sync methods do the work; each has an `a`-prefixed async twin that runs it in a worker
    thread. The twins of reads and writes of single keys (`aget`, `aget_item`, `aset`,
    `aupdate`) share a transaction with the same calls made meanwhile on the event loop (group
    commit), each keeping its own outcome. The handle holds no connection and is safe to share
    between threads.

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

    def get_item(self, key: str) -> MemoryItem | None:
        """The stored row (value and version) for a key, or None.

        Example:
            >>> mem = Memory("acme", "triage", url="sqlite://")
            >>> mem.set("plan", "gold")
            1
            >>> mem.get_item("plan").version
            1
        """
        (item,) = _read_together(database_of(self._url), [self._where(key)])
        return item

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
        write = self._write(key, value, expected_version)
        (outcome,) = _write_together(database_of(self._url), [write])
        if isinstance(outcome, MemoryConflict):
            raise outcome
        return outcome

    def _where(self, key: str) -> _Key:
        return (self._tenant, self._agent, self._subject, key)

    def _write(self, key: str, value: Any, expected_version: int | None) -> _Write:
        """One write, checked and converted (errors are the caller's, before any I/O)."""
        if not key:
            raise ValueError("Memory keys must be non-empty strings.")
        if expected_version is not None and expected_version < 0:
            raise ValueError(f"expected_version must be >= 0, got {expected_version}.")
        data = to_json_value(value, what=f"Memory value for key {key!r}")
        return _Write(self._where(key), data, new_hex(), expected_version)

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
            result = s.exec(delete(MemoryItem).where(*_scope_of(self._where(key))))
            return bool(result.rowcount)

    # -- async twins --------------------------------------------------------------------------

    async def aget(self, key: str, default: Any = None) -> Any:
        """Async `get` (shares a query with the reads made meanwhile; see `aget_item`)."""
        item = await self.aget_item(key)
        return default if item is None else item.value

    async def aget_item(self, key: str) -> MemoryItem | None:
        """Async `get_item`: the reads of one event loop made while a read runs share the next
        query (`agents.store._group`: on the loop's thread on SQLite, else a worker's)."""
        item: MemoryItem | None = await shared(
            _read_together, database_of(self._url), self._where(key)
        )
        return item

    async def aset(self, key: str, value: Any, *, expected_version: int | None = None) -> int:
        """Async `set`: the writes of one event loop made while a write transaction runs share
        the next one (group commit), each still its own compare-and-set: a conflicting write
        raises `MemoryConflict` to its caller alone."""
        write = self._write(key, value, expected_version)
        version: int = await shared(_write_together, database_of(self._url), write)
        return version

    async def aupdate(
        self, key: str, fn: Callable[[Any], Any], default: Any = None, retries: int = 5
    ) -> Any:
        """Async `update`: its read and its compare-and-set share round trips with the other
        reads and writes made meanwhile (`aget_item`, `aset`). `fn` is a plain function, called
        on the event loop: keep it quick, and free of side effects (it may run several times).
        """
        attempt = 0
        while True:
            item = await self.aget_item(key)
            current, version = (default, 0) if item is None else (item.value, item.version)
            new_value = to_json_value(fn(current), what=f"Memory value for key {key!r}")
            try:
                await self.aset(key, new_value, expected_version=version)
                return new_value
            except MemoryConflict:
                if attempt >= retries:
                    raise
                attempt += 1
                await asyncio.sleep(random.uniform(0, 0.01 * 2 ** min(attempt, 6)))

    async def adelete(self, key: str) -> bool:
        """Async `delete` (runs in a worker thread)."""
        return await asyncio.to_thread(self.delete, key)

    async def akeys(self) -> list[str]:
        """Async `keys` (runs in a worker thread)."""
        return await asyncio.to_thread(self.keys)

    async def aitems(self) -> dict[str, Any]:
        """Async `items` (runs in a worker thread)."""
        return await asyncio.to_thread(self.items)


#: A memory key with its scope: (tenant, agent, subject, key).
_Key = tuple[str, str, str, str]


@dataclass(frozen=True)
class _Write:
    """One `set`: its key, JSON value, fresh token and expected version (None: last wins)."""

    where: _Key
    data: Any
    token: str
    expected: int | None


def _scope_of(where: _Key) -> list[Any]:
    tenant, agent, subject, key = where
    return [
        col(MemoryItem.tenant) == tenant,
        col(MemoryItem.agent) == agent,
        col(MemoryItem.subject) == subject,
        col(MemoryItem.key) == key,
    ]


#: Statements built once (see `_writes._ignoring`): the rows of several scoped keys; a key's
#: row rewritten at its next version, unconditionally or only at the version expected.
_READ = select(MemoryItem).where(
    tuple_(
        col(MemoryItem.tenant), col(MemoryItem.agent), col(MemoryItem.subject), col(MemoryItem.key)
    ).in_(bindparam("scopes", expanding=True))
)
_BUMP = (
    update(MemoryItem)
    .where(
        col(MemoryItem.tenant) == bindparam("w_tenant"),
        col(MemoryItem.agent) == bindparam("w_agent"),
        col(MemoryItem.subject) == bindparam("w_subject"),
        col(MemoryItem.key) == bindparam("w_key"),
    )
    .values(
        value=bindparam("w_value"),
        version=col(MemoryItem.version) + 1,
        updated_at=bindparam("w_updated_at"),
        writer=bindparam("w_writer"),
    )
    .returning(col(MemoryItem.version))
)
_BUMP_CHECKED = _BUMP.where(col(MemoryItem.version) == bindparam("w_expected"))


@reconnecting
def _read_together(url: str, keys: list[_Key]) -> list[MemoryItem | None]:
    """The rows of several keys (each in its own scope), in one query."""
    with session(url) as s:
        rows = s.exec(_READ, params={"scopes": sorted(set(keys))}).all()
    found: dict[_Key, MemoryItem] = {(r.tenant, r.agent, r.subject, r.key): r for r in rows}
    items: list[MemoryItem | None] = []
    given: set[_Key] = set()
    for where in keys:
        row = found.get(where)
        if row is not None and where in given:
            row = row.model_copy()  # each caller gets its own object
        given.add(where)
        items.append(row)
    return items


def _write_together(url: str, writes: list[_Write]) -> list[int | MemoryConflict]:
    """Several `set`s in one transaction, each its own compare-and-set (or last-writer-wins)
    write: a write that loses gets its `MemoryConflict`, the others still commit.

    Writes go in key order (those to one key in the order given), so two processes writing
    overlapping groups on PostgreSQL wait for each other instead of deadlocking. After a lost
    connection each write first looks for its own token: a COMMIT that landed unacknowledged
    is not applied twice.
    """
    order = sorted(range(len(writes)), key=lambda i: writes[i].where)

    def write_all(retry: bool) -> list[int | MemoryConflict]:
        outcomes: list[int | MemoryConflict] = [0] * len(writes)
        with session(url) as s:
            for i in order:
                write = writes[i]
                landed = _landed(s, write) if retry else None
                outcomes[i] = landed if landed is not None else _apply(s, write)
        return outcomes

    return retrying(write_all, what="memory write")


def _landed(s: Session, write: _Write) -> int | None:
    """The row's version if this write (its token) is the one stored, else None."""
    version = s.exec(
        select(MemoryItem.version).where(
            *_scope_of(write.where), col(MemoryItem.writer) == write.token
        )
    ).one_or_none()
    return None if version is None else int(version)


def _apply(s: Session, write: _Write) -> int | MemoryConflict:
    key = write.where[3]
    if write.expected is None:  # last writer wins
        for _ in range(2):
            version = _bump(s, write)
            if version is not None:
                return version
            if _insert(s, write):
                return 1
            # Another writer inserted the key between our UPDATE and INSERT: update it.
        raise RuntimeError(f"Memory key {key!r} kept vanishing and reappearing while written.")
    if write.expected == 0:
        if _insert(s, write):
            return 1
    else:
        version = _bump(s, write, expected=write.expected)
        if version is not None:
            return version
    stored = s.exec(select(MemoryItem.version).where(*_scope_of(write.where))).one_or_none()
    return MemoryConflict(key, write.expected, stored)


def _bump(s: Session, write: _Write, *, expected: int | None = None) -> int | None:
    """Rewrite the key's row at its next version (only at version `expected` when given);
    None if no row was rewritten."""
    # The statement's parameters are the row's columns, prefixed: an UPDATE reserves the bare
    # names for its SET clause.
    params = {f"w_{name}": value for name, value in _row_of(write).items()}
    statement = _BUMP
    if expected is not None:
        statement, params["w_expected"] = _BUMP_CHECKED, expected
    version = s.connection().execute(statement, params).scalar_one_or_none()
    return None if version is None else int(version)


def _row_of(write: _Write) -> dict[str, Any]:
    """The columns a write sets, its version aside."""
    tenant, agent, subject, key = write.where
    return {
        "tenant": tenant,
        "agent": agent,
        "subject": subject,
        "key": key,
        "value": write.data,
        "updated_at": utcnow(),
        "writer": write.token,
    }


def _insert(s: Session, write: _Write) -> bool:
    """Insert the key at version 1; False if it is already stored."""
    row = {**_row_of(write), "version": 1}
    statement = conflict_ignoring(
        s, MemoryItem, ["tenant", "agent", "subject", "key"], returning=["id"]
    )
    return s.connection().execute(statement, row).first() is not None
