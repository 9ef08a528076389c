"""W1, the reliability suite's workload, and the stack and operator every W1 scenario runs on.

This module owns: the stack (a real `prefect server` on a fresh PostgreSQL database, the
ticket-triage deployment from prefect.yaml, two process workers, the state database on
PostgreSQL, the bundled model server with 50-200 ms latency, the simulated helpdesk), the W1
workload (1,000 ticket-triage runs across 10 tenants, 20 flow runs of 50 tickets, fresh ids per
suite run; flow-run process start-up is most of the cost on two cores, hence 50 and not 25),
the operator loop that re-submits dead flow runs, and the five figures of
`bench.faults.report.ScenarioResult`. A scenario module only says what fault to inject and when.

Example (a scenario in a dozen lines; see `s2_worker_kill.py`):

    from bench.faults.harness import Fault, Stack, run_w1

    class KillWorker(Fault):
        name = "worker kill"
        def inject(self, stack: Stack) -> None:
            self.note(in_flight=stack.model.stats.in_flight)
            stack.workers[0].kill()
        def clear(self, stack: Stack) -> None:
            stack.workers[0].start()

    with Stack() as stack:                      # ~25 s: server, deploy, workers
        outcome = run_w1(stack, fault=KillWorker(), at=0.3, short=False)
    print(outcome.result("2 worker kill").passed)

`run_w1` submits every flow run at once, injects the fault once `at` of the tickets are done
(`fault.inject`, then `fault.hold_s` seconds, then `fault.clear`, in a thread, so the operator
keeps watching meanwhile), and returns once every ticket has a finished agent run or the
deadline passed. Measures:

- completed: tickets with a `completed` (or `held`: refused by policy, nothing to do; or
  `awaiting_review`: durably stopped for a person) agent run in the state database; lost: the
  others.
- duplicate actions: tickets with more than one distinct effect at the helpdesk; re-deliveries
  the helpdesk absorbed by idempotency key are reported in the notes.
- LLM calls re-made: the model server's successful answers beyond the first per hash of model +
  messages (every W1 prompt is unique: the ticket's id is in its body).
- time to recover: harness clock from `inject` to the first agent run that finished (state
  database `finished_at`) after `clear` in a flow run the operator had to re-submit (any run
  when none was re-submitted).

Recovery (the operator): every second, `agents.recovery.recover` (the runtime's, also
`stalwart recover`) looks at each open batch's latest flow run and re-submits it with the same
parameters when it ended Crashed or Failed, or is Running or Pending with its process gone
(`infrastructure_pid` dead on this machine, or Pending with no process for `pending_grace_s`),
after marking it Crashed through the API. A Completed flow run closes its batch: a ticket it
left unfinished counts as lost. Prefect 3.9's own way of noticing a dead run, flow-run
heartbeats plus a proactive automation, cannot react in under 60-90 s here
(`PREFECT_FLOWS_HEARTBEAT_FREQUENCY` has a floor of 30 s), too slow for a bounded suite. At most
`max_attempts` flow runs per batch.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse, urlunparse

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agents.modelserver import ModelServer  # noqa: E402
from agents.recovery import LIVE_STATES, recover  # noqa: E402
from agents.testing.prefect_server import PrefectServer, Worker  # noqa: E402
from bench.faults.report import ScenarioResult  # noqa: E402
from flows.helpdesk import SimulatedHelpdesk  # noqa: E402

__all__ = [
    "Batch",
    "Fault",
    "Outcome",
    "Stack",
    "batches_for",
    "pg_admin_url",
    "run_w1",
    "scenario_main",
    "stack_for",
    "w1",
]

#: Admin URL of the local PostgreSQL (databases for the Prefect server and the state are made here).
PG = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
#: The Redis the Prefect server's messaging goes through (docs/deployment.md); each server takes a
#: database number of its own there. With Prefect's in-memory default the server dropped events
#: under W1 ("Subscription queue is full, dropping message"), so the UI missed task runs.
REDIS = os.environ.get("STALWART_TEST_REDIS", "redis://127.0.0.1:6379")
DEPLOYMENT = "ticket-triage/ticket-triage"
#: A ticket's run with one of these statuses is done for W1: an unsure ticket of the sample stops
#: at ticket-triage's review rung (`awaiting_review`) until a person answers, and is not lost.
FINISHED = ("completed", "held", "awaiting_review")
#: W1 and its short version: (tickets, tenants, tickets per flow run).
FULL = (1000, 10, 50)
# The short version is what CI runs for each of scenarios 1-4: few flow runs, because starting a
# flow-run process costs seconds of CPU on two cores and CI has 20 minutes for everything.
SHORT = (40, 4, 10)


#: The Prefect server's database settings for W1's load, as the README advises for production.
#: Prefect's defaults (a pool of 5 plus 10 overflow connections, 5 s to connect) made the server
#: open a connection for most requests under W1 on two cores; connecting then timed out now and
#: then and the request answered 500 (4,000-run soaks: a few flow-run re-submissions each, and a
#: worker ended by a 500 before `stalwart worker` caught that). Prefect's own test mode raises the
#: connect timeout to 30 s for the same reason. The ceiling stays Prefect's 15 connections: a
#: pool of 20 plus 10 took the server's share of PostgreSQL's 100 slots (`max_connections`) to
#: 30, and the flow runs' own connections were then refused ("too many clients already").
SERVER_SIZING = {
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_POOL_SIZE": "10",
    "PREFECT_SERVER_DATABASE_SQLALCHEMY_MAX_OVERFLOW": "5",
    "PREFECT_SERVER_DATABASE_CONNECTION_TIMEOUT": "30",
}


def pg_admin_url() -> str:
    """The PostgreSQL admin URL the suite uses (`STALWART_TEST_PG` or the local default).

    Example:
        >>> pg_admin_url().startswith("postgresql://")
        True
    """
    return PG


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.encode())  # names are generated here, never user input


# -- the workload --------------------------------------------------------------------------------


@dataclass
class Batch:
    """One flow run's worth of W1: a tenant and its tickets, re-submitted as is after a crash."""

    index: int
    tenant: str
    items: list[dict[str, Any]]
    flow_runs: list[str] = field(default_factory=list)
    """Ids of the flow runs submitted for this batch, first to last."""
    done: bool = False

    @property
    def run_keys(self) -> list[str]:
        return [str(item["run_key"]) for item in self.items]


