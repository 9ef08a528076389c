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

import contextlib
import os
import sys
import time
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
    """SIGKILL a worker that has a model call in flight, and every process below it; start it
    again `hold_s` later.

    `ready` waits for a moment when one of a worker's flow-run processes is waiting on the model
    server (its socket's port is among the server's in-flight requests): that worker is the
    victim, so the kill always lands mid-batch. Choosing by process count alone once killed two
    flow runs that were only writing their last records, and the scenario proved nothing.
    """

    name = "worker kill"
    hold_s = 3.0
    relook_s = 10.0
    victim: int | None = None
    _answered = 0
    _cached = 0

    def ready(self, stack: Stack) -> bool:
        waiting = processes_on_ports(stack.model.stats.ports_in_flight(), stack.model.port)
        busy = [i for i, w in enumerate(stack.workers) if waiting & set(descendants(w.pid))]
        self.victim = busy[0] if busy else None
        return self.victim is not None

    def begin(self, stack: Stack) -> None:
        self._answered = answered(stack)
        self._cached = cached(stack)

    def inject(self, stack: Stack) -> None:
        # `ready` reads /proc twice (sockets, then process trees), a few hundred ms on a loaded
        # machine: the flow run it saw waiting may have had its last answer and ended since.
        # Look again, for a bounded while, until the victim still has a flow-run process.
        deadline = time.monotonic() + self.relook_s
        while not self._victim_alive(stack) and time.monotonic() < deadline:
            time.sleep(0.02)
            self.ready(stack)
        if self.victim is None:  # nobody waiting on the model: the busiest worker
            self.victim = max(
                range(len(stack.workers)), key=lambda i: len(descendants(stack.workers[i].pid))
            )
        waiting = stack.model.stats.in_flight
        killed = stack.workers[self.victim].kill()
        # In flight = asked and not yet durable: waiting on the server (just before or just
        # after the kill, whichever is more), or answered and not yet in the LLM cache (the
        # rerun asks again only when the cache misses). Answers first, then the cache: a row
        # written in between makes the count smaller, never larger.
        waiting = max(waiting, stack.model.stats.in_flight)
        unsaved = (answered(stack) - self._answered) - (cached(stack) - self._cached)
        self.note(in_flight=waiting + max(0, unsaved), waiting=waiting, killed=len(killed))

    def _victim_alive(self, stack: Stack) -> bool:
        """Whether the chosen worker still has a flow-run process to kill."""
        return self.victim is not None and bool(descendants(stack.workers[self.victim].pid))

    def clear(self, stack: Stack) -> None:
        if self.victim is not None:
            stack.workers[self.victim].start()


def answered(stack: Stack) -> int:
    """Model answers the stack's model server has sent so far."""
    return int(stack.model.stats.snapshot()["answers"])


def cached(stack: Stack) -> int:
    """Rows in the state database's LLM cache."""
    import psycopg

    with psycopg.connect(stack.state_dsn, connect_timeout=10) as conn:
        row = conn.execute("SELECT count(*) FROM llm_cache").fetchone()
    return int(row[0]) if row else 0


def processes_on_ports(ports: set[int], remote_port: int | None = None) -> set[int]:
    """Pids of this user's processes holding a TCP socket bound locally to one of `ports` (and,
    with `remote_port`, connected to that port: Linux gives one local port to connections to
    different destinations, so a long-lived process may hold the same local port elsewhere).

    Reads /proc/net/tcp and tcp6 (ports to socket inode) and /proc/<pid>/fd (inode to process).

    Example:
        >>> processes_on_ports(set())
        set()
    """
    if not ports:
        return set()
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for line in Path(table).read_text().splitlines()[1:]:
                fields = line.split()
                if len(fields) <= 9 or int(fields[1].rsplit(":", 1)[1], 16) not in ports:
                    continue
                if remote_port is None or int(fields[2].rsplit(":", 1)[1], 16) == remote_port:
                    inodes.add(f"socket:[{fields[9]}]")
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            for fd in (entry / "fd").iterdir():
                with contextlib.suppress(OSError):
                    if os.readlink(fd) in inodes:
                        found.add(int(entry.name))
                        break
    return found


def run(
    short: bool = False, *, runs: int | None = None, stack: Stack | None = None
) -> ScenarioResult:
    """Run W1 (or its short version); once 30% (short: 5%) of it is done, kill a worker that is
    waiting on the model.

    Example:
        >>> run(short=True).llm_recalls  # doctest: +SKIP
        0
    """
    fault = KillWorker()
    with stack_for(stack) as s:
        # Short: four flow runs of ten tickets finish almost at once, so 30% can come too late
        # to catch one mid-batch.
        at = 0.05 if short else 0.3
        outcome = run_w1(s, fault=fault, at=at, short=short, batches=batches_for(short, runs))
    in_flight = int(fault.notes.get("in_flight", 0))
    failures = []
    if fault.notes.get("killed", 0) < 2:
        failures.append("the worker had no flow-run process to kill")
    elif not outcome.resubmitted:
        failures.append("the kill left no flow run to re-submit: it hit no batch mid-way")
    if outcome.llm_recalls > in_flight:
        failures.append(f"{outcome.llm_recalls} LLM calls re-made > {in_flight} in flight")
    extra = (
        f"{fault.notes.get('killed', 0)} processes killed, {in_flight} model calls in flight"
        f" ({fault.notes.get('waiting', 0)} waiting on the server, the rest answered and not"
        " yet cached)"
    )
    return outcome.result(NAME, failures, extra)


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
