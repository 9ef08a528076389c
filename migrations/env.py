"""Alembic environment: migrates `SQLModel.metadata` as declared in `agents.store.tables`.

Two ways in:

* programmatic (`agents.store.engine.upgrade`): an open connection is handed over in
  `config.attributes["connection"]` (this also works for in-memory SQLite); the caller owns the
  transaction and commits it;
* command line (`alembic -c migrations/alembic.ini upgrade head`): the URL is `sqlalchemy.url` if
  set, else Stalwart's settings (`STALWART_DATABASE_URL` or the default SQLite file).

SQLite gets `render_as_batch=True` so later `ALTER TABLE` migrations work there too.
"""

from __future__ import annotations

from logging.config import fileConfig
from pathlib import Path

from alembic import context
from sqlalchemy import Connection, create_engine, pool
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

import agents.store.tables  # noqa: F401  (registers every table on SQLModel.metadata)

config = context.config

if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _database_url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        from agents.settings import get_current_settings

        url = get_current_settings().resolved_database_url()
    from agents.store.engine import normalize_url

    return normalize_url(url)


def _configure(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )


def run_migrations_offline() -> None:
    """Emit the SQL to stdout (`alembic upgrade head --sql`) instead of running it."""
    url = _database_url()
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=make_url(url).get_backend_name() == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the handed-over connection, or on a fresh one to the URL."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection)
        with context.begin_transaction():
            context.run_migrations()
        return

    url = make_url(_database_url())
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        Path(url.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, poolclass=pool.NullPool)
    try:
        with engine.connect() as conn:
            _configure(conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
