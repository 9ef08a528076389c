"""The start-up heap is frozen once per process, at its first batch (agents.execution.heap)."""

from __future__ import annotations

import subprocess
import sys


def test_the_first_batch_freezes_the_heap_once() -> None:
    """In a fresh process: nothing frozen before the first batch, the heap as it stood frozen
    by it, and a second batch freezes nothing more (its own objects stay collectable)."""
    script = """
import gc
from agents.execution.heap import freeze_startup_heap
assert gc.get_freeze_count() == 0
freeze_startup_heap()
first = gc.get_freeze_count()
junk = [[i] for i in range(1000)]
freeze_startup_heap()
print(first, gc.get_freeze_count())
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    ).stdout.split()
    first, second = int(out[0]), int(out[1])
    assert first > 10_000  # the imported modules and their objects
    assert second == first
