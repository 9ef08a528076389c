"""Engine: connections to the state database, its schema version, and sessions.

This module owns everything about *reaching* the database: one SQLAlchemy engine per URL per
process (SQLite tuned for concurrent writers, PostgreSQL pooled), the Alembic schema upgrade
(automatic for SQLite, explicit `stalwart db upgrade` for PostgreSQL), the `session()` unit of
work, and `redact_url` so a URL never reaches a log with its password.

Example:
    >>> from sqlmodel import select
    >>> from agents.store.engine import session
    >>> from agents.store.tables import AgentRun
    >>> with session("sqlite://") as s:  # in-memory: created and upgraded on first use
    ...     s.exec(select(AgentRun).where(AgentRun.tenant == "nobody")).all()
    []
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import URL, Engine, make_url
from sqlalchemy.pool import StaticPool
from sqlmodel import Session

import migrations
from agents._text import one_line
from agents.errors import ConfigurationError
from agents.settings import get_current_settings

__all__ = [
    "current_revision",
    "database_url",
    "dispose_engines",
    "downgrade",
    "get_engine",
    "head_revision",
    "is_disconnect",
    "is_sqlite",
    "is_sqlite_busy",
    "normalize_url",
    "reconnecting",
    "redact_url",
    "retrying",
    "session",
    "upgrade",
    "without_lock_waits",
]

P = ParamSpec("P")
T = TypeVar("T")
logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 30_000
# Arbitrary constant: the PostgreSQL advisory lock that serialises concurrent schema upgrades.
_UPGRADE_LOCK_ID = 0x5354_4C57

_lock = threading.RLock()
_engines: dict[tuple[str, bool], Engine] = {}  # by URL and whether it waits for locks

#: Set while a store call runs on an event loop's own thread (`without_lock_waits`).
_no_lock_waits: ContextVar[bool] = ContextVar("stalwart_sqlite_no_lock_waits", default=False)
_schema_ok: set[str] = set()
_reached: set[str] = set()  # URLs this process has connected to at least once

_SECRET_QUERY_KEYS = re.compile(r"pass|pwd|secret|token|key", re.IGNORECASE)


def database_url() -> str:
    """The state database URL in force, normalised: the `STALWART_DATABASE_BLOCK` block's URL
    when one is named, else `STALWART_DATABASE_URL`, else the default SQLite file.

    A secret (it may hold a password): log `redact_url(database_url())` instead.

    Raises:
        ConfigurationError: `STALWART_DATABASE_BLOCK` names a block that cannot be loaded.

    Example:
        >>> from agents.settings import temporary_settings
        >>> with temporary_settings(database_url="sqlite://"):
        ...     database_url()
        'sqlite://'
    """
    return _resolve(None)


def _resolve(url: str | None) -> str:
    if url is None:
        settings = get_current_settings()
        if settings.database_block:
            # Imported here: Prefect's block machinery is needed only when a block is named.
            from agents.blocks import StateDatabase, load_block

            url = load_block(StateDatabase, settings.database_block).url()
        else:
            url = settings.resolved_database_url()
    return normalize_url(url)


@functools.lru_cache(maxsize=64)
def normalize_url(url: str) -> str:
    """Spell a database URL the way the engine cache keys it (PostgreSQL gets psycopg 3).

    Args:
        url: any SQLAlchemy URL; `postgresql://` and `postgres://` get the `+psycopg` driver.

    Returns:
        The URL as a string, password included (a secret: log `redact_url(url)` instead).

    Example:
        >>> normalize_url("postgresql://u@h/db")
        'postgresql+psycopg://u@h/db'
    """
    parsed = make_url(url)
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _is_memory_sqlite(url: URL) -> bool:
    return url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:")


def _on_sqlite_connect(memory: bool, busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                # In WAL mode NORMAL syncs at checkpoints, not at every commit: a killed process
                # loses nothing (the WAL is in the OS cache); only a power cut can drop the last
                # commits. FULL costs an fsync per commit, the bottleneck of a busy agent.
                cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute(f"PRAGMA busy_timeout={busy_timeout_ms}")
            cursor.execute("PRAGMA foreign_keys=ON")
        finally:
            cursor.close()

    return on_connect


@contextlib.contextmanager
def without_lock_waits() -> Iterator[None]:
    """Inside, `get_engine` gives a SQLite file's second engine, whose connections answer
    "database is locked" at once instead of waiting up to `SQLITE_BUSY_TIMEOUT_MS` for another
    writer (see `is_sqlite_busy`).

    For a store call made on an event loop's own thread: a wait there would stall every
    coroutine of the loop, so the caller makes the call again in a worker thread instead.
    (A second pool rather than one pool whose connections switch: a switch is a statement on
    every checkout that changes kind.) PostgreSQL and in-memory SQLite are not affected.

    Example:
        >>> with without_lock_waits():
        ...     pass
    """
    token = _no_lock_waits.set(True)
    try:
        yield
    finally:
        _no_lock_waits.reset(token)


def is_sqlite_busy(exc: BaseException) -> bool:
    """Whether an error is SQLite's "database is locked" (another connection holds the lock).

    Example:
        >>> import sqlite3
        >>> is_sqlite_busy(sa.exc.OperationalError("COMMIT", {}, sqlite3.OperationalError(
        ...     "database is locked")))
        True
    """
    orig = exc.orig if isinstance(exc, sa.exc.DBAPIError) else exc
    return getattr(orig, "sqlite_errorname", None) in (
        "SQLITE_BUSY",
        "SQLITE_LOCKED",
    ) or "database is locked" in str(orig)


@functools.cache
def is_sqlite(url: str) -> bool:
    """Whether a resolved database URL is a SQLite database (False for what is not a URL).

    Example:
        >>> is_sqlite("sqlite://"), is_sqlite("postgresql+psycopg://u@h/db")
        (True, False)
    """
    try:
        return make_url(url).get_backend_name() == "sqlite"
    except sa.exc.ArgumentError:
        return False


def _create_engine(url: str, *, busy_timeout_ms: int = SQLITE_BUSY_TIMEOUT_MS) -> Engine:
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        memory = _is_memory_sqlite(parsed)
        connect_args: dict[str, Any] = {
            "check_same_thread": False,
            "timeout": busy_timeout_ms / 1000,
        }
        if memory:
            engine = sa.create_engine(parsed, connect_args=connect_args, poolclass=StaticPool)
        else:
            assert parsed.database is not None
            Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            # Enough pooled connections for the step threads: an overflow connection is closed
            # on release and reopened (with its PRAGMAs) on the next use.
            engine = sa.create_engine(
                parsed, connect_args=connect_args, pool_size=16, max_overflow=48
            )
        sa.event.listen(engine, "connect", _on_sqlite_connect(memory, busy_timeout_ms))
        return engine
    if backend == "postgresql":
        connect_args = (
            {} if "application_name" in parsed.query else {"application_name": "stalwart"}
        )
        settings = get_current_settings()
        return sa.create_engine(
            parsed,
            pool_pre_ping=True,
            pool_size=settings.database_pool_size,
            max_overflow=settings.database_max_overflow,
            pool_recycle=1800,
            connect_args=connect_args,
        )
    return sa.create_engine(parsed, pool_pre_ping=True)


def _raw_engine(url: str, *, lock_waits: bool = True) -> Engine:
    """The cached engine for a normalised URL, without any schema check; with
    `lock_waits=False`, a SQLite file's second engine, whose connections do not wait for
    another writer's lock (`without_lock_waits`)."""
    key = (url, lock_waits)
    engine = _engines.get(key)
    if engine is not None:
        return engine
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            busy_timeout_ms = SQLITE_BUSY_TIMEOUT_MS if lock_waits else 0
            engine = _create_engine(url, busy_timeout_ms=busy_timeout_ms)
            _engines[key] = engine
        return engine


