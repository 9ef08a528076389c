"""Running the docstring examples of `agents` and `flows` as doctests, one test per module.

A module takes part when its source holds `>>>`; its test imports it and runs every example found
in it (module, classes, functions, methods, and the functions inside declared steps), reporting
all failures of the module at once.
Option flags: ELLIPSIS (pytest's own doctest default) and NORMALIZE_WHITESPACE.

The examples run in tests/unit/test_doctests.py, under the unit tier's guard (no network, no
Prefect API), except those of `SERVER_MODULES`: their examples start a loopback HTTP server of
their own and talk to it, so they run in tests/integration/test_doctests.py. An example that
needs a server it cannot start itself says `# doctest: +SKIP` with the reason beside it.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import io
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("agents", "flows")
EXCLUDED_DIRS = ("flows/data",)  # sample projects with their own tests, not modules of ours
OPTIONS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE

# Modules whose examples start a loopback server and connect to it.
SERVER_MODULES = frozenset({"agents.testing.loopback", "flows.helpdesk.simulated"})


def modules_with_examples() -> list[str]:
    """Every module of `PACKAGES` whose source holds a `>>>` example, by dotted name."""
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


def run_examples(name: str) -> None:
    """Import module `name` and run its examples; fail with every failing example's report."""
    module = importlib.import_module(name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=OPTIONS)
    report = io.StringIO()
    found = finder.find(module, name)
    for attribute, value in vars(module).items():
        # Declared steps are callable objects wrapping the function (`__wrapped__`), which
        # doctest's finder does not look into: their examples are the function's docstring's.
        wrapped = inspect.unwrap(value) if hasattr(value, "__wrapped__") else None
        if (
            inspect.isfunction(wrapped)
            and not inspect.isfunction(value)
            and wrapped.__module__ == name
        ):
            found += finder.find(wrapped, f"{name}.{attribute}", module=module)
    tests = sorted((t for t in found if t.examples), key=lambda t: t.name)
    for test in tests:
        runner.run(test, out=report.write)
    assert tests, f"{name}: its source holds '>>>' but doctest finds no example in it"
    if runner.failures:
        pytest.fail(
            f"{runner.failures} of {runner.tries} examples failed in {name}:\n{report.getvalue()}",
            pytrace=False,
        )
