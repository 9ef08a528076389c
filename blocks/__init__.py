"""Prefect blocks Stalwart registers: `PYTHONPATH=. prefect block register -m blocks`.

- `SQLResultStorage` keeps step results in the state database (the `step_result` table), so
  Prefect's caching works across processes and workers without local result files.
- `ModelEndpoint`, `StateDatabase` and `SentryConfig` hold the model endpoint, the state database
  URL and the Sentry DSN with their secrets; `STALWART_MODEL_BLOCK`, `STALWART_DATABASE_BLOCK`
  and `STALWART_SENTRY_BLOCK` select a saved one by name (see `agents.blocks`).

Example:
    >>> from blocks import ModelEndpoint
    >>> ModelEndpoint.get_block_type_slug()
    'stalwart-model-endpoint'
"""

from agents.blocks import ModelEndpoint, SentryConfig, StateDatabase
from agents.store.results import SQLResultStorage

__all__ = ["ModelEndpoint", "SQLResultStorage", "SentryConfig", "StateDatabase"]
