"""The public names the README and the issues rely on are exported by `agents`. The README's
example agent runs as documented: tests/integration/test_readme.py."""

from __future__ import annotations

import pytest


@pytest.mark.parametrize("name", ["Agent", "Decision", "DeclarationError", "LLM", "Memory"])
def test_the_public_names_the_issues_fix_are_exported(name: str) -> None:
    import agents

    assert name in agents.__all__ and hasattr(agents, name)


def test_ci_runs_exactly_the_readme_test_command() -> None:
    """`.ci/run` runs the README's second set-up command (its install quieter, via python -m)."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    readme = (root / "README.md").read_text(encoding="utf-8")
    commands = re.findall(r"```bash\n(.*?)\n```", readme, flags=re.S)
    readme_command = commands[1].replace("pip install -e", "python -m pip install -q -e", 1)
    ci = (root / ".ci/run").read_text(encoding="utf-8").strip().splitlines()
    assert ci[-1] == readme_command
    assert "mkdocs build --strict" in readme_command
    assert len(readme.splitlines()) <= 250  # issue 21: a README a newcomer reads in five minutes
