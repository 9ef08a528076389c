"""Chat completions: the offline model's answer to one request body, shaped as OpenAI shapes it.

This module owns everything between a parsed `/v1/chat/completions` body and the reply dict, with
no HTTP in it: which structured output is wanted (`find_target`), the deterministic seed of a
request, steering by rules, learning from few-shot examples, the content faults (`malformed`,
`schema_invalid`) and usage.

**Few-shot examples.** A real LLM copies what earlier turns of the conversation show; the offline
model does too, but only where its own rules have no signal. An example is a user message
followed by an assistant message whose content is a JSON object (its right answer), before the
last user message: the shape `agents.learning.examples.messages` writes. For each field of the
requested schema that no rule set (neither a keyword rule nor a catch-all default such as
`urgency=normal`), the examples that share *distinctive* words with the new input vote, each
with the number of words it shares (`example_answer`). Distinctive words have three letters or
more, a plural `s` folded, and are neither stop words nor generic support-ticket words
(`COMMON_WORDS`), so an in-house product name ("Ledgerly", "Vaultkey") counts and "please",
"order" or "yesterday" do not. The heaviest value answers the field if its weight `w` (shared
words summed over the examples that voted for it) is at least 2: one word shared with one
example is too little to copy a label from. Unless a rule set the confidence, the answer's
confidence reflects the overlap: `0.5 + 0.45·(1 - e^(-w/2))` (0.78 for w = 2, 0.85 for 3, 0.89
for 4), pulled towards 0.5 when the examples disagree (`c·share + 0.5·(1 - share)`), the lowest
over the learned fields. A rule that fires keeps precedence: its field and its confidence are
never replaced by an example, and a request without examples is answered exactly as before.

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
import math
import re
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from agents.modelserver.rules import Rules
from agents.modelserver.schema import Steering, generate, is_valid, resolve
from agents.modelserver.tools import ANSWER_TOOL, next_calls, tool_loop

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


# -- few-shot examples ----------------------------------------------------------------------------

_COMMON_TEXT = """
    a about after again ago all also always am an and another any anyone anything are around as
    ask asked asking at away back be because been before being best better between both but by
    call came can cannot could customer customers day days did do does doing done don down each
    earlier else even ever every everything few filed find first fine following for from get
    gets getting give given go going good got had happen happened has have haven having hello
    help hi his how however into is isn it its just keep keeps know last later let like look
    looking looks lot made make many may me mine month months more morning most much must my
    need needs never new next nobody none not nothing now of off ok okay old on once one only
    open or other our out over own part please point possible pretty problem put question
    quick quite really regards reply right said same saw say saying says second see seems seen
    should since so some someone something soon sorry still subject such sure take team than
    thank thanks that the their them then there these they thing things think this those
    three through time times today told too tried try trying two under until up update us use
    used using very via want wanted was way we week weeks well went were what when where which
    while who why will with without won work would wrong yes yesterday yet you your ticket
    tickets order orders issue didn doesn wasn aren couldn wouldn shouldn
    news request case checking opened heard sent wrote waiting answer message previous instead
    name email reach status hour minute monday tuesday wednesday thursday friday saturday sunday