def w1(runs: int = 1000, tenants: int = 10, per_flow_run: int = 25) -> list[Batch]:
    """W1's batches: `runs` tickets from flows/data/tickets.jsonl, fresh ids, tenant per batch.

    Each ticket gets a unique id (also its `run_key`, and in its body, so its prompt is unique)
    and batches go round-robin over `tenants` tenants named `w1-<salt>-<n>`.

    Example:
        >>> batches = w1(runs=30, tenants=3, per_flow_run=10)
        >>> len(batches), len({b.tenant for b in batches}), len(batches[0].items)
        (3, 3, 10)
    """
    lines = (ROOT / "flows/data/tickets.jsonl").read_text().splitlines()
    salt = uuid.uuid4().hex[:6]
    batches: list[Batch] = []
    for start in range(0, runs, per_flow_run):
        index = len(batches)
        items = []
        for n in range(start, min(runs, start + per_flow_run)):
            line = json.loads(lines[n % len(lines)])
            raw = {k: v for k, v in line.get("raw", line).items() if k != "expected"}
            ticket_id = f"{raw.get('id', n)}-{salt}-{n:04d}"
            raw["id"] = ticket_id
            raw["body"] = f"{raw.get('body', '')} (ref {ticket_id})"
            items.append({"raw": raw, "subject": raw.get("customer"), "run_key": ticket_id})
        batches.append(Batch(index, f"w1-{salt}-{index % tenants}", items))
    return batches


# -- the stack -----------------------------------------------------------------------------------


