"""Chat completions: the offline model's answer to one request body, shaped as OpenAI shapes it.

This module owns everything between a parsed `/v1/chat/completions` body and the reply dict, with
no HTTP in it: which structured output is wanted (`find_target`), the deterministic seed of a
request, steering by rules, the content faults (`malformed`, `schema_invalid`) and usage.

Where instructor 1.17 puts the schema (see `instructor/v2/providers/openai/handlers.py`):

- `Mode.TOOLS`: `tools=[{"type": "function", "function": {"name", "description",
  "parameters": <schema>}}]` and `tool_choice={"type": "function", "function": {"name": ...}}`;
  the answer goes in `choices[0].message.tool_calls[0].function.arguments`.
- `Mode.JSON`: `response_format={"type": "json_object"}` and the schema as
  `json.dumps(schema, indent=2)` inside the FIRST system message (inserted, or appended to an
  existing one) after the words "match the following json_schema:"; the answer is pure JSON in
  `choices[0].message.content`.
- `Mode.JSON_SCHEMA`: `response_format={"type": "json_schema", "json_schema": {"name", "schema"}}`.
- `Mode.MD_JSON`: the system-message schema as in JSON mode, no `response_format`, and a user
  message asking for a ```json block; the answer is fenced.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agents.modelserver.rules import Rules
from agents.modelserver.schema import Steering, generate, is_valid, resolve

REASK_PREFIXES: tuple[str, ...] = ("Correct your JSON ONLY RESPONSE", "Validation Error found")
INSTRUCTOR_SUFFIXES: tuple[str, ...] = (
    "Return the correct JSON response within a ```json codeblock. not the JSON_SCHEMA",
)
SCHEMA_MARKER = "json_schema"
GENERIC_JSON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
}
_WRONG_VALUES: tuple[Any, ...] = ({"unexpected": True}, -1, "", None, [])


@dataclass(frozen=True)
class Target:
    """What kind of answer a request wants.

    Attributes:
        mode: "tools" (a function call), "json" (JSON content) or "text" (plain chat).
        schema: The JSON schema of the answer; None for text (or JSON without a schema).
        name: The function name (tools) or the schema name (json_schema).
        fenced: Whether JSON content should be wrapped in a ```json block (instructor MD_JSON).

    Example:
        >>> find_target({"messages": [{"role": "user", "content": "hi"}]}).mode
        'text'
    """

    mode: Literal["tools", "json", "text"]
    schema: dict[str, Any] | None = None
    name: str | None = None
    fenced: bool = False


def message_text(content: Any) -> str:
    """The text of a message's `content`: a string, or the text parts of a parts list.

    Example:
        >>> message_text([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}])
        'a\\nb'
    """
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [
            str(part.get("text", ""))
            for part in content
            if isinstance(part, Mapping) and part.get("type", "text") == "text"
        ]
        return "\n".join(texts)
    return ""


def last_user_text(messages: Sequence[Any]) -> str:
    """The text of the last user message that is not an instructor re-ask.

    Instructions instructor appends to the user's text (MD_JSON's request for a ```json block)
    are removed.

    Example:
        >>> last_user_text([{"role": "user", "content": "refund please"},
        ...                 {"role": "user", "content": "Correct your JSON ONLY RESPONSE..."}])
        'refund please'
    """
    fallback = ""
    for message in reversed(messages):
        if not isinstance(message, Mapping) or message.get("role") != "user":
            continue
        text = message_text(message.get("content"))
        for suffix in INSTRUCTOR_SUFFIXES:
            text = text.replace(suffix, "").strip()
        if not fallback:
            fallback = text
        if not text.lstrip().startswith(REASK_PREFIXES):
            return text
    return fallback


def schema_from_messages(messages: Sequence[Any]) -> dict[str, Any] | None:
    """The JSON schema embedded in the messages (system first), as instructor's JSON mode puts it.

    Looks for the first JSON object after the word "json_schema"; failing that, for any JSON
    object in a system message that looks like a schema.

    Example:
        >>> schema_from_messages([{"role": "system", "content":
        ...     'match the following json_schema: {"type": "object"}'}])
        {'type': 'object'}
    """
    texts = [
        message_text(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") in ("system", "developer")
    ]
    texts += [
        message_text(m.get("content"))
        for m in messages
        if isinstance(m, Mapping) and m.get("role") not in ("system", "developer")
    ]
    decoder = json.JSONDecoder()
    for text in texts:
        marker = text.find(SCHEMA_MARKER)
        if marker < 0:
            continue
        start = text.find("{", marker)
        while start >= 0:
            try:
                found, _ = decoder.raw_decode(text, start)
            except ValueError:
                start = text.find("{", start + 1)
                continue
            if isinstance(found, dict):
                return found
            start = text.find("{", start + 1)
    for text in texts[:1]:
        start = text.find("{")
        for _ in range(64):
            if start < 0:
                break
            try:
                found, _ = decoder.raw_decode(text, start)
            except ValueError:
                found = None
            if isinstance(found, dict) and ("properties" in found or "$defs" in found):
                return found
            start = text.find("{", start + 1)
    return None


def find_target(body: Mapping[str, Any]) -> Target:
    """Decide whether `body` wants a tool call, JSON content or plain text, and its schema.

    Example:
        >>> find_target({"messages": [], "tools": [{"type": "function", "function": {
        ...     "name": "Ticket", "parameters": {"type": "object"}}}]}).name
        'Ticket'
    """
    messages = body.get("messages") or []
    tools = body.get("tools")
    tool_choice = body.get("tool_choice")
    if isinstance(tools, list) and tools and tool_choice != "none":
        functions = [
            t["function"]
            for t in tools
            if isinstance(t, Mapping) and isinstance(t.get("function"), Mapping)
        ]
        wanted = None
        if isinstance(tool_choice, Mapping):
            choice_fn = tool_choice.get("function")
            wanted = choice_fn.get("name") if isinstance(choice_fn, Mapping) else None
        chosen = next((f for f in functions if f.get("name") == wanted), None)
        if chosen is None and functions:
            chosen = functions[0]
        if chosen is not None:
            parameters = chosen.get("parameters")
            schema = dict(parameters) if isinstance(parameters, Mapping) else {"type": "object"}
            return Target(mode="tools", schema=schema, name=str(chosen.get("name") or "answer"))
    response_format = body.get("response_format")
    if isinstance(response_format, Mapping):
        kind = response_format.get("type")
        if kind == "json_schema":
            raw_spec = response_format.get("json_schema")
            spec: Mapping[str, Any] = raw_spec if isinstance(raw_spec, Mapping) else {}
            given = spec.get("schema")
            found = dict(given) if isinstance(given, Mapping) else schema_from_messages(messages)
            return Target(mode="json", schema=found, name=spec.get("name"))
        if kind == "json_object":
            return Target(mode="json", schema=schema_from_messages(messages))
    embedded = schema_from_messages(messages)
    if embedded is not None:
        fenced = any(
            "```json" in message_text(m.get("content"))
            for m in messages
            if isinstance(m, Mapping) and m.get("role") == "user"
        )
        return Target(mode="json", schema=embedded, fenced=fenced)
    return Target(mode="text")


def request_seed(body: Mapping[str, Any], target: Target) -> str:
    """The sha256 hex digest of what determines the answer: model, messages, schema, name.

    Example:
        >>> len(request_seed({"model": "m", "messages": []}, Target(mode="text")))
        64
    """
    canonical = json.dumps(
        {
            "model": body.get("model"),
            "messages": body.get("messages"),
            "mode": target.mode,
            "schema": target.schema,
            "name": target.name,
        },
        sort_keys=True,
        ensure_ascii=True,
        default=str,
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def estimate_tokens(text: str) -> int:
    """About one token per four characters, at least one.

    Example:
        >>> estimate_tokens(""), estimate_tokens("x" * 40)
        (1, 10)
    """
    return max(1, round(len(text) / 4))


def break_required(value: Any, schema: Mapping[str, Any]) -> Any:
    """`value` without the required fields of the top-level object (the `schema_invalid` fault).

    When the schema requires nothing, each property gets a value of the wrong type instead.

    Example:
        >>> break_required({"a": 1, "b": 2}, {"type": "object", "required": ["a"]})
        {'b': 2}
    """
    resolved = resolve(schema, schema)
    if not isinstance(value, dict):
        return {"unexpected": True}
    required = [name for name in resolved.get("required") or [] if name in value]
    if required:
        return {k: v for k, v in value.items() if k not in required}
    properties: Mapping[str, Any] = resolved.get("properties") or {}
    broken = dict(value)
    for name, sub in properties.items():
        for wrong in _WRONG_VALUES:
            if not is_valid(wrong, sub, root=schema):
                broken[name] = wrong
                break
    return broken


def plain_reply(user_text: str) -> str:
    """The short deterministic text of a plain chat answer.

    Example:
        >>> plain_reply("hello")
        'This is the Stalwart offline model. You wrote: "hello"'
    """
    flat = " ".join(user_text.split())
    if not flat:
        return "This is the Stalwart offline model. How can I help?"
    if len(flat) > 80:
        flat = flat[:77].rstrip() + "..."
    return f'This is the Stalwart offline model. You wrote: "{flat}"'


def _field_names(schema: Mapping[str, Any]) -> set[str] | None:
    """The top-level property names of a JSON schema (None when it declares none)."""
    properties = schema.get("properties")
    return set(properties) if isinstance(properties, Mapping) else None


def complete(
    body: Mapping[str, Any],
    *,
    rules: Rules,
    force_confidence: float | None = None,
    fault: str | None = None,
) -> dict[str, Any]:
    """The full `chat.completion` reply to a validated request body.

    Args:
        body: The request JSON (needs `model` and `messages`).
        rules: Steering rules matched against the last user message.
        force_confidence: Value forced into any `confidence` field.
        fault: A content fault to apply: "malformed" or "schema_invalid" (others ignored).

    Returns:
        A dict with `id`, `object`, `created`, `model`, `choices` and `usage`.

    Example:
        >>> reply = complete({"model": "m", "messages": [{"role": "user", "content": "hi"}]},
        ...                  rules=Rules())
        >>> reply["choices"][0]["finish_reason"], reply["model"]
        ('stop', 'm')
    """
    messages: Sequence[Any] = body.get("messages") or []
    model = str(body.get("model"))
    target = find_target(body)
    seed = request_seed(body, target)
    user_text = last_user_text(messages)
    if target.mode == "text":
        text = plain_reply(user_text)
        if fault == "malformed":
            text = json.dumps({"answer": text})[: len(text) // 2 + 1]
    else:
        schema_name = target.name or (target.schema or {}).get("title")
        match = rules.match(user_text, schema=schema_name)
        schema = target.schema if target.schema is not None else GENERIC_JSON_SCHEMA
        steering = Steering(
            values=match.values,
            force_confidence=force_confidence,
            rationale=match.rationale(fields=_field_names(schema)),
            context=user_text,
        )
        value = generate(schema, seed=seed, steering=steering)
        if fault == "schema_invalid":
            value = break_required(value, schema)
        text = json.dumps(value, ensure_ascii=False)
        if fault == "malformed":
            text = text[: max(1, len(text) // 2)]
        if target.fenced:
            text = f"```json\n{text}\n```"
    message: dict[str, Any]
    if target.mode == "tools":
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": f"call_{seed[:24]}",
                    "type": "function",
                    "function": {"name": target.name, "arguments": text},
                }
            ],
        }
        finish_reason = "tool_calls"
    else:
        message = {"role": "assistant", "content": text, "refusal": None}
        finish_reason = "stop"
    prompt_parts = [message_text(m.get("content")) for m in messages if isinstance(m, Mapping)]
    for key in ("tools", "response_format"):
        if body.get(key) is not None:
            prompt_parts.append(json.dumps(body[key], default=str))
    prompt_tokens = estimate_tokens("\n".join(prompt_parts))
    completion_tokens = estimate_tokens(text)
    return {
        "id": f"chatcmpl-{seed[:24]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": "stalwart-offline",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }
