"""The ticket-triage agent's bundled sample: 200 labelled tickets with repeat customers. Runs of
the agent: tests/integration/test_triage.py."""

from __future__ import annotations

import json
from pathlib import Path

from flows.ticket_triage import SAMPLE_INPUTS


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