class Stack:
    """Everything W1 runs on, started in order and stopped in reverse, all on loopback.

    Attributes:
        model: The bundled model server (latency uniform in `latency_ms`).
        helpdesk: The simulated helpdesk every action goes to.
        server: The Prefect server (its database on PostgreSQL; its messaging through Redis at
            `redis`, None: Prefect's in-memory queues).
        workers: The process workers polling pool `stalwart`: `stalwart worker` (Prefect's
            process worker reclaiming its memory every `reclaim_every_s` seconds; None: plain
            `prefect worker start`).
        state_url: The state database (PostgreSQL, fresh, migrated).

    Example:
        >>> with Stack(workers=2) as stack:  # doctest: +SKIP
        ...     stack.workers[0].kill(); stack.workers[0].start()
    """

    def __init__(
        self,
        *,
        workers: int = 2,
        latency_ms: tuple[float, float] = (50.0, 200.0),
        worker_limit: int = 5,
        concurrency: int = 16,
        model_timeout_s: float = 3.0,
        reclaim_every_s: float | None = 60.0,
        redis: str | None = REDIS,
    ) -> None:
        self.latency_ms = latency_ms
        self.reclaim_every_s = reclaim_every_s
        self.worker_count = workers
        self.worker_limit = worker_limit
        self.concurrency = concurrency
        self.model_timeout_s = model_timeout_s
        self.state_db = f"stalwart_w1_{uuid.uuid4().hex[:8]}"
        parts = urlparse(PG)
        self.state_url = urlunparse(
            parts._replace(scheme="postgresql+psycopg", path=f"/{self.state_db}")
        )
        self.model = ModelServer(port=0)
        self.helpdesk = SimulatedHelpdesk()
        # Generous: on a loaded two-core machine the server once took over 90 s to answer.
        self.server = PrefectServer(
            postgres=PG, startup_timeout=240.0, env=dict(SERVER_SIZING), redis=redis
        )
        self.workers: list[Worker] = []
        self._stack = contextlib.ExitStack()
        self.deployment_id: str | None = None

    @property
    def state_dsn(self) -> str:
        """The state database as a plain psycopg URL (for the harness's own queries)."""
        return self.state_url.replace("postgresql+psycopg://", "postgresql://")

    def start(self) -> Stack:
        """Create and migrate the state DB, start servers, deploy ticket-triage, start workers."""
        from agents.store import upgrade

        try:
            _admin(f'CREATE DATABASE "{self.state_db}"')
            self._stack.callback(_drop_database, self.state_db)
            upgrade(self.state_url)
            self._stack.enter_context(self.model)
            self.model.faults.update(latency_ms_range=self.latency_ms)
            self._stack.enter_context(self.helpdesk)
            self._stack.enter_context(self.server)
            self.server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
            self.server.cli("deploy", "--name", "ticket-triage", cwd=ROOT, timeout=300)
            env = {
                "STALWART_PROJECT_DIR": str(ROOT),
                "STALWART_DATABASE_URL": self.state_url,
                "STALWART_MODEL_URL": self.model.url,
                "STALWART_MODEL_TIMEOUT_SECONDS": str(self.model_timeout_s),
                "STALWART_HELPDESK_URL": self.helpdesk.url,
                "STALWART_MONITOR": "off",
                # 10 flow-run processes at most (2 workers x 5), 6 state connections each: 60,
                # plus the Prefect server's 15, within PostgreSQL's 100. The defaults (10 + 20
                # each) peaked at 84 and had the server refuse connections in a soak.
                "STALWART_DATABASE_POOL_SIZE": "6",
                "STALWART_DATABASE_MAX_OVERFLOW": "0",
                "PYTHONPATH": str(ROOT),
            }
            for i in range(self.worker_count):
                worker = Worker(
                    self.server,
                    pool="stalwart",
                    cwd=ROOT,
                    env=env,
                    name=f"w1-{i}",
                    limit=self.worker_limit,
                    unset=("SENTRY_DSN", "STALWART_DATABASE_BLOCK", "STALWART_MODEL_BLOCK"),
                    reclaim_every_s=self.reclaim_every_s,
                )
                self.workers.append(worker)
                self._stack.callback(worker.stop)
                worker.start()
            with self.client() as client:
                self.deployment_id = str(client.read_deployment_by_name(DEPLOYMENT).id)
                # No scheduled runs (prefect.yaml's every-30-minutes demo batch) in the suite:
                # one killed at :00 or :30 is not W1's to recover. Pausing deletes them.
                client.pause_deployment(self.deployment_id)
        except BaseException:
            self.stop()
            raise
        return self

    def client(self) -> Any:
        """A sync Prefect client on this stack's server (use as a context manager)."""
        from prefect.client.orchestration import SyncPrefectClient

        return SyncPrefectClient(self.server.api_url)

    def ensure_workers(self) -> list[str]:
        """Start again any worker whose process has exited; return their names."""
        restarted = []
        for worker in self.workers:
            if not worker.running:
                worker.start()
                restarted.append(worker.name)
        return restarted

    def stop(self) -> None:
        """Stop workers, servers, and drop the databases (bounded)."""
        self._stack.close()

    def __enter__(self) -> Stack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _drop_database(name: str) -> None:
    with contextlib.suppress(Exception):
        _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# -- faults --------------------------------------------------------------------------------------


