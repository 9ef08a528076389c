"""Scenario 8, zombie execution: every agent run executed by two worker processes at once.

A worker presumed dead comes back, so the same agent runs (same tenant, same inputs, hence the
same run keys and idempotency keys) execute twice at the same time. Two OS processes run the
same batch; a file barrier in the reasoning step makes both executions of each run reach the
action together, and the action is slow enough (0.5 s) that they overlap. Expected: one effect
per idempotency key at the simulated outside system (a file each effect is appended to); the
other execution stops with `ActionInProgress` (run status `conflict`, task run Cancelled, no
Sentry event); per run key exactly one recorded outcome (one `agent_run` row that is not a
conflict, one decision row, one completed ledger row) and the learning step counted once.

Example:
    >>> result = run(short=True)  # doctest: +SKIP
    >>> result.duplicate_actions, result.lost  # doctest: +SKIP
    (0, 0)

Run alone: `python -m bench.faults.s8_zombie [--short] [--runs N]` (SQLite in a temporary
directory, a temporary Prefect API; set STALWART_DATABASE_URL to use PostgreSQL instead).
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script, too

from agents import Agent, Decision, Memory
from bench.faults.harness import scenario_main
from bench.faults.report import ScenarioResult

__all__ = ["agent", "analyse", "collect", "main", "run", "run_twice", "spawn"]

ROOT = Path(__file__).resolve().parents[2]
NAME = "8 zombie execution"
ACTION_SECONDS = 0.5
LEASE_SECONDS = 3.0
#: A run waiting this long for its twin asks the twin where it is (`_ask_twin_for_stacks`).
STALL_SECONDS = 20.0
agent = Agent("zombie", description="Scenario 8: one action per ticket, run twice at once.")


class Ticket(BaseModel):
    id: int


class Routing(Decision):
    queue: str


class Sent(BaseModel):
    id: int
    key: str


def _barrier(name: str, wait: float | None = None) -> None:
    """Wait (at most `wait`, default STALWART_ZOMBIE_BARRIER_WAIT s) until the twin gets here."""
    directory = os.environ.get("STALWART_ZOMBIE_BARRIER")
    if not directory:
        return
    here = Path(directory)
    (here / f"{name}.{os.getpid()}").touch()
    if wait is None:
        wait = float(os.environ.get("STALWART_ZOMBIE_BARRIER_WAIT", "10"))
    started = time.monotonic()
    deadline = started + wait
    while len(list(here.glob(f"{name}.*"))) < 2 and time.monotonic() < deadline:
        if time.monotonic() - started > STALL_SECONDS:
            _ask_twin_for_stacks(here)
        time.sleep(0.01)


_stacks_asked: list[float] = []


def _ask_twin_for_stacks(barrier: Path) -> None:
    """The twin has kept a run waiting for over STALL_SECONDS: have it dump its threads' stacks
    to stalls.<pid>.log (SIGUSR2), at most once per STALL_SECONDS, so a stall says where it was."""
    now = time.monotonic()
    if _stacks_asked and now - _stacks_asked[-1] < STALL_SECONDS:
        return
    _stacks_asked.append(now)
    for entry in barrier.glob("start.*"):
        pid = int(entry.suffix[1:])
        if pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGUSR2)


@agent.perception
def ticket(raw: dict[str, Any]) -> Ticket:
    """The ticket to route."""
    return Ticket(id=int(raw["id"]))


@agent.reasoning
def route(ticket: Ticket) -> Routing:
    """A fixed rule (no model): both executions decide the same, at the same moment."""
    _barrier(f"route-{ticket.id}")
    return Routing(queue=f"q{ticket.id % 3}", confidence=0.9, rationale="modulo rule")


@agent.action
def send(route: Routing, ticket: Ticket, idempotency_key: str) -> Sent:
    """The outside effect: one line per call appended to effects.log (O_APPEND is atomic)."""
    time.sleep(float(os.environ.get("STALWART_ZOMBIE_ACTION_SECONDS", ACTION_SECONDS)))
    path = Path(os.environ.get("STALWART_ZOMBIE_OUT", ".")) / "effects.log"
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{idempotency_key} {os.getpid()}\n".encode())
    finally:
        os.close(fd)
    return Sent(id=ticket.id, key=idempotency_key)


@agent.learning
def remember(send: Sent, memory: Memory) -> None:
    """Count deliveries per subject: a doubled run would count twice."""
    memory.update("sent", lambda n: (n or 0) + 1)


def inputs(count: int) -> list[dict[str, Any]]:
    """The batch both workers run: ticket i about subject s<i % 10>."""
    return [{"raw": {"id": i}, "subject": f"s{i % 10}"} for i in range(count)]


def _worker(count: int, concurrency: int, tenant: str) -> None:
    # A worker that outlives `collect`'s timeout is sent SIGUSR1 first: every thread's stack goes
    # to stderr, which `collect` reports. SIGUSR2 (a twin kept waiting) goes to stalls.<pid>.log.
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    out = Path(os.environ.get("STALWART_ZOMBIE_OUT", "."))
    stalls = (out / f"stalls.{os.getpid()}.log").open("a")  # open for the process's lifetime
    faulthandler.register(signal.SIGUSR2, file=stalls, all_threads=True)
    # Both processes start their batch together (their start-up times differ by seconds), and
    # each run waits for its twin in `route` (long enough for a loaded machine).
    _barrier("start", wait=60)
    os.environ.setdefault("STALWART_ZOMBIE_BARRIER_WAIT", "60")
    results = agent.batch(inputs(count), tenant=tenant, concurrency=concurrency)
    print(
        json.dumps(
            {
                "statuses": Counter(r.status for r in results),
                "runs": [[r.run_key, r.status, r.error] for r in results],
            }
        ),
        flush=True,
    )


@contextlib.contextmanager
def _prefect_api() -> Iterator[str]:
    """The Prefect API in force, or a temporary one (a test harness server) for the workers."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        yield str(url)
        return
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield str(PREFECT_API_URL.value())


