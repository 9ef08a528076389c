"""Tool turns: the offline model calling a step's tools before it answers.

This module owns the server side of the runtime's tool loop: recognising a tool-loop request,
reading the conversation's earlier tool calls and their results, and deciding which tools to call
next with which arguments. Building the reply (and applying content faults) is left to
`agents.modelserver.completions`; the rule format (`"call"`) to `agents.modelserver.rules`.

**The protocol.** A tool-loop request offers the step's tools as OpenAI function tools plus one
answer tool named `final_result` (its parameters are the answer's JSON schema), with
`tool_choice` `"required"` (or `"auto"`). Earlier turns are assistant messages with `tool_calls`,
each followed by `role: "tool"` messages (`tool_call_id`, `content`). A request that forces one
function (`tool_choice` naming it, instructor's way) or offers no `final_result` is not a
tool-loop request and is answered as before.

**The decision, deterministic.** Rules are matched against the user's text plus the contents of
the successful tool results so far. Every call of a matching rule whose tool is offered, fitted
to the tool's parameter schema, is made unless the conversation already holds it (same tool and
arguments) with a successful result; all such calls go out together in one turn. A result whose
text starts with "error" or that is a JSON object with a non-null `"error"` is a failure: that
call may be made again, `MAX_TRIES` times in all. When nothing is left to call (or after
`MAX_TOOL_TURNS` tool turns), the model answers by calling `final_result`.

Example:
    >>> body = {"messages": [{"role": "user", "content": "hi"}], "tool_choice": "required",
    ...         "tools": [{"type": "function", "function": {"name": "final_result",
    ...                    "parameters": {"type": "object"}}}]}
    >>> tool_loop(body).offered
    {}
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agents.modelserver.rules import Rules
from agents.modelserver.schema import Steering, generate, is_valid, resolve

ANSWER_TOOL = "final_result"
"""The name of the answer tool: calling it ends the tool loop with the structured answer."""
MAX_TRIES = 2
"""Calls of one tool with the same arguments per conversation while its results are failures."""
MAX_TOOL_TURNS = 8
"""Tool turns after the last user message before the model answers whatever is left."""


@dataclass(frozen=True)
class MadeCall:
    """A tool call of an earlier turn and what came back.

    Attributes:
        name: The tool's name.
        arguments: Its arguments (the raw string when they were not a JSON object).
        result: The tool message's content as text; None when no result came back.
        failed: Whether the result says the call failed (or no result came back).

    Example:
        >>> MadeCall("lookup_order", {"order_id": "7"}, "error: timeout", True).key
        '["lookup_order", {"order_id": "7"}]'
    """

    name: str
    arguments: Any
    result: str | None = None
    failed: bool = True

    @property
    def key(self) -> str:
        """The call's identity: its tool and arguments, as canonical JSON."""
        return call_key(self.name, self.arguments)


@dataclass(frozen=True)
class ToolLoop:
    """What a tool-loop request offers and what its conversation already holds.

    Attributes:
        offered: Tool name to parameter schema, for every offered tool but `final_result`.
        answer_schema: The parameter schema of `final_result` (the structured answer).
        made: The tool calls of the turns after the last user message, in order.
        turns: How many such tool turns there were.

    Example:
        >>> ToolLoop(offered={}, answer_schema={"type": "object"}).results_text()
        ''
    """

    offered: Mapping[str, Mapping[str, Any]]
    answer_schema: Mapping[str, Any]
    made: tuple[MadeCall, ...] = ()
    turns: int = 0

    def results_text(self) -> str:
        """The successful results' contents, one per line (what rules read besides the user).

        Example:
            >>> ToolLoop({}, {}, made=(MadeCall("t", {}, "refund issued", False),)).results_text()
            'refund issued'
        """
        return "\n".join(c.result for c in self.made if not c.failed and c.result is not None)

    def consulted(self) -> tuple[str, ...]:
        """The tools whose results were used, in order of first use, each once.

        Example:
            >>> ToolLoop({}, {}, made=(MadeCall("a", {}, "x", False),)).consulted()
            ('a',)
        """
        names: list[str] = []
        for call in self.made:
            if not call.failed and call.name not in names:
                names.append(call.name)
        return tuple(names)


