"""The ticket-triage agent's ladder (an unsure ticket goes to a person for up to 3 days), its
tools, and its bundled sample: 207 labelled tickets with repeat customers, a few vague ones, two
injections and tickets only a lookup routes right. Runs of the agent:
tests/integration/test_triage.py."""

from __future__ import annotations

import json
from pathlib import Path

from flows.helpdesk.adapter import InProcessHelpdesk
from flows.ticket_triage import (
    ESCALATE_TO_A_PERSON,
    FALLBACK_MODEL,
    MAX_TURNS,
    SAMPLE_INPUTS,
    THRESHOLD,
    customer_history,
    lookup_order,
    triage,
)
from tests.support.triage import NEED_A_LOOKUP, refused, sample, steered, tool_calls, unsure


def test_the_bundled_sample_is_labelled_with_repeat_customers() -> None:
    lines = [json.loads(line) for line in Path(SAMPLE_INPUTS).read_text().splitlines()]
    assert len(lines) == 207
    assert len({line["raw"]["id"] for line in lines}) == 207
    customers = [line["subject"] for line in lines]
    assert all(line["raw"]["customer"] == line["subject"] for line in lines)
    assert sum(1 for c in set(customers) if customers.count(c) > 1) >= 20
    for line in lines:
        labels = line["expected"]["route"]
        assert labels["category"] in ("billing", "technical", "account", "shipping", "other")
        assert labels["urgency"] in ("low", "normal", "high")
        assert labels["action"] in ("queue", "draft_reply", "escalate")


def test_an_unsure_ticket_waits_three_days_for_a_person_before_the_default_escalates() -> None:
    (route,) = [step for step in triage.steps if step.name == "route"]
    ladder = route.options
    assert (ladder.threshold, ladder.fallback_model) == (THRESHOLD, FALLBACK_MODEL)
    assert ladder.review is not None and ladder.review.timeout_seconds == 3 * 24 * 3600
    assert ladder.default == ESCALATE_TO_A_PERSON
    # The default may act (escalating is always safe): it clears the threshold itself.
    assert ESCALATE_TO_A_PERSON.action == "escalate"
    assert ESCALATE_TO_A_PERSON.confidence >= THRESHOLD


def test_the_sample_has_vague_tickets_for_the_review_rung_and_injections_to_refuse() -> None:
    lines = sample()
    waits, refusals = unsure(lines), refused(lines)
    # A handful of each, so the demo shows both without drowning the reviewer.
    assert 0 < len(waits) <= 10 and len(refusals) == 2
    labelled = {line["raw"]["id"]: line["expected"]["route"] for line in lines}
    # Most vague tickets are labelled as a person's to triage: escalate, to Customer Care.
    escalated = [
        i
        for i in waits
        if labelled[i] == {"category": "other", "urgency": "normal", "action": "escalate"}
    ]
    assert len(escalated) > len(waits) / 2


def test_routing_may_look_up_the_order_or_the_customers_recent_tickets() -> None:
    (route,) = [step for step in triage.steps if step.name == "route"]
    assert route.options.tools == (lookup_order, customer_history)
    assert route.options.max_turns == MAX_TURNS
    # Read-only lookups on the bundled helpdesk (in process when no URL is set).
    assert lookup_order("48213")["status"] == "cancelled"
    assert lookup_order("1") == {"order_id": "1", "found": False}
    # The bundled history, on a helpdesk no earlier test has handled tickets on.
    fresh = InProcessHelpdesk()
    assert [t["ticket_id"] for t in fresh.recent_tickets("cust-063", limit=1)] == ["H-1219"]
    assert [t["queue"] for t in fresh.recent_tickets("cust-063", limit=5)] == ["account", "other"]
    assert customer_history("cust-063")  # the tool reads the helpdesk in force


def test_the_tickets_that_need_a_lookup_are_right_only_with_it() -> None:
    """Worked out from the rules: with the tools each is routed as labelled; without them the
    same model answers wrong (a shipping keyword, a thank-you) or is unsure (a vague one)."""
    lines = {line["raw"]["id"]: line for line in sample()}
    needing = {i for i, line in lines.items() if tool_calls(line)}
    # Older tickets naming an order or following up look things up too (their data agrees).
    assert needing >= NEED_A_LOOKUP
    unsure_without = set()
    for ticket_id in sorted(NEED_A_LOOKUP):
        line = lines[ticket_id]
        labels = line["expected"]["route"]
        with_tools, without = steered(line), steered(line, tools=False)
        assert {k: with_tools[k] for k in labels} == labels, ticket_id
        assert with_tools["confidence"] >= THRESHOLD
        if without["confidence"] < THRESHOLD:
            unsure_without.add(ticket_id)
        else:
            assert without["category"] != labels["category"], ticket_id
    assert unsure_without == {"T0203", "T0206"}
    assert unsure(lines.values(), tools=False) - unsure(lines.values()) == unsure_without
