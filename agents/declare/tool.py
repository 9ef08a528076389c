"""A tool a reasoning step's model may call: a plain typed function that only reads.

`Tool.of(fn)` analyses the function once (as FastAPI analyses a path operation): its name and
docstring become the tool's name and description, its annotated parameters a pydantic model
whose JSON schema the model sees, and `context` / `memory` parameters are injected instead of
asked for. Tools are perception: anything with a side effect stays an action step, behind the
threshold, the ladder and `allowed_actions`, so a model can look things up but never act.

Example:
    >>> def lookup_order(order_id: str) -> dict:
    ...     '''The order's status and items.'''
    ...     return {"id": order_id, "status": "shipped"}
    >>> tool = Tool.of(lookup_order)
    >>> tool.name, tool.description
    ('lookup_order', "The order's status and items.")
    >>> tool.schema()["parameters"]["required"]
    ['order_id']
    >>> tool.arguments({"order_id": 1234})
    Traceback (most recent call last):
    ...
    pydantic_core._pydantic_core.ValidationError: 1 validation error for lookup_order
    ...
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, create_model

__all__ = ["TOOL_RESOURCES", "Tool"]

#: What a tool may receive besides its arguments: the run's context and a read-only memory.
TOOL_RESOURCES = frozenset({"context", "memory"})
#: The name of the answer "tool" the model calls to answer (no user tool may take it).
ANSWER_TOOL = "final_result"


@dataclass(frozen=True, eq=False)
class Tool:
    """A tool, analysed once: name, description, argument model, injected resources."""

    fn: Callable[..., Any]
    name: str
    description: str
    args_model: type[BaseModel]
    resources: tuple[str, ...]
    is_async: bool
    problems: tuple[str, ...]
    """What is wrong with it as declared (reported by the graph, naming step and tool)."""

    @classmethod
    def of(cls, fn: Any) -> Tool:
        """Analyse `fn` (a function, or a `Tool` already)."""
        if isinstance(fn, Tool):
            return fn
        name = str(getattr(fn, "__name__", type(fn).__name__))
        problems: list[str] = []
        if not callable(fn):
            return cls(fn, name, "", _empty(name), (), False, ("is not callable",))
        try:
            signature = inspect.signature(fn)
            hints = typing.get_type_hints(fn)
        except (TypeError, ValueError, NameError) as exc:
            return cls(fn, name, "", _empty(name), (), False, (f"cannot be analysed: {exc}",))
        fields: dict[str, Any] = {}
        resources: list[str] = []
        for param in signature.parameters.values():
            if param.name in TOOL_RESOURCES:
                resources.append(param.name)
                continue
            if param.name == "idempotency_key":
                problems.append(
                    "asks for 'idempotency_key': tools only read; make a side effect an action step"
                )
                continue
            if param.name == "llm":
                problems.append("asks for 'llm': a tool does not call the model")
                continue
            if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                problems.append(f"parameter '{param.name}' is variadic; name each argument")
                continue
            if param.annotation is inspect.Parameter.empty:
                problems.append(f"parameter '{param.name}' has no type hint; annotate it")
                continue
            default = ... if param.default is inspect.Parameter.empty else param.default
            fields[param.name] = (hints.get(param.name, Any), default)
        if name == ANSWER_TOOL:
            problems.append(f"the name '{ANSWER_TOOL}' is the model's answer; rename the tool")
        config = ConfigDict(extra="forbid")
        model = create_model(name, __config__=config, **fields)
        description = inspect.getdoc(fn) or f"The tool {name}."
        return cls(
            fn=fn,
            name=name,
            description=description,
            args_model=model,
            resources=tuple(resources),
            is_async=inspect.iscoroutinefunction(fn),
            problems=tuple(problems),
        )

    def schema(self) -> dict[str, Any]:
        """The tool as the OpenAI `function` the model sees."""
        parameters = self.args_model.model_json_schema()
        parameters.pop("title", None)
        return {"name": self.name, "description": self.description, "parameters": parameters}

    def arguments(self, raw: Mapping[str, Any]) -> dict[str, Any]:
        """`raw` validated against the tool's parameters (raises pydantic's ValidationError)."""
        validated = self.args_model.model_validate(dict(raw))
        return {name: getattr(validated, name) for name in type(validated).model_fields}


def _empty(name: str) -> type[BaseModel]:
    return create_model(name or "tool")