class Fault:
    """What a scenario breaks: `inject`, stay broken `hold_s` seconds, `clear`.

    Subclasses set `name` and `hold_s` and override `inject`/`clear`; `note(...)` records
    figures for the result's notes (e.g. the calls in flight at the model server at the kill).

    Example:
        >>> class Nothing(Fault):
        ...     name = "nothing"
        >>> fault = Nothing(); fault.note(in_flight=3); fault.notes
        {'in_flight': 3}
    """

    name = "fault"
    hold_s = 5.0

    def __init__(self) -> None:
        self.notes: dict[str, Any] = {}
        self.injected_at: float | None = None
        self.cleared_at: float | None = None
        self.error: str | None = None

    def note(self, **figures: Any) -> None:
        """Keep figures for the scenario's notes and checks."""
        self.notes.update(figures)

    def begin(self, stack: Stack) -> None:
        """Before the workload is submitted: take baselines (default: none)."""

    def ready(self, stack: Stack) -> bool:
        """Whether now is a moment this fault can prove something (default: any moment)."""
        return True

    def inject(self, stack: Stack) -> None:
        """Break something."""

    def clear(self, stack: Stack) -> None:
        """Repair it (always called, even when `inject` raised)."""

    def run(self, stack: Stack) -> None:
        """inject, hold, clear; times on the harness clock (`time.time()`)."""
        self.injected_at = time.time()
        try:
            self.inject(stack)
            time.sleep(self.hold_s)
        except Exception as exc:  # recorded: the scenario fails with it, the stack is repaired
            self.error = f"inject: {exc!r}"
        finally:
            try:
                self.clear(stack)
            except Exception as exc:
                self.error = (self.error or "") + f" clear: {exc!r}"
            self.cleared_at = time.time()


# -- the operator and the measures ---------------------------------------------------------------


@dataclass
class Outcome:
    """What one W1 pass did, with every figure of the result table."""

    runs: int
    completed: int
    lost: int
    duplicate_actions: int
    redeliveries: int
    llm_recalls: int
    recover_s: float | None
    wall_s: float
    resubmitted: int
    marked_crashed: int
    fallbacks: dict[str, int]
    statuses: dict[str, int]
    fault: Fault | None
    events: list[str]
    timed_out: float | None = None
    """The deadline (s) when it ran out with batches still open, else None."""
    lost_detail: list[str] = field(default_factory=list)
    """For the first lost tickets: key, the statuses of its agent runs and the last error."""

    def result(
        self, scenario: str, failures: list[str] | None = None, extra: str = ""
    ) -> ScenarioResult:
        """The scenario's `ScenarioResult` row (notes: throughput, recovery work, extras)."""
        notes = [
            f"{self.runs / self.wall_s:.1f} runs/s",
            f"{self.resubmitted} flow runs re-submitted",
            f"{self.redeliveries} re-deliveries absorbed by key",
        ]
        if self.marked_crashed:
            notes.append(f"{self.marked_crashed} marked Crashed by the operator")
        if extra:
            notes.append(extra)
        found = list(failures or [])
        if self.timed_out is not None:
            # Say so: tickets still queued at the deadline are counted lost, not hidden.
            found.append(f"deadline of {self.timed_out:g} s reached with {self.lost} tickets open")
        if self.fault is not None and self.fault.error:
            found.append(self.fault.error)
        if self.lost and self.timed_out is None:
            found.append("lost: " + " | ".join(self.lost_detail))
        return ScenarioResult(
            scenario,
            runs=self.runs,
            completed=self.completed,
            lost=self.lost,
            duplicate_actions=self.duplicate_actions,
            llm_recalls=self.llm_recalls,
            recover_s=self.recover_s,
            notes="; ".join(notes),
            failures=found,
        )


