"""The runtime's shape: no import cycle in `agents/`, and data flows one way, declaration →
graph → execution → store, with configuration underneath everything."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.imports import cycles, import_graph, imports_outside

AGENTS = Path(__file__).resolve().parents[2] / "agents"

#: Configuration and errors: the bottom layer, importable from anywhere.
CONFIG = {
    "agents.errors",
    "agents.settings",
    "agents.endpoint",
    "agents.pricing",
    "agents.redact",
    "agents.blocks",
    "agents.durations",
    "agents._text",
    "agents._ids",
}


def test_no_import_cycle_in_agents() -> None:
    found = cycles(import_graph(AGENTS))
    assert found == [], "import cycles:\n" + "\n".join(" → ".join(c) for c in found)


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from pkg.high import g\n    return g\n")
    (package / "high.py").write_text("from pkg import low\n\ndef g():\n    return low\n")
    (package / "typed.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.high import g\n"
    )
    graph = import_graph(package)
    assert cycles(graph) == [["pkg.high", "pkg.low", "pkg.high"]]
    assert graph["pkg.typed"] == set()  # TYPE_CHECKING imports never run


def _reaches(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = [start]
    while todo:
        for nxt in graph[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


@pytest.mark.parametrize(
    "module",
    [
        "agents.declare.step",
        "agents.declare.options",
        "agents.declare.decision",
        "agents.graph.graph",
        "agents.graph.build",
        "agents.graph.render",
    ],
)
def test_declaration_and_graph_never_reach_execution(module: str) -> None:
    reached = _reaches(import_graph(AGENTS), module)
    assert not {m for m in reached if m.startswith("agents.execution")}, sorted(reached)


def test_the_store_imports_only_configuration_and_itself() -> None:
    graph = import_graph(AGENTS)
    allowed = CONFIG | {"agents.store"}
    for module, targets in graph.items():
        if module.startswith("agents.store"):
            wrong = {t for t in targets if t not in allowed and not t.startswith("agents.store.")}
            assert not wrong, f"{module} imports {sorted(wrong)}"


def test_configuration_imports_nothing_above_it() -> None:
    graph = import_graph(AGENTS)
    for module in CONFIG & set(graph):
        assert graph[module] <= CONFIG, f"{module} imports {sorted(graph[module] - CONFIG)}"


def test_nothing_in_agents_imports_flows() -> None:
    assert imports_outside(AGENTS, "flows") == {}


def test_the_architecture_page_names_every_module() -> None:
    page = (AGENTS.parent / "docs" / "architecture.md").read_text()
    modules = sorted(str(p.relative_to(AGENTS.parent)) for p in AGENTS.rglob("*.py"))
    missing = [m for m in modules if f"`{m}`" not in page]
    assert missing == [], f"docs/architecture.md lacks {missing}"
