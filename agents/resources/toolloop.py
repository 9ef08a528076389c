"""The tool loop of `LLM.decide`: the model consults a step's read-only tools before it answers.

Each turn is one chat completion offering the step's tools plus `final_result`, the answer
(its parameters are the output type's JSON schema), with `tool_choice="required"`: the model
either calls tools (several in one turn run concurrently) or answers. A turn goes through the
same policy as a single call (`llm._Call`: answer cache, circuit breaker, retries, recording),
so a rerun replays turns from the cache. Tool arguments are validated against the tool's
schema; a bad call, an unknown tool, a tool that raises and an answer that does not validate go
back to the model as the tool's error message, within a budget; `max_turns` bounds the loop.

Tools run through a `ToolRunner`: in a run, the runtime's (`agents.execution.tools`) makes each
call a Prefect task run whose result is persisted and cached; outside a run they are called
directly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from pydantic import BaseModel, Field, ValidationError

from agents.declare.tool import ANSWER_TOOL, Tool
from agents.errors import ToolLoopExhausted
from agents.observe import tracing
from agents.redact import scrub_text

if TYPE_CHECKING:
    from agents.resources.llm import LLM

__all__ = ["DirectToolRunner", "ToolCall", "ToolRunner", "run_loop"]

T = TypeVar("T", bound=BaseModel)

#: A tool result is logged (and shown to the model) at most this long.
RESULT_MAX_CHARS = 4_000


@dataclass(frozen=True, kw_only=True)
class ToolCall:
    """One tool call of a loop, as the decision log keeps it."""

    turn: int
    tool: str
    arguments: dict[str, Any]
    status: str
    """`ok`, `error` (the tool raised), `invalid` (bad arguments) or `unknown` (no such tool)."""
    result: str
    """The result (or the error) as the model saw it: redacted, at most 4,000 characters."""
    latency_ms: float


class ToolRunner(Protocol):
    """Runs one tool call of a loop; raises what the tool raised."""

    async def run(self, turn: int, tool: Tool, arguments: dict[str, Any]) -> Any: ...


class DirectToolRunner:
    """Calls tools in this process, outside Prefect (an `LLM` used outside a run)."""

    async def run(self, turn: int, tool: Tool, arguments: dict[str, Any]) -> Any:
        if tool.resources:
            raise TypeError(
                f"tool {tool.name!r} asks for {list(tool.resources)}: only a run injects them"
            )
        if tool.is_async:
            return await tool.fn(**arguments)
        value = await asyncio.to_thread(tool.fn, **arguments)
        if inspect.isawaitable(value):
            value = await value
        return value


class _Requested(BaseModel):
    """One tool call the model asked for."""

    id: str
    name: str
    arguments: str


class Turn(BaseModel):
    """What the model did in one turn: the tool calls it made (the answer is one of them)."""

    calls: list[_Requested] = Field(min_length=1)


def tool_specs(tools: Sequence[Tool], output: type[BaseModel]) -> list[dict[str, Any]]:
    """The tools the model is offered: the step's, then `final_result` (the answer)."""
    answer = {
        "name": ANSWER_TOOL,
        "description": f"Give the final answer as a {output.__name__}, once you know enough.",
        "parameters": output.model_json_schema(),
    }
    return [
        {"type": "function", "function": spec} for spec in [*(t.schema() for t in tools), answer]
    ]


