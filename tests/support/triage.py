"""How the bundled model server answers ticket-triage's bundled tickets, worked out from its
steering rules, the agent's own prompt and tools, and the bundled helpdesk data (not from a
run), so tests of the demo can say which runs must end `awaiting_review` (both models unsure) or
`held` (an action refused), with the agent's tools or without them."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from agents.declare.tool import Tool
from agents.modelserver.rules import Rules
from agents.modelserver.tools import MadeCall, ToolLoop, next_calls
from agents.resources.toolloop import as_text
from flows.helpdesk import InProcessHelpdesk
from flows.ticket_triage import (
    ACTIONS,
    MAX_TURNS,
    SAMPLE_INPUTS,
    THRESHOLD,
    Routing,
    Ticket,
    customer_history,
    lookup_order,
    route,
)

#: The sample's tickets that need a lookup: the order's data or the customer's recent tickets.
NEED_A_LOOKUP = frozenset(f"T020{n}" for n in range(1, 8))


class _Prompt:
    """Stands in for `llm` in a direct call of the `route` step: keeps the prompt it gets."""

    text = ""

    def decide(self, model: type[Routing], prompt: str, **_: Any) -> Routing:
        self.text = prompt
        return Routing(category="other", urgency="normal", confidence=1.0, rationale="-")


@functools.cache
def _rules() -> Rules:
    return Rules.default()


def sample() -> list[dict[str, Any]]:
    """The bundled sample's lines, labels included."""
    return [json.loads(line) for line in SAMPLE_INPUTS.read_text().splitlines()]


def prompt(line: dict[str, Any]) -> str:
    """The `route` step's prompt for one line's ticket, as a first ticket of its customer."""
    raw = line["raw"]
    llm = _Prompt()
    ticket = Ticket(
        id=raw["id"], subject_line=raw["subject"], body=raw["body"], customer=raw["customer"]
    )
    route(ticket, llm)  # type: ignore[arg-type]
    return llm.text


def tool_calls(line: dict[str, Any]) -> list[tuple[str, Any, str]]:
    """The tool calls the bundled model makes for one line's ticket, turn by turn, with the
    results a fresh in-process helpdesk (the bundled data only) gives: (tool, arguments,
    result as the model reads it)."""
    desk = InProcessHelpdesk()
    run = {
        "lookup_order": lambda order_id: (
            desk.order(order_id) or {"order_id": order_id, "found": False}
        ),
        "customer_history": lambda customer, limit=1: desk.recent_tickets(customer, limit=limit),
    }
    offered = {
        t.name: t.schema()["parameters"] for t in map(Tool.of, (lookup_order, customer_history))
    }
    text = prompt(line)
    made: list[MadeCall] = []
    for turn in range(1, MAX_TURNS):
        loop = ToolLoop(offered=offered, answer_schema={}, made=tuple(made), turns=turn - 1)
        calls = next_calls(loop, _rules(), text, schema="Routing")
        if not calls:
            break
        for name, arguments in calls:
            made.append(MadeCall(name, arguments, as_text(run[name](**arguments)), False))
    return [(c.name, c.arguments, c.result or "") for c in made]


def steered(line: dict[str, Any], *, tools: bool = True) -> dict[str, Any]:
    """The field values the bundled rules give the `route` step's answer for one line's
    ticket (the same for every model, so for the fallback model too): read from the prompt
    and, with tools, the tool results (`tool_calls`).

    The prompt is built by the step itself, for a first ticket: the history sentences of a
    repeat customer's prompt (`... went to the Finance team.`) match only rules listed after
    the ones for vague tickets and injections, so they never change these values. Nor do the
    tickets a helpdesk handled during a run (their queue names set a category at 0.9 or more,
    never a low confidence).
    """
    text = prompt(line)
    if tools:
        results = [result for _, _, result in tool_calls(line)]
        text = "\n".join([text, *results])
    return dict(_rules().match(text, schema="Routing").values)


def unsure(lines: Iterable[dict[str, Any]], *, tools: bool = True) -> set[str]:
    """The ids of the tickets the rules answer below the step's threshold: both models are
    unsure, so the ladder asks a person (the run ends `awaiting_review`)."""
    found = set()
    for line in lines:
        confidence = steered(line, tools=tools).get("confidence")
        if confidence is not None and confidence < THRESHOLD:
            found.add(line["raw"]["id"])
    return found


def refused(lines: Iterable[dict[str, Any]], *, tools: bool = True) -> set[str]:
    """The ids of the tickets the rules answer with an action the agent does not allow (the
    model obeyed an injection): the run ends `held`."""
    return {
        line["raw"]["id"]
        for line in lines
        if steered(line, tools=tools).get("action") not in ACTIONS
    }
