"""Scenario 2: one of the two workers is SIGKILLed mid-batch with its flow-run processes (a lost
machine) and started again. No run lost, no action repeated, and no more model calls re-made than
were in flight at the model server at the kill.

    python bench/faults/s2_worker_kill.py [--short] [--runs N]

The operator sees the killed flow runs still Running with no process behind them, marks them
Crashed through the API and re-submits their batches with the same parameters; the reruns take
every finished step from the results cache (stable cache keys), every action from the ledger
(stable idempotency keys), and an action in doubt is retried under its key, which the helpdesk
deduplicates.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents.testing.prefect_server import descendants
from bench.faults.harness import (
    Fault,
    Stack,
    batches_for,
    run_w1,
    scenario_main,
    stack_for,
)
from bench.faults.report import ScenarioResult

NAME = "2 worker SIGKILL"


class KillWorker(Fault):
    """SIGKILL the busiest worker and every process below it; start it again `hold_s` later.

    The busiest (most processes below it) so the kill always takes flow runs with it: with few
    flow runs one worker may have picked them all up.
    """

    name = "worker kill"
    hold_s = 3.0
    victim = 0

    def inject(self, stack: Stack) -> None:
        self.victim = max(
            range(len(stack.workers)), key=lambda i: len(descendants(stack.workers[i].pid))
        )
        in_flight = stack.model.stats.in_flight  # read just before: these may be re-made
        killed = stack.workers[self.victim].kill()
        self.note(in_flight=in_flight, killed=len(killed))

    def clear(self, stack: Stack) -> None:
        stack.workers[self.victim].start()


def run(
    short: bool = False, *, runs: int | None = None, stack: Stack | None = None
) -> ScenarioResult:
    """Run W1 (or its short version) and kill a worker once 30% (short: 5%) of it is done.

    Example:
        >>> run(short=True).llm_recalls  # doctest: +SKIP
        0
    """
    fault = KillWorker()
    with stack_for(stack) as s:
        # Short: four flow runs of ten tickets finish almost at once, so 30% can come too late
        # to catch one mid-batch; the first finished ticket means they are all under way.
        at = 0.05 if short else 0.3
        outcome = run_w1(s, fault=fault, at=at, short=short, batches=batches_for(short, runs))
    in_flight = int(fault.notes.get("in_flight", 0))
    failures = []
    if fault.notes.get("killed", 0) < 2:
        failures.append("the worker had no flow-run process to kill")
    if outcome.llm_recalls > in_flight:
        failures.append(f"{outcome.llm_recalls} LLM calls re-made > {in_flight} in flight")
    extra = f"{fault.notes.get('killed', 0)} processes killed, {in_flight} model calls in flight"
    return outcome.result(NAME, failures, extra)


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
