"""Stock levels per warehouse."""

import os


def reserve(levels: dict[str, int], sku: str, qty: int) -> dict[str, int]:
    """Levels after reserving `qty` of `sku`; refuses to go below zero."""
    if levels.get(sku, 0) < qty:
        raise ValueError(f"not enough {sku}")
    return {**levels, sku: levels[sku] - qty}


def database_url() -> str:
    """Where the stock database lives (set by the deployment)."""
    return os.environ["INVENTORY_DATABASE_URL"]