def _ticket_rows(stack: Stack, tenants: list[str]) -> list[tuple[str, str, str, datetime | None]]:
    import psycopg

    with psycopg.connect(stack.state_dsn, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT tenant, run_key, status, finished_at FROM agent_run WHERE tenant = ANY(%s)",
            (tenants,),
        ).fetchall()
    return [(str(a), str(b), str(c), d) for a, b, c, d in rows]


def _lost_detail(stack: Stack, keys: list[tuple[str, str]], most: int = 5) -> list[str]:
    """Why the first `most` lost tickets are lost: their agent runs' statuses and last error."""
    import psycopg

    found = []
    with contextlib.suppress(Exception), psycopg.connect(stack.state_dsn) as conn:
        for tenant, key in keys[:most]:
            rows = conn.execute(
                "SELECT status, error FROM agent_run WHERE tenant = %s AND run_key = %s"
                " ORDER BY started_at",
                (tenant, key),
            ).fetchall()
            statuses = ",".join(str(status) for status, _ in rows) or "no agent run"
            error = next((str(e) for _, e in reversed(rows) if e), "")
            found.append(f"{key}: {statuses} {error[:200]}".strip())
    return found


def _fallbacks(stack: Stack, tenants: list[str]) -> dict[str, int]:
    import psycopg

    with psycopg.connect(stack.state_dsn, connect_timeout=3) as conn:
        rows = conn.execute(
            "SELECT path, count(*) FROM decision_record WHERE tenant = ANY(%s) AND step = 'route'"
            " GROUP BY path",
            (tenants,),
        ).fetchall()
    return {str(path): int(n) for path, n in rows}


class _Operator:
    """Submits batches and re-submits the dead ones; every API or DB hiccup is survived."""

    def __init__(
        self,
        stack: Stack,
        batches: list[Batch],
        *,
        max_attempts: int,
        pending_grace_s: float,
    ) -> None:
        self.stack = stack
        self.batches = batches
        self.max_attempts = max_attempts
        self.pending_grace_s = pending_grace_s
        self.tenants = sorted({b.tenant for b in batches})
        self.resubmitted = 0
        self.marked_crashed = 0
        self.events: list[str] = []
        self.resubmitted_at: dict[int, float] = {}
        self.rows: list[tuple[str, str, str, datetime | None]] = []

    def log(self, message: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {message}")

    def submit(self, client: Any, batch: Batch) -> None:
        run = client.create_flow_run_from_deployment(
            self.stack.deployment_id,
            parameters={
                "inputs": batch.items,
                "tenant": batch.tenant,
                "concurrency": self.stack.concurrency,
            },
            tags=[f"w1-batch:{batch.index}"],
        )
        batch.flow_runs.append(str(run.id))

    def finished(self) -> dict[tuple[str, str], str]:
        """(tenant, run_key) → best status seen in the state database."""
        best: dict[tuple[str, str], str] = {}
        for tenant, key, status, _ in self.rows:
            if best.get((tenant, key)) not in FINISHED:
                best[(tenant, key)] = status
        return best

    def done_fraction(self) -> float:
        total = sum(len(b.items) for b in self.batches)
        found = self.finished()
        return sum(1 for s in found.values() if s in FINISHED) / max(1, total)

    def refresh(self) -> None:
        with contextlib.suppress(Exception):  # PostgreSQL down: keep the last reading
            self.rows = _ticket_rows(self.stack, self.tenants)

    def step(self, client: Any) -> None:
        """One look at every open batch: a finished flow run closes it, and a dead one is
        re-submitted by `agents.recovery.recover` (what an operator runs in production)."""
        from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

        open_batches = [b for b in self.batches if not b.done]
        current = {b.flow_runs[-1]: b for b in open_batches if b.flow_runs}
        runs = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=list(current))),
            limit=len(current) + 1,
        )
        for run in runs:
            if run.state is not None and run.state.type.value == "COMPLETED":
                # Its tickets are counted from the state database: one not finished is lost.
                current.pop(str(run.id)).done = True
        for found in recover(
            flow_run_ids=list(current),
            max_attempts=self.max_attempts,
            pending_grace_s=self.pending_grace_s,
            client=client,
        ):
            batch = current[found.flow_run_id]
            if found.new_flow_run_id is None:
                batch.done = True
                self.log(
                    f"batch {batch.index}: gave up after {found.attempt} flow runs ({found.reason})"
                )
                continue
            if found.state in LIVE_STATES:
                self.marked_crashed += 1
            self.log(f"batch {batch.index}: flow run {found.state}, re-submitted ({found.reason})")
            batch.flow_runs.append(found.new_flow_run_id)
            self.resubmitted += 1
            self.resubmitted_at.setdefault(batch.index, time.time())