def get_engine(url: str | None = None) -> Engine:
    """The process-wide engine for a database URL, its schema checked on first use.

    SQLite databases are created and upgraded to the latest schema automatically. PostgreSQL is
    never changed here: a missing or outdated schema raises `ConfigurationError` asking for
    `stalwart db upgrade`. The check runs once per URL per process.

    Args:
        url: SQLAlchemy URL; None means the settings' URL (`STALWART_DATABASE_URL` or the default
            SQLite file).

    Returns:
        A thread-safe, pooled `sqlalchemy.Engine`, the same object for the same URL.

    Raises:
        ConfigurationError: the database is unreachable or its schema is not at head.

    Example:
        >>> get_engine("sqlite://") is get_engine("sqlite://")
        True
    """
    resolved = _resolve(url)
    engine = _raw_engine(resolved)
    if resolved not in _schema_ok:
        with _lock:
            if resolved not in _schema_ok:
                _ensure_schema(engine, resolved)
                _schema_ok.add(resolved)
    if _no_lock_waits.get() and _waits_for_locks(resolved):
        return _raw_engine(resolved, lock_waits=False)
    return engine


@functools.cache
def _waits_for_locks(url: str) -> bool:
    """Whether the URL is a SQLite file (in-memory SQLite has one connection, and no other
    process to wait for)."""
    return is_sqlite(url) and not _is_memory_sqlite(make_url(url))


