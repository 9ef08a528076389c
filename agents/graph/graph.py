"""The agent graph: an immutable view of a validated declaration, built once, read by execution.

A node is a step; an edge is a parameter named like another step; the injected parameters of
each step are found once here (as FastAPI's `Dependant` does), so execution only resolves them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from pydantic import TypeAdapter

from agents.declare.step import RESOURCES, Param, Step, StepInfo
from agents.declare.tool import Tool
from agents.errors import DeclarationError

#: Keys of a run's input that are run metadata, not step inputs.
META_KEYS = frozenset({"subject", "run_key"})


@dataclass(frozen=True, eq=False)
class StepNode:
    """One step in the graph: the declared step and what analysing its signature found."""

    step: Step[Any, Any]
    depends_on: tuple[str, ...]
    """The steps whose outputs it takes, by parameter name."""
    run_inputs: tuple[Param, ...]
    """Its parameters read from the run's input."""
    resources: tuple[str, ...]
    """Its parameters the runtime injects (`memory`, `llm`, `context`, `idempotency_key`)."""
    returns: Any
    """Its resolved return annotation (`Any` when it cannot be resolved)."""
    tools: tuple[Tool, ...] = ()
    """The tools its model may call (reasoning steps), analysed once."""

    @property
    def name(self) -> str:
        return self.step.name

    @cached_property
    def adapter(self) -> TypeAdapter[Any]:
        """Validates and dumps the step's result (built once: a TypeAdapter costs milliseconds)."""
        return TypeAdapter(self.returns)

    def info(self) -> StepInfo:
        """The read-only description users see through `Agent.steps`."""
        step = self.step
        return StepInfo(
            name=step.name,
            layer=step.layer,
            depends_on=self.depends_on,
            resources=self.resources,
            run_inputs=tuple(p.name for p in self.run_inputs),
            options=step.options,
            is_async=step.is_async,
        )


@dataclass(frozen=True, eq=False)
class AgentGraph:
    """A validated agent: its steps in execution order with their edges, inputs and options.

    Built by `agents.graph.build_graph` (through `Agent.compile()`); never changes afterwards.
    Equality is identity, so execution can cache what it builds per graph.

    Example:
        >>> from agents import Agent, Decision
        >>> echo = Agent("echo")
        >>> class Said(Decision):
        ...     text: str
        >>> @echo.perception
        ... def words(text: str) -> list[str]:
        ...     return text.split()
        >>> @echo.reasoning
        ... def say(words: list[str]) -> Said:
        ...     return Said(text=" ".join(words), confidence=1.0, rationale="echo")
        >>> graph = echo.compile()
        >>> [s.name for s in graph.order], graph.input_names
        (['words', 'say'], ('text',))
        >>> graph.check_inputs({"txt": "hi"})[1]
        "input 'txt': no step has a parameter of that name; known inputs: ['text']"
    """

    name: str
    description: str
    allowed_actions: Mapping[str, type[Any] | None] | None
    """Action names a decision may name, each with the model its arguments must fit."""
    nodes: Mapping[str, StepNode]
    """Every step's node, in execution (topological) order."""

    @property
    def order(self) -> tuple[Step[Any, Any], ...]:
        """The steps in execution order: a step comes after every step it depends on."""
        return tuple(node.step for node in self.nodes.values())

    @property
    def steps(self) -> Mapping[str, Step[Any, Any]]:
        """The steps by name."""
        return {name: node.step for name, node in self.nodes.items()}

    def node(self, name: str) -> StepNode:
        return self.nodes[name]

    def info(self, name: str) -> StepInfo:
        return self.nodes[name].info()

    @cached_property
    def input_names(self) -> tuple[str, ...]:
        """Every run input any step reads, in first-use order."""
        seen: dict[str, None] = {}
        for node in self.nodes.values():
            for p in node.run_inputs:
                seen.setdefault(p.name, None)
        return tuple(seen)

    def check_inputs(self, item: Mapping[str, Any], *, raise_error: bool = False) -> list[str]:
        """Problems with one run's inputs: missing required inputs, unknown names."""
        problems: list[str] = []
        for node in self.nodes.values():
            for p in node.run_inputs:
                if p.name not in item and not p.has_default:
                    problems.append(
                        f"{node.step.layer} step '{node.name}': run input '{p.name}' is "
                        f"missing; pass {p.name}=... to run() or add the key to the input"
                    )
        known = set(self.input_names) | META_KEYS
        for key in item:
            if key not in known:
                problems.append(
                    f"input '{key}': no step has a parameter of that name; known inputs: "
                    f"{sorted(self.input_names)}"
                )
        if problems and raise_error:
            raise DeclarationError(self.name, problems)
        return problems

    def mermaid(self) -> str:
        """The graph as a Mermaid flowchart (see `agents.graph.render.mermaid`)."""
        from agents.graph.render import mermaid

        return mermaid(self)

    def text(self) -> str:
        """The graph as indented text (see `agents.graph.render.text`)."""
        from agents.graph.render import text

        return text(self)


__all__ = ["META_KEYS", "RESOURCES", "AgentGraph", "StepNode"]
