"""Money arithmetic for invoices."""


def add_tax(amount: float, rate: float) -> float:
    """Amount with tax, rounded to cents."""
    return round(amount * (1 + rate), 2)


def split(amount_cents: int, parts: int) -> list[int]:
    """Split cents into `parts` shares that add up exactly."""
    base, extra = divmod(amount_cents, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def round_half_up(value: float, digits: int) -> float:
    """Round half up, as invoices must (the bug: `round` rounds half to even)."""
    return round(value, digits)


def convert(amount: float, rate: float) -> float:
    return round(amount * rate, 2)
