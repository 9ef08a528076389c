"""The ticket-triage agent's ladder (an unsure ticket goes to a person for up to 3 days) and its
bundled sample: 200 labelled tickets with repeat customers, a few vague ones and two injections.
Runs of the agent: tests/integration/test_triage.py."""

from __future__ import annotations

import json
from pathlib import Path

from flows.ticket_triage import (
    ESCALATE_TO_A_PERSON,
    FALLBACK_MODEL,
    SAMPLE_INPUTS,
    THRESHOLD,
    triage,
)
from tests.support.triage import refused, sample, unsure


def test_the_bundled_sample_is_labelled_with_repeat_customers() -> None:
    lines = [json.loads(line) for line in Path(SAMPLE_INPUTS).read_text().splitlines()]
    assert len(lines) == 200
    assert len({line["raw"]["id"] for line in lines}) == 200
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
