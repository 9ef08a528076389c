"""The docstring examples of `agents` and `flows` run as doctests, one test per module.

A module is collected when its source holds `>>>`; the test imports it and runs every example
found in it (module, classes, functions, methods), reporting all failures of the module at once.
Examples run under the unit tier's guard (tests/unit/conftest.py: no network, no Prefect API), in
a temporary working directory, with a fresh SQLite state database and the environment restored
afterwards. An example that truly needs a server says `# doctest: +SKIP` with the reason beside
it. Option flags: ELLIPSIS (as pytest's own doctest default) and NORMALIZE_WHITESPACE.
"""

from __future__ import annotations

import doctest
import importlib
import io
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agents", "flows")
EXCLUDED_DIRS = {"flows/data"}  # sample projects (their own tests), not Python modules of ours
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _modules_with_examples() -> list[str]:
    found = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            relative = path.relative_to(ROOT)
            if any(relative.is_relative_to(excluded) for excluded in EXCLUDED_DIRS):
                continue
            if path.name == "__main__.py" or ">>>" not in path.read_text(encoding="utf-8"):
                continue
            parts = relative.with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


MODULES = _modules_with_examples()


def test_modules_with_examples_are_found() -> None:
    # A guard against collecting nothing (a moved package would silently drop its examples).
    assert len(MODULES) > 50, MODULES


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


@pytest.mark.parametrize("name", MODULES)
@pytest.mark.usefixtures("isolated")
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = io.StringIO()
    tests = [t for t in finder.find(module, name) if t.examples]
    for test in sorted(tests, key=lambda t: t.name):
        runner.run(test, out=report.write)
    results = runner.summarize(verbose=False)
    assert results.attempted > 0 or all(
        all(e.options.get(doctest.SKIP) for e in t.examples) for t in tests
    ), f"{name}: no examples found although its source holds '>>>'"
    if results.failed:
        pytest.fail(
            f"{results.failed} of {results.attempted} examples failed in {name}:\n"
            f"{report.getvalue()}",
            pytrace=False,
        )