#: What PostgreSQL says, at connect time (no SQLSTATE reaches the client then), when it is there
#: but cannot take this connection now: out of connection slots, or starting or stopping.
_SERVER_BUSY = (
    "too many clients already",
    "too many connections for",
    "connection slots are reserved",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
)


def server_busy(exc: BaseException) -> bool:
    """Whether a failed connect reached a PostgreSQL server that refused it for now.

    Such a server is there (the URL is right) and will take connections again: out of
    connection slots (`max_connections`, a role's or database's limit), or starting or stopping.

    Example:
        >>> server_busy(Exception('failed: FATAL:  sorry, too many clients already'))
        True
        >>> server_busy(Exception('failed: FATAL:  database "x" does not exist'))
        False
    """
    text = str(getattr(exc, "orig", None) or exc)
    return any(sign in text for sign in _SERVER_BUSY)


def _ensure_schema(engine: Engine, url: str) -> None:
    head = head_revision()

    def check(_retry: bool) -> str | None:
        return _current_revision(engine)

    try:
        if url in _reached:  # reached before (then dropped): a restart, wait for it
            current = retrying(check, what="schema check")
        else:  # never reached: more likely a wrong URL than a restart; fail at once...
            try:
                current = check(False)
            except sa.exc.OperationalError as exc:
                if not server_busy(exc):
                    raise
                # ...unless the server answered that it is busy: wait, as for a restart.
                logger.warning(
                    "The state database %s refused a connection for now, retrying: %s",
                    redact_url(url),
                    one_line(str(exc.orig or exc), 200),
                )
                current = retrying(check, what="schema check")
        _reached.add(url)
    except sa.exc.OperationalError as exc:
        raise ConfigurationError(
            f"Cannot connect to the state database {redact_url(url)}: {exc.orig or exc}"
        ) from exc
    if current == head:
        return
    if current is not None and current not in _known_revisions():
        raise ConfigurationError(
            f"The state database {redact_url(url)} is at schema revision {current!r}, which this "
            f"version of Stalwart does not know (newest known: {head!r}). Upgrade Stalwart, or "
            "point STALWART_DATABASE_URL at another database."
        )
    if engine.dialect.name == "sqlite":
        _run_alembic(engine, url, "head")
        return
    if current is None:
        problem = "has no Stalwart schema yet"
    else:
        problem = f"is at schema revision {current!r}, behind {head!r}"
    raise ConfigurationError(
        f"The state database {redact_url(url)} {problem}. Run `stalwart db upgrade` (with the "
        "same STALWART_DATABASE_URL) to create or upgrade it; Stalwart never changes a "
        "PostgreSQL schema by itself."
    )


