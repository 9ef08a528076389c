"""The docstring examples that start a loopback server of their own (tests/support/doctests.py;
every other module's examples run in tests/unit/test_doctests.py)."""

from __future__ import annotations

import pytest

from tests.support.doctests import SERVER_MODULES, run_examples


@pytest.mark.parametrize("name", sorted(SERVER_MODULES))
def test_docstring_examples_with_a_loopback_server(
    name: str, tmp_path: object, sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    run_examples(name)