def call_key(name: str, arguments: Any) -> str:
    """Canonical JSON of a tool name and its arguments: equal calls, equal keys.

    Example:
        >>> call_key("t", {"b": 1, "a": 2})
        '["t", {"a": 2, "b": 1}]'
    """
    return json.dumps([name, arguments], sort_keys=True, ensure_ascii=False, default=str)


def content_text(content: Any) -> str:
    """A tool message's content as text: a string, the text parts of a list, else JSON.

    Example:
        >>> content_text([{"type": "text", "text": "ok"}]), content_text({"a": 1})
        ('ok', '{"a": 1}')
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(isinstance(part, Mapping) for part in content):
        return "\n".join(str(part.get("text", "")) for part in content if "text" in part)
    if content is None:
        return ""
    return json.dumps(content, ensure_ascii=False, default=str)


def is_failure(text: str | None) -> bool:
    """Whether a tool result says the call failed: no result, text starting with "error"
    (any case), or a JSON object with a non-null `"error"`.

    Example:
        >>> is_failure("Error: order service timed out"), is_failure('{"error": "not found"}')
        (True, True)
        >>> is_failure('{"status": "shipped", "error": null}')
        False
    """
    if text is None:
        return True
    stripped = text.strip()
    if stripped.casefold().startswith("error"):
        return True
    if stripped.startswith("{"):
        try:
            value = json.loads(stripped)
        except ValueError:
            return False
        return isinstance(value, dict) and value.get("error") is not None
    return False


def _functions(body: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    tools = body.get("tools")
    if not isinstance(tools, list):
        return []
    return [
        tool["function"]
        for tool in tools
        if isinstance(tool, Mapping)
        and isinstance(tool.get("function"), Mapping)
        and isinstance(tool["function"].get("name"), str)
    ]


def _parameters(function: Mapping[str, Any]) -> dict[str, Any]:
    parameters = function.get("parameters")
    return dict(parameters) if isinstance(parameters, Mapping) else {"type": "object"}


def tool_loop(body: Mapping[str, Any]) -> ToolLoop | None:
    """The tool loop of a request, or None when it is not one (see the module docstring).

    Example:
        >>> tool_loop({"messages": [], "tools": [{"type": "function", "function": {
        ...     "name": "final_result"}}], "tool_choice": {"type": "function",
        ...     "function": {"name": "final_result"}}}) is None
        True
    """
    choice = body.get("tool_choice")
    if choice is not None and choice not in ("required", "auto"):
        return None  # "none", or one function forced: answered as any other request
    functions = _functions(body)
    answer = next((f for f in functions if f["name"] == ANSWER_TOOL), None)
    if answer is None:
        return None
    offered = {f["name"]: _parameters(f) for f in functions if f["name"] != ANSWER_TOOL}
    made, turns = _conversation(body.get("messages") or [])
    return ToolLoop(offered=offered, answer_schema=_parameters(answer), made=made, turns=turns)


def _conversation(messages: Sequence[Any]) -> tuple[tuple[MadeCall, ...], int]:
    """The tool calls after the last user message, with their results, and the turn count."""
    start = 0
    for index, message in enumerate(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            start = index + 1
    results: dict[str, str] = {}
    for message in messages[start:]:
        if isinstance(message, Mapping) and message.get("role") == "tool":
            results[str(message.get("tool_call_id"))] = content_text(message.get("content"))
    made: list[MadeCall] = []
    turns = 0
    for message in messages[start:]:
        if not isinstance(message, Mapping) or message.get("role") != "assistant":
            continue
        calls = message.get("tool_calls")
        if not isinstance(calls, list) or not calls:
            continue
        turns += 1
        for call in calls:
            function = call.get("function") if isinstance(call, Mapping) else None
            if not isinstance(function, Mapping) or function.get("name") == ANSWER_TOOL:
                continue
            raw = function.get("arguments")
            try:
                arguments = json.loads(raw) if isinstance(raw, str) else raw
            except ValueError:
                arguments = raw
            result = results.get(str(call.get("id")))
            made.append(
                MadeCall(
                    name=str(function.get("name")),
                    arguments=arguments,
                    result=result,
                    failed=is_failure(result),
                )
            )
    return tuple(made), turns


def fit_arguments(
    arguments: Mapping[str, Any],
    parameters: Mapping[str, Any],
    *,
    seed: str,
    context: str = "",
    force_confidence: float | None = None,
) -> Any:
    """Arguments valid for a tool's `parameters` schema: the rule's values where they fit
    (a captured string converted to a number or boolean where the parameter wants one), the
    rest generated from the schema as answers are.

    Example:
        >>> fit_arguments({"order_id": "55102", "extra": 1}, {"type": "object",
        ...     "properties": {"order_id": {"type": "integer"}, "note": {"type": "string",
        ...     "default": ""}}, "required": ["order_id"]}, seed="s")
        {'order_id': 55102, 'note': ''}
    """
    schema = resolve(parameters, parameters)
    properties: Mapping[str, Any] = schema.get("properties") or {}
    values: dict[str, Any] = {}
    for name, value in arguments.items():
        if name in properties:
            values[name] = _convert(value, properties[name], parameters)
    steering = Steering(values=values, force_confidence=force_confidence, context=context)
    fitted = generate(parameters, seed=seed, steering=steering)
    if not properties and isinstance(fitted, dict) and schema.get("additionalProperties", True):
        # An open object (`{"type": "object"}`): the rule's arguments are the arguments.
        candidate = {**fitted, **arguments}
        if is_valid(candidate, parameters):
            return candidate
    return fitted


def _convert(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any]) -> Any:
    if is_valid(value, schema, root=root) or not isinstance(value, str):
        return value
    candidates: list[Any] = [value.strip()]
    with contextlib.suppress(ValueError):
        candidates.insert(0, json.loads(value))  # "42" → 42, "true" → True, "4.5" → 4.5
    for candidate in candidates:
        if is_valid(candidate, schema, root=root):
            return candidate
    return value


def next_calls(
    loop: ToolLoop,
    rules: Rules,
    user_text: str,
    *,
    schema: str | None = None,
    force_confidence: float | None = None,
) -> list[tuple[str, Any]]:
    """The tool calls of the next turn, in rule order; empty when it is time to answer.

    Args:
        loop: The request's tool loop.
        rules: The steering rules (their `call` lists).
        user_text: The last user message.
        schema: The answer's schema name (rules scoped to it come first).
        force_confidence: Forced into any `confidence` parameter of a tool.

    Returns:
        `(tool name, arguments)` pairs, arguments valid for the tool's parameters.

    Example:
        >>> loop = ToolLoop(offered={"t": {"type": "object"}}, answer_schema={})
        >>> next_calls(loop, Rules.from_list([{"call": [{"tool": "t"}]}]), "hi")
        [('t', {})]
    """
    if loop.turns >= MAX_TOOL_TURNS:
        return []
    text = "\n".join(part for part in (user_text, loop.results_text()) if part)
    tries: dict[str, int] = {}
    done: set[str] = set()
    for call in loop.made:
        tries[call.key] = tries.get(call.key, 0) + 1
        if not call.failed:
            done.add(call.key)
    planned: list[tuple[str, Any]] = []
    seen: set[str] = set()
    for name, arguments in rules.calls(text, schema=schema):
        parameters = loop.offered.get(name)
        if parameters is None:
            continue  # the step does not offer this tool
        # Seeded by the rule's call and the user's text (not the conversation), so the same
        # call fits to the same arguments on every turn and is recognised as already made.
        seed = hashlib.sha256(f"{call_key(name, arguments)}|{user_text}".encode()).hexdigest()
        fitted = fit_arguments(
            arguments, parameters, seed=seed, context=user_text, force_confidence=force_confidence
        )
        key = call_key(name, fitted)
        if key in seen or key in done or tries.get(key, 0) >= MAX_TRIES:
            continue
        seen.add(key)
        planned.append((name, fitted))
    return planned