def _alembic_config(url: str | None = None) -> Config:
    cfg = Config(str(migrations.ALEMBIC_INI))
    cfg.set_main_option("script_location", str(migrations.MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    cfg.attributes["configure_logger"] = False
    return cfg


@functools.cache
def _script_directory() -> ScriptDirectory:
    return ScriptDirectory.from_config(_alembic_config())


def _known_revisions() -> set[str]:
    return {script.revision for script in _script_directory().walk_revisions()}


def head_revision() -> str:
    """The newest schema revision this version of Stalwart ships.

    Returns:
        The Alembic head revision id, e.g. `"0005"`.

    Example:
        >>> head_revision().isdigit()
        True
    """
    heads = _script_directory().get_heads()
    if len(heads) != 1:
        raise ConfigurationError(f"Stalwart's migrations have {len(heads)} heads: {heads}")
    return heads[0]


def _current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def current_revision(url: str | None = None) -> str | None:
    """The schema revision a database is at, or None if it has no Stalwart schema.

    Args:
        url: SQLAlchemy URL; None means the settings' URL.

    Example:
        >>> upgrade("sqlite://")
        >>> current_revision("sqlite://") == head_revision()
        True
    """
    return _current_revision(_raw_engine(_resolve(url)))


def _run_alembic(engine: Engine, url: str, revision: str, *, down: bool = False) -> None:
    cfg = _alembic_config(url)
    with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            # Take the write lock first: concurrent processes upgrade one after the other, and
            # the whole upgrade is one transaction (SQLite has transactional DDL).
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        elif conn.dialect.name == "postgresql":
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_UPGRADE_LOCK_ID})")
        _reached.add(url)
        cfg.attributes["connection"] = conn
        if down:
            command.downgrade(cfg, revision)
        else:
            command.upgrade(cfg, revision)
        conn.commit()


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Create or upgrade the schema with Alembic (what `stalwart db upgrade` runs).

    Safe to run concurrently from several processes: they take turns, and the later ones find
    nothing to do.

    Args:
        url: SQLAlchemy URL; None means the settings' URL.
        revision: target revision, `"head"` by default.

    Example:
        >>> upgrade("sqlite://")
    """
    resolved = _resolve(url)
    engine = _raw_engine(resolved)
    with _lock:
        _schema_ok.discard(resolved)
        _run_alembic(engine, resolved, revision)


def downgrade(url: str | None = None, revision: str = "-1") -> None:
    """Downgrade the schema with Alembic (`"base"` drops every Stalwart table: data is lost).

    Args:
        url: SQLAlchemy URL; None means the settings' URL.
        revision: target revision: `"-1"` (one step back, the default), an id, or `"base"`.

    Example:
        >>> downgrade("sqlite://", "base")
    """
    resolved = _resolve(url)
    engine = _raw_engine(resolved)
    with _lock:
        _schema_ok.discard(resolved)
        _run_alembic(engine, resolved, revision, down=True)


@contextlib.contextmanager
def session(url: str | None = None) -> Iterator[Session]:
    """A unit of work: commits when the block ends, rolls back if it raises.

    Objects stay readable after the block (`expire_on_commit=False`).

    Args:
        url: SQLAlchemy URL; None means the settings' URL.

    Yields:
        A `sqlmodel.Session` bound to `get_engine(url)`.

    Example:
        >>> from sqlmodel import select
        >>> from agents.store.tables import AgentRun
        >>> with session("sqlite://") as s:
        ...     rows = s.exec(select(AgentRun).where(AgentRun.tenant == "acme")).all()
    """
    engine = get_engine(url)
    with Session(engine, expire_on_commit=False) as s:
        try:
            yield s
            s.commit()
        except BaseException:
            s.rollback()
            raise


# -- surviving a lost connection ------------------------------------------------------------

# SQLSTATE classes that mean "the connection, not the statement, failed": 08 connection
# exceptions, 57P01-03 server shutting down, crashed or still starting.
_DISCONNECT_STATES = ("08", "57P01", "57P02", "57P03")


def is_disconnect(exc: BaseException) -> bool:
    """Whether an error means the database connection was lost (worth a retry on a new one).

    True for errors SQLAlchemy flagged as invalidating the connection and for psycopg's
    connection-level errors (refused, closed, server shutting down or starting). False for
    integrity and data errors, and for everything SQLite raises (there is no server to lose).

    Example:
        >>> import sqlalchemy as sa
        >>> is_disconnect(sa.exc.IntegrityError("INSERT", {}, Exception("duplicate key")))
        False
    """
    if isinstance(exc, sa.exc.DBAPIError):
        if exc.connection_invalidated:
            return True
        if isinstance(exc, sa.exc.IntegrityError | sa.exc.DataError | sa.exc.ProgrammingError):
            return False
        orig: BaseException | None = exc.orig
    else:
        orig = exc
    try:
        import psycopg
    except ImportError:  # pragma: no cover - psycopg is a dependency
        return False
    if isinstance(orig, psycopg.InterfaceError):
        return True  # "the connection is closed"
    if isinstance(orig, psycopg.OperationalError):
        state = getattr(orig, "sqlstate", None)
        return state is None or state.startswith(_DISCONNECT_STATES)
    return False


def retrying(fn: Callable[[bool], T], *, what: str = "store operation") -> T:
    """Run `fn(retry)`, calling it again while the database connection keeps getting lost.

    `retry` is False on the first call and True after a lost connection: a write whose COMMIT
    may have landed before the connection dropped must then check for its own effect instead
    of applying it twice. Retries stop after `database_retry_seconds` (setting); waits grow from
    50 ms to 2 s with jitter. Other errors (integrity, data, SQLite's) are raised at once.

    Args:
        fn: the operation; gets whether this call is a retry.
        what: named in the warning logged at each retry.

    Example:
        >>> retrying(lambda retry: "first" if not retry else "again")
        'first'
    """
    budget = get_current_settings().database_retry_seconds
    deadline = time.monotonic() + budget
    attempt = 0
    while True:
        try:
            return fn(attempt > 0)
        except sa.exc.DBAPIError as exc:
            remaining = deadline - time.monotonic()
            if not is_disconnect(exc) or remaining <= 0:
                raise
            attempt += 1
            wait = min(2.0, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
            logger.warning(
                "%s lost its database connection (attempt %d), retrying in %.2fs: %s",
                what,
                attempt,
                wait,
                type(exc.orig or exc).__name__,
            )
            time.sleep(min(wait, max(remaining, 0.0)))


def reconnecting(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a store function that is safe to run twice (a read, or an idempotent write)
    so it survives a lost connection (see `retrying`).

    Example:
        >>> @reconnecting
        ... def answer() -> int:
        ...     return 42
        >>> answer()
        42
    """

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        return retrying(lambda _retry: fn(*args, **kwargs), what=fn.__qualname__)

    return wrapper


def redact_url(url: str) -> str:
    """A database URL safe to log: password and secret-looking query parameters become `***`.

    Args:
        url: any URL, parseable or not.

    Example:
        >>> redact_url("postgresql+psycopg://bob:hunter2@db:5432/stalwart?sslpassword=x")
        'postgresql+psycopg://bob:***@db:5432/stalwart?sslpassword=***'
    """
    try:
        parsed = make_url(url)
    except Exception:
        text = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        return re.sub(r"((?:pass|pwd|secret|token|key)[^=&]*=)[^&]*", r"\1***", text, flags=re.I)
    secret_keys = {k for k in parsed.query if _SECRET_QUERY_KEYS.search(k)}
    rendered = parsed.set(query={}).render_as_string(hide_password=True)
    if not parsed.query:
        return rendered
    parts: list[str] = []
    for key, value in parsed.query.items():
        values = value if isinstance(value, tuple) else (value,)
        for item in values:
            parts.append(f"{key}={'***' if key in secret_keys else item}")
    return f"{rendered}?{'&'.join(parts)}"


def dispose_engines(close: bool = True) -> None:
    """Drop every cached engine and schema check (tests, or a child process after `fork`).

    Args:
        close: close pooled connections; pass False in a forked child, whose connections
            belong to the parent.

    Example:
        >>> dispose_engines()
    """
    with _lock:
        engines = list(_engines.values())
        _engines.clear()
        _schema_ok.clear()
    for engine in engines:
        engine.dispose(close=close)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.RLock()
    dispose_engines(close=False)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
