"""The simulated helpdesk and its adapter: one effect per idempotency key, re-deliveries counted,
a lost answer retried under the same key without a second effect, the read-only lookups (an
order, a customer's recent tickets) alike in process and over HTTP, and the adapter chosen from
`STALWART_HELPDESK_URL`."""

from __future__ import annotations

import pytest

from flows.helpdesk import (
    HelpdeskError,
    HttpHelpdesk,
    InProcessHelpdesk,
    SimulatedHelpdesk,
    current_helpdesk,
)


def test_a_key_takes_effect_once_and_repeats_are_counted_as_redeliveries() -> None:
    with SimulatedHelpdesk() as desk:
        adapter = desk.adapter()
        first = adapter.deliver({"ticket_id": "T1", "action": "queue"}, idempotency_key="k1")
        again = adapter.deliver({"ticket_id": "T1", "action": "queue"}, idempotency_key="k1")
        other = adapter.deliver({"ticket_id": "T2", "action": "escalate"}, idempotency_key="k2")
        summary = desk.state.summary()
    assert first["effect"] and not again["effect"] and other["effect"]
    assert again["receipt_id"] == first["receipt_id"]
    assert (summary.deliveries, summary.keys, summary.effects) == (3, 2, 2)
    assert (summary.redeliveries, summary.duplicate_tickets) == (1, 0)


def test_two_keys_for_one_ticket_are_a_duplicate_action() -> None:
    # What unstable keys would do: the same ticket acted on twice.
    with SimulatedHelpdesk() as desk:
        desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k1")
        desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k1-rerun")
        assert desk.state.summary().duplicate_tickets == 1
        assert desk.state.effects_by_ticket() == {"T1": 2}


def test_a_lost_answer_raises_and_the_retry_under_the_same_key_does_not_act_again() -> None:
    with SimulatedHelpdesk() as desk:
        desk.state.lose_next = 1
        with pytest.raises(HelpdeskError, match="503"):
            desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k1")
        retry = desk.adapter().deliver({"ticket_id": "T1"}, idempotency_key="k1")
        assert retry["effect"] is False
        assert desk.state.summary().effects == 1


def test_the_adapter_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STALWART_HELPDESK_URL", raising=False)
    assert isinstance(current_helpdesk(), InProcessHelpdesk)
    monkeypatch.setenv("STALWART_HELPDESK_URL", "http://127.0.0.1:9/")
    chosen = current_helpdesk()
    assert isinstance(chosen, HttpHelpdesk) and chosen.base_url == "http://127.0.0.1:9"
    with pytest.raises(HelpdeskError, match="no answer"):
        chosen.deliver({"ticket_id": "T1"}, idempotency_key="k")


def test_the_lookups_read_the_same_over_http_as_in_process_and_change_nothing() -> None:
    in_process = InProcessHelpdesk()
    action = {"ticket_id": "T9", "action": "queue", "queue": "billing", "customer": "cust-061"}
    in_process.deliver(action, idempotency_key="k9")
    with SimulatedHelpdesk() as desk:
        http = desk.adapter()
        http.deliver(action, idempotency_key="k9")
        before = desk.state.summary()
        for adapter in (in_process, http):
            assert adapter.order("48213") == adapter.order("#48213")
            assert adapter.order("48213")["status"] == "cancelled"
            assert adapter.order("99999") is None  # a 404 over HTTP
            recent = adapter.recent_tickets("cust-061")
            # The ticket it handled first (newest), then the bundled history.
            assert [t["ticket_id"] for t in recent] == ["T9", "H-1187"]
            assert recent[0] == {
                "ticket_id": "T9",
                "queue": "billing",
                "action": "queue",
                "status": "handled",
            }
            assert adapter.recent_tickets("cust-061", limit=1) == recent[:1]
            assert adapter.recent_tickets("nobody") == []
        assert http.order("48213") == in_process.order("48213")
        assert desk.state.summary() == before  # reading delivered nothing


def test_a_lookup_on_an_unreachable_helpdesk_raises() -> None:
    unreachable = HttpHelpdesk("http://127.0.0.1:9")
    with pytest.raises(HelpdeskError, match="no answer"):
        unreachable.order("48213")
    with pytest.raises(HelpdeskError, match="no answer"):
        unreachable.recent_tickets("cust-061")
