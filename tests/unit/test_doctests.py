"""The docstring examples of `agents` and `flows`, run as doctests under the unit tier's guard
(tests/support/doctests.py says how; those that start a loopback server run in
tests/integration/test_doctests.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.doctests import SERVER_MODULES, modules_with_examples, run_examples

MODULES = modules_with_examples()


def test_modules_with_examples_are_found() -> None:
    # Guards against collecting nothing (a moved package would silently drop its examples).
    assert len(MODULES) > 50, MODULES
    assert set(MODULES) >= SERVER_MODULES, SERVER_MODULES - set(MODULES)


@pytest.fixture
def isolated(tmp_path: Path, sqlite_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A temporary working directory and state database; the environment as it was after."""
    monkeypatch.chdir(tmp_path)
    environ = dict(os.environ)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(environ)
        from agents.settings import reload_settings

        reload_settings()


@pytest.mark.parametrize("name", [m for m in MODULES if m not in SERVER_MODULES])
@pytest.mark.usefixtures("isolated")
def test_docstring_examples(name: str) -> None:
    run_examples(name)
