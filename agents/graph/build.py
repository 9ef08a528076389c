"""Building the graph: validate a declaration (every problem at once) and order its steps."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any, cast

from agents.declare.step import (
    LAYERS,
    RESOURCES,
    Param,
    Step,
    is_concrete_class,
    resolve_hints,
    returns_decision,
)
from agents.declare.tool import Tool
from agents.errors import DeclarationError
from agents.graph.graph import AgentGraph, StepNode


def build_graph(
    name: str,
    steps: Sequence[Step[Any, Any]],
    *,
    description: str = "",
    allowed_actions: Mapping[str, type[Any] | None] | None = None,
) -> AgentGraph:
    """Validate the declared steps and build the graph; raises one `DeclarationError` listing
    every problem.

    Example:
        >>> build_graph("empty", [])
        Traceback (most recent call last):
        ...
        agents.errors.DeclarationError: Agent 'empty' has 1 declaration problem:
          - the agent declares no steps
    """
    problems: list[str] = []
    if not steps:
        raise DeclarationError.single(name, "the agent declares no steps")
    counts = Counter(s.name for s in steps)
    for step_name, count in counts.items():
        if count > 1:
            layers = ", ".join(s.layer for s in steps if s.name == step_name)
            problems.append(
                f"step '{step_name}': declared {count} times ({layers}); give each step a "
                "unique function name"
            )
    by_name: dict[str, Step[Any, Any]] = {}
    for s in steps:
        by_name.setdefault(s.name, s)

    hints = {step_name: resolve_hints(s) for step_name, s in by_name.items()}
    deps: dict[str, tuple[str, ...]] = {}
    run_inputs: dict[str, tuple[Param, ...]] = {}
    for step_name, s in by_name.items():
        where = f"{s.layer} step '{step_name}'"
        param_hints, _ = hints[step_name]
        edges: list[str] = []
        inputs: list[Param] = []
        for p in s.params:
            if p.name in RESOURCES:
                continue
            producer = by_name.get(p.name)
            if producer is None:
                inputs.append(p)
                continue
            edges.append(p.name)
            if producer is s:
                problems.append(f"{where}: parameter '{p.name}' consumes the step itself")
                continue
            if LAYERS.index(producer.layer) > LAYERS.index(s.layer):
                problems.append(
                    f"{where}: parameter '{p.name}' consumes {producer.layer} step "
                    f"'{p.name}', a later layer; data flows perception → reasoning → "
                    "action → learning"
                )
            produced = hints[p.name][1]
            expected = param_hints.get(p.name)
            if produced is type(None) or produced is None:
                problems.append(
                    f"{where}: parameter '{p.name}' consumes step '{p.name}', which "
                    "returns None; return a value or drop the parameter"
                )
            elif (
                is_concrete_class(produced)
                and is_concrete_class(expected)
                and not issubclass(produced, cast(type, expected))
            ):
                problems.append(
                    f"{where}: parameter '{p.name}' expects {cast(type, expected).__name__}, "
                    f"but step '{p.name}' returns {produced.__name__}"
                )
        deps[step_name] = tuple(edges)
        run_inputs[step_name] = tuple(inputs)
        if s.layer == "reasoning" and returns_decision(hints[step_name][1]) is False:
            problems.append(
                f"{where}: returns {getattr(hints[step_name][1], '__name__', hints[step_name][1])}"
                ", which does not subclass Decision; return a Decision subclass"
            )

    order, cycle = toposort([s.name for s in steps if by_name[s.name] is s], deps)
    if cycle:
        problems.append(
            f"step '{cycle[0]}': cycle {' → '.join([*cycle, cycle[0]])}; "
            "break it by removing one of these parameters"
        )
    else:
        found = ancestors(order, deps)
        for step_name in order:
            s = by_name[step_name]
            if s.layer == "action" and not any(
                by_name[a].layer == "reasoning" for a in found[step_name]
            ):
                problems.append(
                    f"action step '{step_name}': no reasoning step upstream; actions must be "
                    "decided: add a parameter naming a reasoning step"
                )
            if s.layer == "perception" and not any(step_name in deps[c] for c in order):
                problems.append(
                    f"perception step '{step_name}': its output reaches no step; name "
                    f"'{step_name}' as a parameter of a step that uses it, or remove it"
                )
    tools = {n: _tools_of(by_name[n], by_name, problems) for n in by_name}
    if problems:
        raise DeclarationError(name, problems)
    nodes = {
        n: StepNode(
            step=by_name[n],
            depends_on=deps[n],
            run_inputs=run_inputs[n],
            resources=tuple(p.name for p in by_name[n].params if p.name in RESOURCES),
            returns=hints[n][1],
            tools=tools[n],
        )
        for n in order
    }
    return AgentGraph(
        name=name,
        description=description,
        allowed_actions=None
        if allowed_actions is None
        else MappingProxyType(dict(allowed_actions)),
        nodes=MappingProxyType(nodes),
    )


def _tools_of(
    step: Step[Any, Any], steps: Mapping[str, Step[Any, Any]], problems: list[str]
) -> tuple[Tool, ...]:
    """The step's tools, analysed once; what is wrong with them goes to `problems`, naming the
    step and the tool."""
    where = f"{step.layer} step '{step.name}'"
    functions = {id(s.fn): s for s in steps.values()}
    found: list[Tool] = []
    for declared in step.options.tools:
        if isinstance(declared, Step) or id(declared) in functions:
            other = declared if isinstance(declared, Step) else functions[id(declared)]
            problems.append(
                f"{where}: tool '{other.name}' is the agent's {other.layer} step; a tool is a "
                "plain read-only function (actions are decided, never called by the model)"
            )
            continue
        tool = Tool.of(declared)
        problems.extend(f"{where}: tool '{tool.name}' {p}" for p in tool.problems)
        found.append(tool)
    counts = Counter(t.name for t in found)
    problems.extend(
        f"{where}: tool name '{n}' is declared {c} times; tool names must be unique"
        for n, c in counts.items()
        if c > 1
    )
    return tuple(found)


def toposort(
    names: list[str], deps: Mapping[str, tuple[str, ...]]
) -> tuple[list[str], list[str] | None]:
    """Kahn's algorithm, stable in declaration order; returns (order, a cycle or None).

    Example:
        >>> toposort(["b", "a"], {"a": (), "b": ("a",)})
        (['a', 'b'], None)
        >>> toposort(["a", "b"], {"a": ("b",), "b": ("a",)})
        ([], ['a', 'b'])
    """
    remaining = {n: {d for d in deps[n] if d != n and d in deps} for n in names}
    order: list[str] = []
    while True:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            break
        for n in ready:
            order.append(n)
            del remaining[n]
        for pending in remaining.values():
            pending.difference_update(ready)
    if not remaining:
        return order, None
    start = next(iter(remaining))
    path = [start]
    seen = {start}
    current = start
    while True:
        current = sorted(remaining[current])[0]
        if current in seen:
            return order, path[path.index(current) :]
        path.append(current)
        seen.add(current)


def ancestors(order: list[str], deps: Mapping[str, tuple[str, ...]]) -> dict[str, set[str]]:
    """Every step's transitive dependencies, for steps given in topological order."""
    found: dict[str, set[str]] = {}
    for name in order:
        acc: set[str] = set()
        for d in deps[name]:
            acc.add(d)
            acc |= found.get(d, set())
        found[name] = acc
    return found


def without_tools(graph: AgentGraph) -> AgentGraph:
    """The same agent with every reasoning step's tools removed (the graph itself is unchanged;
    one without tools is returned as is). Its steps decide from the prompt alone, so comparing
    the two measures what the tools are worth (`stalwart eval --compare-tools`).

    Example:
        >>> from agents import Agent, Decision
        >>> desk = Agent("desk")
        >>> class Answer(Decision):
        ...     text: str
        >>> def lookup(key: str) -> str:
        ...     '''The value stored under `key`.'''
        ...     return key.upper()
        >>> @desk.reasoning(tools=[lookup])
        ... def answer(question: str) -> Answer:
        ...     return Answer(text=question, confidence=1.0, rationale="echo")
        >>> [t.name for t in desk.compile().node("answer").tools]
        ['lookup']
        >>> without_tools(desk.compile()).node("answer").tools
        ()
    """
    if not any(node.tools for node in graph.nodes.values()):
        return graph
    return build_graph(
        graph.name,
        [
            s.with_options(tools=()) if s.layer == "reasoning" and s.options.tools else s
            for s in graph.order
        ],
        description=graph.description,
        allowed_actions=graph.allowed_actions,
    )
