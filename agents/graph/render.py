"""Pictures of an agent graph: a Mermaid flowchart and indented text."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from agents.declare.step import LAYERS

if TYPE_CHECKING:
    from agents.graph.graph import AgentGraph


def mermaid(graph: AgentGraph) -> str:
    """The graph as a Mermaid flowchart: run inputs, steps grouped by layer, edges."""
    lines = ["flowchart LR"]
    for name in graph.input_names:
        lines.append(f"  in_{_mid(name)}([{name}])")
    for layer in LAYERS:
        members = [s for s in graph.order if s.layer == layer]
        if not members:
            continue
        lines.append(f"  subgraph {layer}")
        for s in members:
            extra = ""
            if s.options.threshold is not None:
                extra = f"<br/>threshold {s.options.threshold}"
            lines.append(f'    {_mid(s.name)}["{s.name}{extra}"]:::{layer}')
        lines.append("  end")
    for node in graph.nodes.values():
        for p in node.run_inputs:
            lines.append(f"  in_{_mid(p.name)} --> {_mid(node.name)}")
        for dep in node.depends_on:
            lines.append(f"  {_mid(dep)} --> {_mid(node.name)}")
    lines += [
        "  classDef perception fill:#e3f2fd,stroke:#1e88e5",
        "  classDef reasoning fill:#fff3e0,stroke:#fb8c00",
        "  classDef action fill:#fce4ec,stroke:#d81b60",
        "  classDef learning fill:#e8f5e9,stroke:#43a047",
    ]
    return "\n".join(lines)


def text(graph: AgentGraph) -> str:
    """The graph as indented text, one step per line in execution order."""
    lines = [f"agent {graph.name}"]
    for node in graph.nodes.values():
        s = node.step
        sources = [*node.depends_on, *(f"<{p.name}>" for p in node.run_inputs)]
        opts = []
        if s.options.threshold is not None:
            opts.append(f"threshold={s.options.threshold}")
        if s.options.retries:
            opts.append(f"retries={s.options.retries}")
        suffix = f" [{', '.join(opts)}]" if opts else ""
        using = f" using {', '.join(node.resources)}" if node.resources else ""
        lines.append(f"  {s.layer:<10} {s.name} ← {', '.join(sources) or '∅'}{using}{suffix}")
    return "\n".join(lines)


def _mid(name: str) -> str:
    return re.sub(r"\W", "_", name)