def run_w1(
    stack: Stack,
    *,
    fault: Fault | None = None,
    at: float = 0.3,
    short: bool = False,
    batches: list[Batch] | None = None,
    timeout_s: float | None = None,
    max_attempts: int = 4,
    pending_grace_s: float = 20.0,
) -> Outcome:
    """Run W1 (or its short version) on `stack`, inject `fault` once `at` of it is done.

    Args:
        stack: A started `Stack`.
        fault: What to break, or None for a plain pass (e.g. model faults set beforehand).
        at: Fraction of tickets finished before the fault is injected.
        short: 40 tickets in 4 flow runs (4 tenants) instead of 1,000 in 20 (10 tenants).
        batches: Explicit batches (default: `w1(...)` fresh).
        timeout_s: Give up after this long (default 1,800 s, 420 s short).
        max_attempts: Flow runs per batch at most.
        pending_grace_s: A Pending flow run without a process for this long is dead.

    Returns:
        The `Outcome` (every figure of the result table).

    Example:
        >>> with Stack() as stack:  # doctest: +SKIP
        ...     run_w1(stack, short=True).lost
        0
    """
    if batches is None:
        batches = batches_for(short, None)
    # Generous: a re-submitted flow run queues behind the others, and on a loaded two-core
    # machine W1 has run at 1.1 runs/s (900 s was too short once: tickets "lost" to the clock).
    timeout_s = timeout_s if timeout_s is not None else (420.0 if short else 1800.0)
    runs = sum(len(b.items) for b in batches)
    remade_before = stack.model.stats.remade()
    helpdesk_before = stack.helpdesk.state.summary()
    operator = _Operator(stack, batches, max_attempts=max_attempts, pending_grace_s=pending_grace_s)
    started = time.time()
    deadline = time.monotonic() + timeout_s
    finished_run = threading.Event()
    thread: threading.Thread | None = None
    if fault is not None:
        fault.begin(stack)
        thread = threading.Thread(
            target=_inject_when_due,
            args=(fault, stack, operator, at, finished_run),
            daemon=True,
        )
        thread.start()
    with stack.client() as client:
        for batch in batches:
            operator.submit(client, batch)
        while time.monotonic() < deadline and not all(b.done for b in batches):
            time.sleep(1.0)
            operator.refresh()
            if fault is not None and fault.injected_at is not None and fault.cleared_at is None:
                continue  # let the fault play out; look again once it is cleared
            if fault is not None and fault.cleared_at is not None:
                for name in stack.ensure_workers():
                    operator.log(f"worker {name} had exited: started again")
            try:
                operator.step(client)
            except Exception as exc:  # the API is down or restarting: look again next second
                operator.log(f"operator: {type(exc).__name__}: {exc}"[:300])
        finished_run.set()
        if thread is not None:
            thread.join(timeout=120)
    wall = time.time() - started
    # Read the end state (retrying: PostgreSQL may just have come back).
    for _ in range(30):
        try:
            operator.rows = _ticket_rows(stack, operator.tenants)
            fallbacks = _fallbacks(stack, operator.tenants)
            break
        except Exception:
            time.sleep(1.0)
    else:
        fallbacks = {}
    finished = operator.finished()
    keys = [(b.tenant, k) for b in batches for k in b.run_keys]
    completed = sum(1 for k in keys if finished.get(k) in FINISHED)
    lost_keys = [k for k in keys if finished.get(k) not in FINISHED]
    # The operator's log, for whoever reads a failed scenario (pytest shows it on failure).
    print("\n".join(operator.events), file=sys.stderr, flush=True)
    ticket_ids = {str(item["raw"]["id"]) for b in batches for item in b.items}
    effects = stack.helpdesk.state.effects_by_ticket()
    duplicates = sum(1 for t in ticket_ids if effects.get(t, 0) > 1)
    helpdesk_after = stack.helpdesk.state.summary()
    redeliveries = helpdesk_after.redeliveries - helpdesk_before.redeliveries
    return Outcome(
        runs=runs,
        completed=completed,
        lost=runs - completed,
        duplicate_actions=duplicates,
        redeliveries=redeliveries,
        llm_recalls=stack.model.stats.remade() - remade_before,
        recover_s=_recover_s(operator, fault, batches),
        wall_s=wall,
        resubmitted=operator.resubmitted,
        marked_crashed=operator.marked_crashed,
        fallbacks=fallbacks,
        statuses=dict(Counter(finished.values())),
        fault=fault,
        events=operator.events,
        timed_out=timeout_s if not all(b.done for b in batches) else None,
        lost_detail=_lost_detail(stack, lost_keys),
    )


