"""Where step and tool results persist: the SQL result storage block (saved once per Prefect API
and process) and the cache policy that keys them on what the runtime computed."""

from __future__ import annotations

import asyncio
import weakref
from dataclasses import dataclass
from typing import Any

from prefect.cache_policies import CachePolicy
from prefect.context import TaskRunContext

from agents.settings import get_current_settings
from agents.store.results import SQLResultStorage

__all__ = ["ComputedKey", "result_storage"]


@dataclass
class ComputedKey(CachePolicy):
    """Cache on the key the runtime computed, passed in the task's `parameter` argument: a
    string, or an object with a `cache_key` (a `StepCall`). Prefect hashes nothing itself, so
    the key is exactly Stalwart's (a step's leaves the run id out: a rerun hits the cache)."""

    parameter: str = "key"

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        value = inputs.get(self.parameter)
        key = getattr(value, "cache_key", value)
        return key if isinstance(key, str) else None


_storages: dict[tuple[str, str], SQLResultStorage] = {}
_storage_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


async def result_storage() -> SQLResultStorage:
    """The SQL result storage block, saved once per Prefect API and process."""
    from prefect.settings import PREFECT_API_URL

    name = get_current_settings().result_storage_block
    key = (str(PREFECT_API_URL.value() or "ephemeral"), name)
    loop = asyncio.get_running_loop()
    lock = _storage_locks.get(loop)
    if lock is None:
        lock = _storage_locks[loop] = asyncio.Lock()
    # Concurrent first batches (one per tenant) would both register the block type: 409.
    async with lock:
        storage = _storages.get(key)
        if storage is None:
            storage = SQLResultStorage()
            await _save_block(storage, name)
            _storages[key] = storage
    return storage


async def _save_block(block: SQLResultStorage, name: str, attempts: int = 5) -> None:
    """Save the block, retrying when another process registers its type or schema first.

    Flow runs starting at once on a fresh server (one worker process each) all try to create
    the block type; the losers get 409 `ObjectAlreadyExists` and succeed on the next try.
    """
    from prefect.exceptions import ObjectAlreadyExists

    for attempt in range(attempts):
        try:
            await block.save(name, overwrite=True)
            return
        except ObjectAlreadyExists:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))
