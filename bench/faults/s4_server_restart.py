"""Scenario 4: the Prefect server process is stopped by PID mid-batch and started again on the
same port and database a few seconds later. Nothing lost, nothing done twice.

    python bench/faults/s4_server_restart.py [--short] [--runs N]

Flow runs keep running while the API is away (their Prefect client retries), workers keep
polling; a flow run that dies anyway is re-submitted by the operator once the API is back, and
its rerun takes finished steps from the results cache and actions from the ledger.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import (
    Fault,
    Stack,
    batches_for,
    run_w1,
    scenario_main,
    stack_for,
)
from bench.faults.report import ScenarioResult

NAME = "4 Prefect server restart"


class RestartServer(Fault):
    """Stop the Prefect server process (SIGTERM by PID), stay down `hold_s`, start it again."""

    name = "Prefect server restart"
    hold_s = 5.0

    def inject(self, stack: Stack) -> None:
        stack.server.stop_process()

    def clear(self, stack: Stack) -> None:
        stack.server.start_process()


def run(
    short: bool = False, *, runs: int | None = None, stack: Stack | None = None
) -> ScenarioResult:
    """Run W1 (or its short version) and restart the Prefect server once 30% of it is done.

    Example:
        >>> run(short=True).lost  # doctest: +SKIP
        0
    """
    fault = RestartServer()
    with stack_for(stack) as s:
        outcome = run_w1(s, fault=fault, at=0.3, short=short, batches=batches_for(short, runs))
    return outcome.result(NAME, extra=f"down {fault.hold_s:g} s")


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