def _inject_when_due(
    fault: Fault, stack: Stack, operator: _Operator, at: float, finished_run: threading.Event
) -> None:
    """Run `fault` once `at` of the tickets are done and the fault is `ready`.

    Looks every 50 ms at what the harness knows at once (the helpdesk's effects, in this
    process), not only at the state database the operator reads once a second: on a fast machine
    a short batch went from 0% to 50% between two of the operator's looks, and the kill then
    found no flow run mid-batch.
    """
    tickets = {str(item["raw"]["id"]) for b in operator.batches for item in b.items}
    while not finished_run.is_set():
        acted = len(tickets.intersection(stack.helpdesk.state.effects_by_ticket()))
        done = max(operator.done_fraction(), acted / max(1, len(tickets)))
        if done >= at and fault.ready(stack):
            operator.log(f"injecting {fault.name} at {done:.0%}")
            fault.run(stack)
            return
        time.sleep(0.05)


def _recover_s(operator: _Operator, fault: Fault | None, batches: list[Batch]) -> float | None:
    if fault is None or fault.injected_at is None or fault.cleared_at is None:
        return None
    cleared = datetime.fromtimestamp(fault.cleared_at, UTC)
    affected = {
        (b.tenant, key) for b in batches if b.index in operator.resubmitted_at for key in b.run_keys
    }
    times = [
        when
        for tenant, key, status, when in operator.rows
        if status in FINISHED
        and when is not None
        and when >= cleared
        and (not affected or (tenant, key) in affected)
    ]
    if not times:
        return None
    return min(times).timestamp() - fault.injected_at


# -- scenario plumbing ---------------------------------------------------------------------------


@contextlib.contextmanager
def stack_for(stack: Stack | None) -> Iterator[Stack]:
    """The given stack (shared, e.g. by the CI tests), else a fresh one stopped on exit.

    Example:
        >>> with stack_for(None) as stack:  # doctest: +SKIP
        ...     run_w1(stack, short=True)
    """
    if stack is not None:
        yield stack
        return
    with Stack() as fresh:
        yield fresh


def batches_for(short: bool, runs: int | None) -> list[Batch]:
    """W1's batches, short or full, or `runs` tickets over 10 tenants.

    Example:
        >>> sum(len(b.items) for b in batches_for(True, None))
        40
    """
    total, tenants, per = SHORT if short else FULL
    return w1(runs if runs is not None else total, tenants, per)


def scenario_main(
    run: Callable[..., ScenarioResult],
    description: str,
    *,
    options: Callable[[Any], None] | None = None,
    argv: list[str] | None = None,
) -> None:
    """The command line of every scenario module: `--short`, `--runs N`, `--json PATH`.

    `options(parser)` adds a scenario's own options; each is passed to `run` by its name.
    Prints the scenario's one-row table; `--json` also writes the result (for `run_all.py`).
    The exit status is 0 when the scenario passed, 1 otherwise.

    Example:
        >>> scenario_main(run, __doc__)  # doctest: +SKIP
    """
    import argparse
    import dataclasses

    from bench.faults.report import table

    parser = argparse.ArgumentParser(description=description.split("\n")[0])
    parser.add_argument("--short", action="store_true", help="the short version")
    parser.add_argument("--runs", type=int, default=None, help="runs (default: the scenario's)")
    parser.add_argument("--json", type=Path, default=None, help="also write the result here")
    if options is not None:
        options(parser)
    kwargs = vars(parser.parse_args(argv))
    out = kwargs.pop("json")
    result = run(**kwargs)
    print(table([result]), flush=True)
    if out is not None:
        out.write_text(json.dumps(dataclasses.asdict(result)))
    raise SystemExit(0 if result.passed else 1)
