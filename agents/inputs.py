"""What makes one input unsafe to send through a batch, and how batches are cut to fit.

A batch's inputs travel as one flow run's parameters: Prefect encodes them as JSON and refuses
more than 512 KiB. One bad input (a lone surrogate, nesting Prefect cannot serialise, a
megabyte of text) would then fail every input of its batch, so `AgentRunner.arun_batch`
screens each input here first (a failed `RunResult` for that one alone) and cuts the rest into
flow runs that fit; the CLI's loader rejects the same lines into its quarantine file.

Example:
    >>> input_problem({"raw": {"body": "fine"}}) is None
    True
    >>> [len(b) for b in batches([{"a": "x" * 40}] * 5, budget=100)]
    [2, 2, 1]
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["BATCH_PARAMETER_BYTES", "MAX_NESTING", "batches", "input_problem", "parameter_bytes"]

#: Deepest nesting of objects and arrays accepted in one input line. Prefect serialises a
#: batch's inputs as flow-run parameters and fails the whole batch somewhere between 200 and 300
#: levels, so one deep line must be rejected alone, not take its neighbours down.
MAX_NESTING = 64
#: Largest serialised input (bytes of compact, ASCII-escaped JSON, as Prefect measures it) and
#: largest batch: Prefect refuses a flow run whose parameters exceed 512 KiB, which would fail
#: every line of the batch. Batches are cut below this; a bigger line is rejected.
BATCH_PARAMETER_BYTES = 400_000
#: Run inputs that become identifiers in the state database (text columns: no NUL there).
_IDENTIFIER_KEYS = ("subject", "run_key")


def input_problem(item: Any) -> str | None:
    """Why a parsed input cannot travel through a batch safely, or None when it can.

    Rejected: nesting deeper than `MAX_NESTING`, text that is not valid Unicode (a lone
    surrogate from a `\\ud800` escape: nothing can encode it, and Prefect fails the whole batch
    on it), a NUL in `subject` or `run_key` (identifiers in text columns), and an input bigger
    than `BATCH_PARAMETER_BYTES` once serialised.

    Example:
        >>> input_problem({"raw": {"body": "fine"}}) is None
        True
        >>> input_problem({"raw": "\\ud800"})
        'text at raw is not valid Unicode (a lone surrogate at character 0)'
    """
    # Iterative walk: a recursive one would itself overflow on the inputs it must reject.
    stack: list[tuple[Any, str, int]] = [(item, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels at {where or 'the top'}"
        if isinstance(value, dict):
            for key, child in value.items():
                stack.append((key, where, depth + 1))
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(value))
        elif isinstance(value, str):
            bad = _surrogate_at(value)
            if bad is not None:
                return (
                    f"text at {where or 'the top'} is not valid Unicode "
                    f"(a lone surrogate at character {bad})"
                )
    for key in _IDENTIFIER_KEYS:
        if isinstance(item.get(key), str) and "\x00" in item[key]:
            return f"input '{key}' contains a NUL character"
    size = parameter_bytes(item)
    if size > BATCH_PARAMETER_BYTES:
        return (
            f"input is {size} bytes as a flow-run parameter, over {BATCH_PARAMETER_BYTES} "
            "(Prefect refuses flow runs with more than 512 KiB of parameters)"
        )
    return None


def _surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def parameter_bytes(item: Any) -> int:
    """The size Prefect gives `item` as a flow-run parameter (compact JSON, ASCII-escaped).

    Example:
        >>> parameter_bytes({"a": "é"})
        14
    """
    return len(json.dumps(item, separators=(",", ":")))


def batches(
    items: list[dict[str, Any]], budget: int = BATCH_PARAMETER_BYTES
) -> list[list[dict[str, Any]]]:
    """Cut `items` into consecutive batches whose parameters stay within `budget` bytes.

    Order is kept; an item bigger than the budget gets a batch of its own (the loader has
    already rejected those).

    Example:
        >>> [len(b) for b in batches([{"a": "x" * 40}] * 5, budget=100)]
        [2, 2, 1]
    """
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    used = 0
    for item in items:
        size = parameter_bytes(item) + 1  # the comma between list items
        if current and used + size > budget:
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        out.append(current)
    return out