def spawn(
    out: Path,
    *,
    count: int,
    db_url: str,
    tenant: str,
    api_url: str,
    concurrency: int = 8,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start one worker process on the batch (`inputs(count)`); it prints a JSON report."""
    barrier = out / "barrier"
    barrier.mkdir(parents=True, exist_ok=True)
    child_env = dict(os.environ)
    child_env.update(
        STALWART_DATABASE_URL=db_url,
        STALWART_ZOMBIE_OUT=str(out),
        STALWART_ZOMBIE_BARRIER=str(barrier),
        STALWART_ACTION_LEASE_SECONDS=str(LEASE_SECONDS),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="WARNING",
        PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    )
    child_env.update(env or {})
    command = [
        sys.executable,
        "-m",
        "bench.faults.s8_zombie",
        "--worker",
        str(count),
        "--concurrency",
        str(concurrency),
        "--tenant",
        tenant,
    ]
    return subprocess.Popen(
        command,
        env=child_env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def collect(procs: list[subprocess.Popen[str]], timeout: float = 300.0) -> list[dict[str, Any]]:
    """Wait for workers and return their JSON reports; kill any still running at the end.

    Every worker's pipes are drained at once, each by its own thread: waiting on the first
    worker while the second's stderr filled its 64 KB pipe blocked the second in a log write,
    which stalled its twin at the barrier and, on a full batch, outlived the timeout.

    Raises:
        RuntimeError: a worker failed or outlived `timeout`.
    """
    output: dict[int, tuple[str, str]] = {}

    def drain(proc: subprocess.Popen[str]) -> None:
        output[proc.pid] = proc.communicate()

    readers = [threading.Thread(target=drain, args=(proc,), daemon=True) for proc in procs]
    for reader in readers:
        reader.start()
    reports: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        for proc, reader in zip(procs, readers, strict=True):
            reader.join(max(0.0, deadline - time.monotonic()))
            if reader.is_alive():
                proc.send_signal(signal.SIGUSR1)  # its threads' stacks, then it is killed
                time.sleep(2)
                proc.kill()
                reader.join(10)
                stderr = output.get(proc.pid, ("", ""))[1]
                stacks = stderr[stderr.find("Thread 0x") :] if "Thread 0x" in stderr else stderr
                print(f"worker {proc.pid} hung; its threads:\n{stacks}", file=sys.stderr)
                raise RuntimeError(
                    f"worker {proc.pid} still running after {timeout:g} s: {_hung_in(stacks)}"
                )
            stdout, stderr = output[proc.pid]
            if proc.returncode != 0:
                raise RuntimeError(f"worker {proc.pid} exited {proc.returncode}: {stderr[-3000:]}")
            reports.append(json.loads(stdout.strip().splitlines()[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    return reports


def _hung_in(stacks: str) -> str:
    """Where a hung worker's main thread was, from faulthandler's dump (its innermost frames).

    Example:
        >>> dump = 'Current thread 0x1 (most recent call first):\\n  File "a.py", line 3 in f\\n'
        >>> _hung_in(dump)
        'a.py:3 f'
    """
    blocks = stacks.split("\n\n")
    main = next((b for b in blocks if b.startswith("Current thread")), blocks[-1] if blocks else "")
    frames = [_frame(*f) for f in map(_parse_frame, main.splitlines()[1:4]) if f]
    return " < ".join(frames) or "no stack dumped"


def _parse_frame(line: str) -> tuple[str, str, str] | None:
    """(path, line, function) of one faulthandler line (`  File "/a/b.py", line 3 in f`)."""
    if not line.strip().startswith("File "):
        return None
    path, _, rest = line.strip()[len('File "') :].partition('", line ')
    number, _, func = rest.partition(" in ")
    return path, number, func


def _frame(path: str, number: str, func: str) -> str:
    return f"{Path(path).name}:{number} {func}"


def stall_frames(out: Path) -> Counter[str]:
    """Where each thread was in the twins' stall dumps (stalls.<pid>.log), counted: its innermost
    frame outside the standard library (idle pool threads, all standard library, are left out).

    Example:
        >>> stall_frames(Path("/nonexistent"))
        Counter()
    """
    stdlib = sysconfig.get_paths()["stdlib"]
    frames: Counter[str] = Counter()
    for log in out.glob("stalls.*.log"):
        for block in log.read_text().split("\n\n"):
            for frame in filter(None, map(_parse_frame, block.splitlines())):
                path = frame[0]
                if not path.startswith(stdlib) or "site-packages" in path:
                    frames[_frame(*frame)] += 1
                    break
    return frames


def run_twice(
    out: Path,
    *,
    count: int,
    db_url: str,
    tenant: str,
    api_url: str,
    concurrency: int = 8,
    timeout: float = 300.0,
    env: dict[str, str] | None = None,
) -> list[dict[str, Any]]:
    """Start two worker processes on the same batch at once; return what each printed.

    Raises:
        RuntimeError: a worker failed or outlived `timeout` (then it is killed).
    """
    procs = [
        spawn(
            out,
            count=count,
            db_url=db_url,
            tenant=tenant,
            api_url=api_url,
            concurrency=concurrency,
            env=env,
        )
        for _ in range(2)
    ]
    return collect(procs, timeout)


def analyse(out: Path, *, count: int, db_url: str, tenant: str) -> dict[str, Any]:
    """Count effects, recorded outcomes, decisions, ledger rows and memory for one tenant."""
    from sqlmodel import col, select

    from agents.store import ActionRecord, AgentRun, DecisionRecord, StepRun, session

    effects_file = out / "effects.log"
    lines = effects_file.read_text().splitlines() if effects_file.exists() else []
    effects = Counter(line.split()[0] for line in lines)
    with session(db_url) as s:
        runs = s.exec(select(AgentRun).where(col(AgentRun.tenant) == tenant)).all()
        decisions = s.exec(
            select(DecisionRecord.run_key).where(col(DecisionRecord.tenant) == tenant)
        ).all()
        ledger = s.exec(select(ActionRecord).where(col(ActionRecord.tenant) == tenant)).all()
        send_status = dict(
            s.exec(
                select(StepRun.agent_run_id, StepRun.status).where(
                    col(StepRun.tenant) == tenant, col(StepRun.step) == "send"
                )
            ).all()
        )
        conflict_steps = s.exec(
            select(StepRun.duration_ms).where(
                col(StepRun.tenant) == tenant, col(StepRun.status) == "conflict"
            )
        ).all()
    # A recorded outcome is a final status whose action ran in that execution; `running` is the
    # trace of a crashed execution, and an execution that started after the run was done
    # replays the stored result (action step `cached`): a rerun, counted apart.
    final = ("completed", "held", "failed")
    outcomes: Counter[str] = Counter(
        r.run_key for r in runs if r.status in final and send_status.get(r.id) != "cached"
    )
    replays = sum(1 for r in runs if r.status in final and send_status.get(r.id) == "cached")
    statuses = Counter(r.status for r in runs)
    per_key_decisions = Counter(decisions)
    memory = Memory(tenant, agent.name, url=db_url)
    counted = sum(memory.for_subject(f"s{i}").get("sent", 0) for i in range(10))
    detect = [float(ms) for ms in conflict_steps if ms is not None]
    return {
        "effects": sum(effects.values()),
        "keys_with_effect": len(effects),
        "duplicate_actions": sum(n - 1 for n in effects.values()),
        "run_keys": len(outcomes),
        "outcomes_recorded_twice": sum(1 for n in outcomes.values() if n > 1),
        "replays": replays,
        "statuses": dict(statuses),
        "decisions": len(decisions),
        "decisions_twice": sum(1 for n in per_key_decisions.values() if n > 1),
        "ledger_completed": sum(1 for r in ledger if r.status == "completed"),
        "ledger_rows": len(ledger),
        "memory_count": counted,
        "conflict_detect_ms_median": statistics.median(detect) if detect else None,
        "expected": count,
    }


def run(short: bool = False, *, runs: int | None = None) -> ScenarioResult:
    """Scenario 8: 200 runs (short: 40; or `runs`) executed twice at once by two worker
    processes.

    Example:
        >>> run(short=True).passed  # doctest: +SKIP
        True
    """
    count = runs if runs is not None else (40 if short else 200)
    tenant = f"zombie-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="stalwart-s8-") as tmp, _prefect_api() as api:
        out = Path(tmp)
        db_url = os.environ.get("STALWART_DATABASE_URL") or f"sqlite:///{out / 'state.db'}"
        if not db_url.startswith("sqlite"):
            from agents.store import upgrade

            upgrade(db_url)
        started = time.monotonic()
        failures: list[str] = []
        try:
            reports = run_twice(out, count=count, db_url=db_url, tenant=tenant, api_url=api)
        except RuntimeError as exc:
            reports = []
            failures.append(str(exc)[:300])
        elapsed = time.monotonic() - started
        found = analyse(out, count=count, db_url=db_url, tenant=tenant)
        stalls = stall_frames(out)
        for log in out.glob("stalls.*.log"):
            print(f"== {log.name}\n{log.read_text()}", file=sys.stderr)
    lost = count - found["keys_with_effect"]
    conflicts = found["statuses"].get("conflict", 0)
    if found["outcomes_recorded_twice"]:
        failures.append(f"{found['outcomes_recorded_twice']} runs recorded two outcomes")
    if found["decisions_twice"]:
        failures.append(f"{found['decisions_twice']} runs logged their decision twice")
    if found["ledger_completed"] != count:
        failures.append(f"{found['ledger_completed']} of {count} ledger rows completed")
    if found["memory_count"] != count:
        failures.append(f"learning counted {found['memory_count']} deliveries for {count}")
    if reports and conflicts == 0:
        failures.append("no execution ever met its twin: the scenario proved nothing")
    detect = found["conflict_detect_ms_median"]
    notes = (
        f"{count} runs x 2 processes; {conflicts} executions stopped with ActionInProgress, "
        f"{found['statuses'].get('completed', 0)} completed ({found['replays']} of them "
        "replays: started after the twin had finished the run); "
        f"conflict detected in {detect / 1000 if detect is not None else float('nan'):.1f} s "
        f"median (lease {LEASE_SECONDS:.0f} s, renewed every {LEASE_SECONDS / 3:.0f} s); "
        f"{elapsed:.0f} s wall"
        + (
            f"; twins stalled over {STALL_SECONDS:.0f} s: threads' innermost frames "
            f"{dict(stalls.most_common(4))}"
            if stalls
            else ""
        )
    )
    return ScenarioResult(
        NAME,
        runs=count,
        completed=found["run_keys"],
        lost=lost,
        duplicate_actions=found["duplicate_actions"],
        llm_recalls=None,
        recover_s=None,
        notes=notes,
        failures=failures,
    )


def main(argv: list[str] | None = None) -> None:
    """Print scenario 8's table row, or act as one worker (`--worker COUNT`, as `spawn` runs it)."""
    worker = argparse.ArgumentParser()
    worker.add_argument("--worker", type=int, metavar="COUNT")
    worker.add_argument("--concurrency", type=int, default=8)
    worker.add_argument("--tenant", default="zombie")
    args, rest = worker.parse_known_args(argv)
    if args.worker is not None:
        _worker(args.worker, args.concurrency, args.tenant)
        return
    scenario_main(run, __doc__ or NAME, argv=rest)


if __name__ == "__main__":
    main()
