"""Scenario 5, part D: coverage-guided fuzzing of the input loader's line parser with atheris.

    python bench/faults/fuzz_loader_atheris.py -runs=20000 -max_len=4096

Every input is one line of an input file. `agents.cli._run.parse_line` must either reject it
with a reason or return an input that can travel in a batch (valid Unicode, nesting within
`MAX_NESTING`, JSON-serialisable, within the parameter budget). Anything else (an exception, an
unsafe input let through) is a crash, which atheris reports with the input that caused it.
atheris is optional (`pip install atheris`); `s5_hostile_input.py` runs this file when it is
installed and says so when it is not.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

MAX_BYTES = 4096


def check(data: bytes, compiled: Any) -> None:
    """The property for one line; raises AssertionError when it does not hold.

    Example:
        >>> check(b"not json", compiled)  # doctest: +SKIP
    """
    from agents.cli._run import Rejected, parse_line
    from agents.inputs import BATCH_PARAMETER_BYTES, input_problem

    parsed = parse_line(1, data, compiled, MAX_BYTES)
    if isinstance(parsed, Rejected):
        assert parsed.error, "rejected without a reason"
        return
    text = json.dumps(parsed)
    text.encode("utf-8")
    assert input_problem(parsed) is None
    assert len(text) <= BATCH_PARAMETER_BYTES


def main() -> None:
    """Run atheris over `check` (libFuzzer arguments from the command line)."""
    import atheris

    from agents import _inputs
    from agents.cli import _run
    from flows.ticket_triage import triage

    # Instrument only the loader's own functions: instrumenting every import (Prefect, pydantic,
    # ...) takes minutes before the first input.
    for name in ("input_problem", "_surrogate_at", "parameter_bytes"):
        setattr(_inputs, name, atheris.instrument_func(getattr(_inputs, name)))
    _run.parse_line = atheris.instrument_func(_run.parse_line)  # type: ignore[assignment]
    _run.input_problem = _inputs.input_problem  # the loader's own reference to it
    compiled = triage.compile()
    atheris.Setup(sys.argv, lambda data: check(data, compiled))
    atheris.Fuzz()


if __name__ == "__main__":
    main()
