"""The public names the README and the issues rely on are exported by `agents`. The README's
example agent runs as documented: tests/integration/test_readme.py."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name", ["Agent", "Decision", "DeclarationError", "LLM", "Memory"])
def test_the_public_names_the_issues_fix_are_exported(name: str) -> None:
    import agents

    assert name in agents.__all__ and hasattr(agents, name)
