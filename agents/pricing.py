"""Model pricing: what a model call costs in USD.

This module owns the price lookup: the price table in settings (`STALWART_MODEL_PRICES`, USD per
1,000 tokens `(input, output)` per model name) and the prices of the `STALWART_MODEL_BLOCK`
block, which win for that block's model.

Example:
    >>> from agents.settings import temporary_settings
    >>> with temporary_settings(model_prices={"gpt-4o": (0.0025, 0.01)}):
    ...     round(cost_of("gpt-4o", 2000, 500), 6)
    0.01
"""

from __future__ import annotations

from agents.settings import get_current_settings

__all__ = ["cost_of"]


def cost_of(model: str | None, tokens_in: int, tokens_out: int) -> float:
    """What a model call cost in USD, from the price table in settings (`model_prices`) and the
    prices of the `STALWART_MODEL_BLOCK` block, which win for that block's model.

    Prices are USD per 1,000 tokens, `(input, output)`, per model name
    (`STALWART_MODEL_PRICES='{"gpt-4o": [0.0025, 0.01]}'`). An unknown model (or None) costs 0.0;
    negative token counts count as 0.

    Args:
        model: the model name as sent to the endpoint.
        tokens_in: prompt tokens.
        tokens_out: completion tokens.

    Example:
        >>> from agents.settings import temporary_settings
        >>> with temporary_settings(model_prices={"gpt-4o": (0.0025, 0.01)}):
        ...     round(cost_of("gpt-4o", 2000, 500), 6)
        0.01
        >>> cost_of("unknown-model", 2000, 500)
        0.0
    """
    if model is None:
        return 0.0
    settings = get_current_settings()
    prices = settings.model_prices.get(model)
    if settings.model_block:
        # Imported here: Prefect's block machinery is needed only when a block is named.
        from agents.blocks import model_block

        block = model_block()
        if block is not None:
            prices = block.prices().get(model, prices)
    if prices is None:
        return 0.0
    price_in, price_out = prices
    return (max(tokens_in, 0) * price_in + max(tokens_out, 0) * price_out) / 1000.0
