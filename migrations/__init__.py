"""Alembic migrations of Stalwart's state database (the tables of `agents.store.tables`).

This package only locates the Alembic environment: `agents.store.engine.upgrade()` runs it
programmatically, and `alembic -c migrations/alembic.ini upgrade head` works from the command line
(the database URL then comes from `STALWART_DATABASE_URL` or the default SQLite file).
"""

from __future__ import annotations

from pathlib import Path

MIGRATIONS_DIR: Path = Path(__file__).resolve().parent
"""The directory holding `alembic.ini`, `env.py` and `versions/`."""

ALEMBIC_INI: Path = MIGRATIONS_DIR / "alembic.ini"
"""The Alembic configuration file (it names no database URL)."""
