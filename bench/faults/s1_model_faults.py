"""Scenario 1: 30% of model calls fail (429 with Retry-After, 500, timeout, dropped connection,
malformed output) during W1. Nothing may be lost or done twice; the table's notes say how many
decisions fell back (fallback model or the safe default).

    python bench/faults/s1_model_faults.py [--short] [--runs N]

The faults are drawn by the model server per request from a seeded RNG for the whole pass; the
workers' model timeout is 3 s and a `timeout` fault stalls 6 s, so it really times out. What
holds it together: the LLM layer's retries with backoff and Retry-After, instructor's re-asks of
malformed output, the step's retries, the shared circuit breaker, and the ladder's safe default.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import Stack, batches_for, run_w1, scenario_main, stack_for
from bench.faults.report import ScenarioResult

NAME = "1 model faults (30%)"
KINDS = ["429", "500", "timeout", "drop", "malformed"]
FALLBACK_PATHS = ("fallback_model", "human", "awaiting_review", "default")


def run(
    short: bool = False, *, runs: int | None = None, stack: Stack | None = None
) -> ScenarioResult:
    """Run W1 (or its short version) with 30% of model calls failing.

    Example:
        >>> run(short=True).lost  # doctest: +SKIP
        0
    """
    with stack_for(stack) as s:
        s.model.faults.update(
            error_rate=0.3, error_kinds=KINDS, retry_after_s=1.0, timeout_sleep_s=6.0, seed=7
        )
        faults_before = s.model.stats.snapshot()["faults_by_kind"]
        try:
            outcome = run_w1(s, short=short, batches=batches_for(short, runs))
        finally:
            s.model.faults.update(error_rate=0.0)
        after = s.model.stats.snapshot()["faults_by_kind"]
    injected = {k: after.get(k, 0) - faults_before.get(k, 0) for k in KINDS}
    # "rejected" is the policy refusing an action (a prompt injection), not a fallback.
    fell_back = sum(n for path, n in outcome.fallbacks.items() if path in FALLBACK_PATHS)
    failures = []
    if sum(injected.values()) == 0:
        failures.append("no fault was injected")
    extra = (
        f"{sum(injected.values())} faults injected "
        f"({', '.join(f'{k}: {n}' for k, n in injected.items())}); "
        f"{fell_back} decisions fell back ({_paths(outcome.fallbacks)})"
    )
    return outcome.result(NAME, failures, extra)


def _paths(paths: dict[str, int]) -> str:
    found = ", ".join(f"{p}: {n}" for p, n in sorted(paths.items()) if p in FALLBACK_PATHS)
    refused = paths.get("rejected", 0)
    return (found or "none") + (f"; {refused} actions refused by policy" if refused else "")


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
