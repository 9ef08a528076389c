"""Prefect blocks Stalwart registers: `PYTHONPATH=. prefect block register -m blocks`.

`SQLResultStorage` keeps step results in the state database (the `step_result` table), so
Prefect's caching works across processes and workers without local result files.
"""

from agents.store.results import SQLResultStorage

__all__ = ["SQLResultStorage"]