"""
COMMON_WORDS: frozenset[str] = frozenset(_COMMON_TEXT.split())
"""Words too common in support tickets to say which example a new input resembles."""

_WORD = re.compile(r"[a-z0-9]+")
_UNSTEERED = frozenset({"confidence", "rationale"})
_SPAN, _EVIDENCE_SCALE, _MIN_EVIDENCE = 0.45, 2.0, 2.0


@dataclass(frozen=True)
class Shot:
    """One few-shot example found in a request: the input and its right answer.

    Example:
        >>> Shot("Ledgerly statement", {"category": "billing"}).answer["category"]
        'billing'
    """

    text: str
    answer: Mapping[str, Any]


@dataclass(frozen=True)
class Learned:
    """What the examples answered: field values, the confidence, and the words behind them.

    Example:
        >>> Learned({"category": "billing"}, 0.75, ("ledgerly", "statement")).confidence
        0.75
    """

    values: Mapping[str, Any]
    confidence: float
    words: tuple[str, ...] = ()


def distinctive_words(text: str) -> frozenset[str]:
    """The words of `text` that can tie it to an example (see the module docstring).

    Example:
        >>> sorted(distinctive_words("Please help: the Ledgerly statements are off"))
        ['ledgerly', 'statement']
    """
    found: set[str] = set()
    for word in _WORD.findall(text.casefold()):
        if len(word) < 3 or word.isdigit():
            continue
        if len(word) > 4 and word.endswith("s") and not word.endswith(("ss", "us")):
            word = word[:-1]
        if word not in COMMON_WORDS:
            found.add(word)
    return frozenset(found)


def few_shot_examples(messages: Sequence[Any]) -> list[Shot]:
    """The examples a request carries: user/assistant pairs before its last real user message.

    Only assistant turns whose content is a JSON object count (an answer, not chat). Turns after
    the last user message (instructor's re-asks) are not examples.

    Example:
        >>> few_shot_examples([
        ...     {"role": "user", "content": "Ledgerly statement off"},
        ...     {"role": "assistant", "content": '{"category": "billing"}'},
        ...     {"role": "user", "content": "Ledgerly statement missing"}])
        [Shot(text='Ledgerly statement off', answer={'category': 'billing'})]
    """
    last = None
    for index in range(len(messages) - 1, -1, -1):
        message = messages[index]
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = message_text(message.get("content")).lstrip()
            if not text.startswith(REASK_PREFIXES):
                last = index
                break
    shots: list[Shot] = []
    for index in range(1, last or 0):
        answer, asked = messages[index], messages[index - 1]
        if not (isinstance(answer, Mapping) and isinstance(asked, Mapping)):
            continue
        if answer.get("role") != "assistant" or asked.get("role") != "user":
            continue
        try:
            value = json.loads(message_text(answer.get("content")))
        except ValueError:
            continue
        if isinstance(value, dict) and value:
            shots.append(Shot(text=message_text(asked.get("content")), answer=value))
    return shots


def example_answer(text: str, shots: Sequence[Shot], fields: Collection[str]) -> Learned | None:
    """Answer `fields` from the examples that share distinctive words with `text`.

    Args:
        text: The new input (the last user message).
        shots: The request's examples.
        fields: The fields the rules left unset (the only ones examples may answer).

    Returns:
        The learned values and their confidence, or None when no field has enough evidence.

    Example:
        >>> shots = [Shot("Ledgerly statement is off", {"category": "billing"}),
        ...          Shot("Vaultkey seats", {"category": "account"})]
        >>> example_answer("Our Ledgerly statement lists a wrong total", shots, ["category"])
        Learned(values={'category': 'billing'}, confidence=0.78, words=('ledgerly', 'statement'))
    """
    words = distinctive_words(text)
    overlaps = [(shot, words & distinctive_words(shot.text)) for shot in shots]
    voters = [(shot, shared) for shot, shared in overlaps if shared]
    if not voters:
        return None
    values: dict[str, Any] = {}
    confidences: list[float] = []
    behind: set[str] = set()
    for name in sorted(fields):
        if name in _UNSTEERED:
            continue
        weights: dict[str, float] = {}
        best: dict[str, int] = {}
        picked: dict[str, Any] = {}
        for shot, shared in voters:
            if name not in shot.answer:
                continue
            key = json.dumps(shot.answer[name], sort_keys=True, default=str)
            weights[key] = weights.get(key, 0.0) + len(shared)
            best[key] = max(best.get(key, 0), len(shared))
            picked[key] = shot.answer[name]
        if not weights:
            continue
        # The heaviest value wins; a tie goes to the closest example, then to the value's text.
        key = max(weights, key=lambda k: (weights[k], best[k], k))
        if weights[key] < _MIN_EVIDENCE:
            continue  # one shared word in one example: too little to copy a label from
        share = weights[key] / sum(weights.values())
        raw = 0.5 + _SPAN * (1 - math.exp(-weights[key] / _EVIDENCE_SCALE))
        confidences.append(round(raw * share + 0.5 * (1 - share), 2))
        values[name] = picked[key]
        behind.update(
            w for shot, shared in voters if shot.answer.get(name) == picked[key] for w in shared
        )
    if not values:
        return None
    return Learned(values=values, confidence=min(confidences), words=tuple(sorted(behind)))


def _field_names(schema: Mapping[str, Any]) -> set[str] | None:
    """The top-level property names of a JSON schema (None when it declares none)."""
    properties = schema.get("properties")
    return set(properties) if isinstance(properties, Mapping) else None


def _learned_rationale(learned: Learned, ruled: str | None) -> str:
    shown = ", ".join(f"{name}={value}" for name, value in learned.values.items())
    words = ", ".join(repr(w) for w in learned.words[:3])
    sentence = f"Earlier examples sharing {words} were answered with {shown}."
    return f"{ruled} {sentence}" if ruled else sentence


def complete(
    body: Mapping[str, Any],
    *,
    rules: Rules,
    force_confidence: float | None = None,
    fault: str | None = None,
) -> dict[str, Any]:
    """The full `chat.completion` reply to a validated request body.

    A tool-loop request (tools plus a `final_result` answer tool, see
    `agents.modelserver.tools`) gets the calls its rules name, or, when none is left, the
    answer as a `final_result` call, steered by the user's text and the tool results.

    Args:
        body: The request JSON (needs `model` and `messages`).
        rules: Steering rules matched against the last user message.
        force_confidence: Value forced into any `confidence` field (and tool parameter).
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
    loop = tool_loop(body)
    if loop is None:
        target = find_target(body)
        schema_name = target.name or (target.schema or {}).get("title")
    else:
        target = Target(mode="tools", schema=dict(loop.answer_schema), name=ANSWER_TOOL)
        schema_name = loop.answer_schema.get("title") or ANSWER_TOOL
    seed = request_seed(body, target)
    user_text = last_user_text(messages)
    calls: list[tuple[str, Any]] = []
    if loop is not None:
        calls = next_calls(
            loop, rules, user_text, schema=schema_name, force_confidence=force_confidence
        )
    if calls and loop is not None:
        arguments = [
            _content_fault(value, loop.offered[name], fault, fenced=False) for name, value in calls
        ]
        names = [name for name, _ in calls]
        text = "\n".join(arguments)
    elif target.mode == "text":
        text = plain_reply(user_text)
        if fault == "malformed":
            text = json.dumps({"answer": text})[: len(text) // 2 + 1]
    else:
        steer_text = user_text
        if loop is not None and loop.results_text():
            steer_text = f"{user_text}\n{loop.results_text()}"
        match = rules.match(steer_text, schema=schema_name)
        schema = target.schema if target.schema is not None else GENERIC_JSON_SCHEMA
        fields = _field_names(schema)
        values, rationale = dict(match.values), match.rationale(fields=fields)
        if loop is not None and loop.consulted():
            consulted = ", ".join(loop.consulted())
            rationale = f"{rationale or ''} It used the results of {consulted}.".strip()
        shots = few_shot_examples(messages)
        if shots and fields:
            # Rules keep precedence: a field any rule set (a keyword, or a catch-all default
            # such as urgency=normal) keeps the rules' value and confidence.
            open_fields = [name for name in sorted(fields) if name not in match.values]
            learned = example_answer(user_text, shots, open_fields)
            if learned is not None:
                values.update(learned.values)
                values.setdefault("confidence", learned.confidence)
                rationale = _learned_rationale(learned, rationale)
        steering = Steering(
            values=values,
            force_confidence=force_confidence,
            rationale=rationale,
            context=user_text,
        )
        value = generate(schema, seed=seed, steering=steering)
        text = _content_fault(value, schema, fault, fenced=target.fenced)
        arguments, names = [text], [target.name or "answer"]
    message: dict[str, Any]
    if target.mode == "tools":
        message = {
            "role": "assistant",
            "content": None,
            "refusal": None,
            "tool_calls": [
                {
                    "id": _call_id(seed, index, len(names)),
                    "type": "function",
                    "function": {"name": name, "arguments": argument},
                }
                for index, (name, argument) in enumerate(zip(names, arguments, strict=True))
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


def _content_fault(
    value: Any, schema: Mapping[str, Any], fault: str | None, *, fenced: bool
) -> str:
    """`value` as JSON text, broken as the content fault says (and fenced for MD_JSON)."""
    if fault == "schema_invalid":
        value = break_required(value, schema)
    text = json.dumps(value, ensure_ascii=False)
    if fault == "malformed":
        text = text[: max(1, len(text) // 2)]
    return f"```json\n{text}\n```" if fenced else text


def _call_id(seed: str, index: int, count: int) -> str:
    """The id of a reply's tool call `index`: `call_<hex>`, unique per request and call."""
    if count == 1:
        return f"call_{seed[:24]}"  # the id single answers have always had
    return f"call_{hashlib.sha256(f'{seed}|{index}'.encode()).hexdigest()[:24]}"
