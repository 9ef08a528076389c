"""How the bundled model server answers ticket-triage's bundled tickets, worked out from its
steering rules and the agent's own prompt (not from a run), so tests of the demo can say which
runs must end `awaiting_review` (both models unsure) or `held` (an action refused)."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from typing import Any

from agents.modelserver.rules import Rules
from flows.ticket_triage import ACTIONS, SAMPLE_INPUTS, THRESHOLD, Routing, Ticket, route


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


def steered(line: dict[str, Any]) -> dict[str, Any]:
    """The field values the bundled rules give the `route` step's prompt for one line's
    ticket (the same for every model, so for the fallback model too).

    The prompt is built by the step itself, for a first ticket: the history sentences of a
    repeat customer's prompt (`... went to the Finance team.`) match only rules listed after
    the ones for vague tickets and injections, so they never change these values.
    """
    raw = line["raw"]
    llm = _Prompt()
    ticket = Ticket(
        id=raw["id"], subject_line=raw["subject"], body=raw["body"], customer=raw["customer"]
    )
    route(ticket, llm)  # type: ignore[arg-type]
    return dict(_rules().match(llm.text, schema="Routing").values)


def unsure(lines: Iterable[dict[str, Any]]) -> set[str]:
    """The ids of the tickets the rules answer below the step's threshold: both models are
    unsure, so the ladder asks a person (the run ends `awaiting_review`)."""
    found = set()
    for line in lines:
        confidence = steered(line).get("confidence")
        if confidence is not None and confidence < THRESHOLD:
            found.add(line["raw"]["id"])
    return found


def refused(lines: Iterable[dict[str, Any]]) -> set[str]:
    """The ids of the tickets the rules answer with an action the agent does not allow (the
    model obeyed an injection): the run ends `held`."""
    return {line["raw"]["id"] for line in lines if steered(line).get("action") not in ACTIONS}
