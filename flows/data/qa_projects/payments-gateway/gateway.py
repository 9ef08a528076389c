"""Card payment requests."""

import os


def amount_in_cents(amount: str) -> int:
    """'12.34' as 1234 (the bug: float arithmetic truncates 0.29 to 28 cents)."""
    return int(float(amount) * 100)


def mask(card: str) -> str:
    return "*" * (len(card) - 4) + card[-4:]


def api_key() -> str:
    return os.environ["PAYMENTS_API_KEY"]