def as_text(value: Any) -> str:
    """A tool result as the model reads it: JSON when it can be, redacted and capped."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json")
    try:
        text = value if isinstance(value, str) else json.dumps(value, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    return scrub_text(text)[:RESULT_MAX_CHARS]


async def run_loop(
    llm: LLM,
    messages: list[dict[str, Any]],
    output: type[T],
    tools: Sequence[Tool],
    *,
    max_turns: int,
    budget: int,
    runner: ToolRunner,
    ask: Callable[[list[dict[str, Any]]], Awaitable[Turn]],
) -> T:
    """Run the loop until the model answers; the answer, with every tool call recorded on the
    last turn's `LLMCall`.

    `ask(messages)` makes one policy-governed request (a turn) and returns its `Turn`. Raises
    `ToolLoopExhausted` after `max_turns` turns, or when bad calls and bad answers outrun
    `budget`.
    """
    by_name = {t.name: t for t in tools}
    made: list[ToolCall] = []
    call = _Messages(messages)
    for turn_number in range(1, max_turns + 1):
        turn: Turn = await ask(messages)
        answers = [c for c in turn.calls if c.name == ANSWER_TOOL]
        asked = [c for c in turn.calls if c.name != ANSWER_TOOL]
        call.messages.append(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": c.id,
                        "type": "function",
                        "function": {"name": c.name, "arguments": c.arguments},
                    }
                    for c in turn.calls
                ],
            }
        )
        if answers and not asked:
            try:
                result = output.model_validate_json(answers[0].arguments)
            except ValidationError as exc:
                budget -= 1
                if budget <= 0:
                    raise ToolLoopExhausted(
                        f"the model's answer never validated as {output.__name__}: "
                        f"{_first_error(exc)}"
                    ) from None
                _reply(call, answers[0].id, f"error: the answer is invalid: {_first_error(exc)}")
                continue
            _attach(llm, made)
            return result
        for c in answers:  # an answer beside tool calls: look first, answer after
            _reply(call, c.id, "error: answer after the tool results, in a turn of its own")
        done = await asyncio.gather(*(_one(runner, by_name, turn_number, c) for c in asked))
        for requested, record in zip(asked, done, strict=True):
            made.append(record)
            _reply(call, requested.id, record.result)
            if record.status in ("invalid", "unknown"):
                budget -= 1
        if budget <= 0:
            _attach(llm, made)
            raise ToolLoopExhausted(
                f"the model kept calling tools wrongly ({len(made)} call(s) in "
                f"{turn_number} turn(s)); last: {made[-1].result[:200]}"
            )
    _attach(llm, made)
    raise ToolLoopExhausted(
        f"no answer after max_turns={max_turns} turn(s) and {len(made)} tool call(s); raise "
        "max_turns or give the model what it needs in the prompt"
    )


async def _one(
    runner: ToolRunner, by_name: dict[str, Tool], turn: int, requested: _Requested
) -> ToolCall:
    started = time.perf_counter()

    def record(status: str, result: str, arguments: dict[str, Any]) -> ToolCall:
        made = ToolCall(
            turn=turn,
            tool=requested.name,
            arguments=arguments,
            status=status,
            result=result,
            latency_ms=(time.perf_counter() - started) * 1000,
        )
        tracing.tool_call(
            made.tool,
            status=status,
            latency_ms=made.latency_ms,
            turn=turn,
            arguments=arguments,
            result=result,
        )
        return made

    tool = by_name.get(requested.name)
    if tool is None:
        names = sorted(by_name)
        return record("unknown", f"error: no tool {requested.name!r}; tools: {names}", {})
    try:
        raw = json.loads(requested.arguments or "{}")
        if not isinstance(raw, dict):
            raise ValueError("arguments must be a JSON object")
        arguments = tool.arguments(raw)
    except (ValueError, ValidationError) as exc:
        detail = _first_error(exc) if isinstance(exc, ValidationError) else str(exc)
        return record("invalid", f"error: invalid arguments: {detail}", {})
    shown = json.loads(json.dumps(arguments, default=str))
    try:
        value = await runner.run(turn, tool, arguments)
    except Exception as exc:
        message = scrub_text(f"{type(exc).__name__}: {exc}")[:500]
        return record("error", f"error: the tool failed: {message}", shown)
    return record("ok", as_text(value), shown)


@dataclass
class _Messages:
    messages: list[dict[str, Any]]


def _reply(call: _Messages, call_id: str, content: str) -> None:
    call.messages.append({"role": "tool", "tool_call_id": call_id, "content": content})


def _attach(llm: LLM, made: list[ToolCall]) -> None:
    """Put the loop's tool calls on its last recorded model call (the decision log sums them)."""
    if made and llm.calls:
        trace = tuple(dataclasses.asdict(m) for m in made)
        llm.calls[-1] = dataclasses.replace(llm.calls[-1], tool_calls=trace)


def _first_error(exc: ValidationError) -> str:
    errors = exc.errors()
    if not errors:
        return str(exc)[:300]
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "value"
    return f"{where}: {first.get('msg', '')}"[:300]


def turn_of(completion: Any) -> Turn:
    """The `Turn` in a chat completion (a `ValidationError` when it called no tool: the
    policy treats it as bad output, like an answer that does not validate)."""
    message = completion.choices[0].message
    calls = [
        {
            "id": getattr(c, "id", None) or f"call_{uuid.uuid4().hex[:12]}",
            "name": c.function.name,
            "arguments": c.function.arguments or "{}",
        }
        for c in (getattr(message, "tool_calls", None) or [])
    ]
    return Turn.model_validate({"calls": calls})
