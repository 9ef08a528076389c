"""Tests of payment requests."""

import gateway


def test_mask() -> None:
    assert gateway.mask("4242424242424242") == "************4242"


def test_amount_whole() -> None:
    assert gateway.amount_in_cents("12.00") == 1200


def test_amount_cents() -> None:
    assert gateway.amount_in_cents("0.29") == 29


def test_mask_short() -> None:
    assert gateway.mask("1234") == "1234"


def test_charge_sandbox() -> None:
    key = gateway.api_key()
    assert key.startswith("sk_test_")
