"""Stalwart core benchmark: runs/s, overhead per step, rerun cost and peak RSS, side by side.

Usage:
    python bench/bench_core.py [--runs 1000] [--overhead-runs 200] [--subflow-runs 30]
                               [--quick] [--postgres URL] [--extra cs,b1] [--only S1,S3]

Workload (see `workload.py`): N runs of a 4-step ticket agent: perceive (dict → pydantic
`Ticket`) → one structured model call (instructor + openai against the bundled model server) →
write an action row → upsert the customer's memory.

Modes, each in its own subprocess (peak RSS per mode; Prefect's ephemeral API start-up and
imports happen in an untimed warm-up batch of 2 inputs):

    a  bare asyncio: semaphore + gather, AsyncOpenAI + instructor, DB writes in `to_thread`
    b  plain Prefect: 4 async `@task`s in one `@flow`, inputs gathered under a semaphore
    c  Stalwart: `agent.batch(inputs, tenant=..., concurrency=C)` with its defaults
    d  Stalwart rerun: the same batch in a new process against c's state DB (all cached)
    e  one Prefect subflow per input (the design Stalwart avoids), on a small sample
    cs Stalwart with sync steps (`--extra cs`; as `flows/ticket_triage.py` writes them)
    b1 plain Prefect with ONE task per input doing all 4 operations (`--extra b1`): what a
       Prefect task run costs when there is one per input instead of one per step

Scenarios (one bundled model server each, in this process; children talk to it over HTTP):

    S1  latency 50 ms, C=32: a, b, c, (cs), e; then d (reported as S4) on c's state DB
    S2  latency 1000 ms, C=64: a, c (c's peak RSS is S5)
    S3  latency 0, C=1, fewer runs: a, b, c; overhead ms/step = (wall - model time) / 4 per run

Each child prints one `BENCH_RESULT {json}` line; this process assembles a results table and a
ratios table (with goals), prints both and writes `bench/results/latest.md` and `latest.json`
(child logs go to `bench/results/logs/`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MARKER = "BENCH_RESULT "
WARMUP_RUNS = 2
MODEL_NAME = "stalwart-test"
MAX_REASKS = 2

MODE_LABELS: dict[str, str] = {
    "a": "a bare asyncio",
    "b": "b plain Prefect",
    "c": "c Stalwart",
    "cs": "c Stalwart (sync steps)",
    "b1": "b1 Prefect, 1 task/input",
    "d": "d Stalwart rerun",
    "e": "e Prefect subflow/input",
}


# =============================================================================================
# Child side: one mode, one process
# =============================================================================================


@dataclass
class ChildArgs:
    """What a child process is asked to measure."""

    mode: str
    scenario: str
    runs: int
    concurrency: int
    latency_ms: float
    model_url: str
    db_url: str
    warmup: int = WARMUP_RUNS


@dataclass
class Measured:
    """What a child measured in its timed section (printed as one JSON line)."""

    mode: str
    scenario: str
    runs: int
    concurrency: int
    latency_ms: float
    wall_s: float = 0.0
    runs_per_s: float = 0.0
    model_s: float = 0.0
    model_timed_calls: int = 0
    model_request_s: float = 0.0
    overhead_ms_per_step: float | None = None
    overhead_ms_per_step_request: float | None = None
    peak_rss_mib: float = 0.0
    model_calls: int = 0
    cpu_s: float = 0.0
    api_cpu_s: float | None = None
    failed: int = 0
    checks: dict[str, Any] = field(default_factory=dict)
    startup_s: float = 0.0
    load_avg: tuple[float, float, float] = (0.0, 0.0, 0.0)
    error: str | None = None


def _model_requests(model_url: str) -> int:
    """Total chat-completion requests the model server has received (its `Stats`)."""
    import httpx

    base = model_url.removesuffix("/").removesuffix("/v1")
    response = httpx.get(f"{base}/_stalwart/stats", timeout=10.0)
    response.raise_for_status()
    return int(response.json()["requests_total"])


def _instructor_client(model_url: str) -> Any:
    import instructor
    import openai

    raw = openai.AsyncOpenAI(base_url=model_url, api_key="bench", max_retries=0, timeout=120.0)
    return instructor.from_openai(raw, mode=instructor.Mode.TOOLS)


async def _decide(client: Any, ticket: Any) -> Any:
    """The model call of modes a, b and e (timed into MODEL_CLOCK)."""
    from workload import MODEL_CLOCK, SYSTEM_PROMPT, TicketDecision, user_prompt

    started = time.perf_counter()
    decision = await client.chat.completions.create(
        model=MODEL_NAME,
        response_model=TicketDecision,
        messages=[
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": user_prompt(ticket)},
        ],
        max_retries=MAX_REASKS,
    )
    MODEL_CLOCK.add(started)
    return decision


Batch = Callable[[list[dict[str, Any]]], Any]


def _run_bare(args: ChildArgs, timer: _Timer) -> None:
    from workload import insert_action, make_engine, parse_ticket, upsert_memory

    engine = make_engine(args.db_url)

    async def main() -> None:
        client = _instructor_client(args.model_url)

        async def batch(items: list[dict[str, Any]]) -> list[BaseException | None]:
            gate = asyncio.Semaphore(args.concurrency)

            async def one(item: dict[str, Any]) -> None:
                async with gate:
                    ticket = parse_ticket(item["raw"])
                    decision = await _decide(client, ticket)
                    await asyncio.to_thread(insert_action, engine, ticket, decision)
                    await asyncio.to_thread(upsert_memory, engine, ticket, decision)

            return list(await asyncio.gather(*(one(i) for i in items), return_exceptions=True))

        await _timed_async(batch, timer)

    asyncio.run(main())
    _sql_checks(engine, timer)


def _prefect_tasks(
    client_box: dict[str, Any], engine: Any, *, one_task: bool = False
) -> Callable[[dict[str, Any]], Any]:
    """The workload as 4 plain Prefect async tasks; returns `one(item)` chaining them.

    With `one_task`, a single task per input does all four operations (mode b1).
    """
    from prefect import task
    from workload import insert_action, parse_ticket, upsert_memory

    @task
    async def whole_run(raw: dict[str, Any]) -> None:
        ticket = parse_ticket(raw)
        decision = await _decide(client_box["client"], ticket)
        await asyncio.to_thread(insert_action, engine, ticket, decision)
        await asyncio.to_thread(upsert_memory, engine, ticket, decision)

    if one_task:

        async def whole(item: dict[str, Any]) -> None:
            await whole_run(item["raw"])

        return whole

    @task
    async def perceive(raw: dict[str, Any]) -> Any:
        return parse_ticket(raw)

    @task
    async def decide(ticket: Any) -> Any:
        return await _decide(client_box["client"], ticket)

    @task
    async def act(ticket: Any, decision: Any) -> str:
        return await asyncio.to_thread(insert_action, engine, ticket, decision)

    @task
    async def learn(ticket: Any, decision: Any) -> None:
        await asyncio.to_thread(upsert_memory, engine, ticket, decision)

    async def one(item: dict[str, Any]) -> None:
        ticket = await perceive(item["raw"])
        decision = await decide(ticket)
        await act(ticket, decision)
        await learn(ticket, decision)

    return one


def _run_prefect(args: ChildArgs, timer: _Timer, *, subflows: bool, one_task: bool = False) -> None:
    from prefect import flow
    from workload import make_engine

    engine = make_engine(args.db_url)
    client_box: dict[str, Any] = {}
    one = _prefect_tasks(client_box, engine, one_task=one_task)

    @flow(name="bench-triage-input")
    async def per_input(item: dict[str, Any]) -> None:
        await one(item)

    @flow(name="bench-triage-batch")
    async def batch_flow(items: list[dict[str, Any]], concurrency: int) -> list[str | None]:
        gate = asyncio.Semaphore(concurrency)

        async def guarded(item: dict[str, Any]) -> None:
            async with gate:
                await (per_input(item) if subflows else one(item))

        outcomes = await asyncio.gather(*(guarded(i) for i in items), return_exceptions=True)
        return [None if o is None else repr(o) for o in outcomes]

    async def main() -> None:
        client_box["client"] = _instructor_client(args.model_url)

        async def batch(items: list[dict[str, Any]]) -> list[str | None]:
            return await batch_flow(items, args.concurrency)

        await _timed_async(batch, timer)

    asyncio.run(main())
    _sql_checks(engine, timer)


def _run_stalwart(args: ChildArgs, timer: _Timer, *, sync: bool) -> None:
    import stalwart_agent
    from workload import TENANT

    from agents.store.engine import upgrade

    if args.db_url.startswith("postgresql"):
        upgrade(args.db_url)
    agent = stalwart_agent.build(sync=sync)

    def outcome(results: list[Any]) -> list[str | None]:
        found: list[str | None] = []
        for r in results:
            found.append(None if r.status == "completed" else f"{r.status}: {r.error}")
            timed_steps.update(r.steps.values())
        return found

    def batch(items: list[dict[str, Any]]) -> list[str | None]:
        return outcome(agent.batch(items, tenant=TENANT, concurrency=args.concurrency))

    async def abatch(items: list[dict[str, Any]]) -> list[str | None]:
        return outcome(await agent.abatch(items, tenant=TENANT, concurrency=args.concurrency))

    timed_steps: Counter[str] = Counter()
    if os.environ.get("BENCH_PROFILE") or os.environ.get("BENCH_ASYNC_BATCH"):
        # pyinstrument samples one thread: run the batch on this thread's loop (`abatch`)
        # instead of Prefect's run-sync loop thread (`batch`). Same flow, same steps.
        asyncio.run(_timed_async(abatch, timer, on_warm=timed_steps.clear))
    else:
        _timed_sync(batch, timer, on_warm=timed_steps.clear)
    from agents.store import queries

    actions = queries.actions(tenant=TENANT)
    memory = queries.memory(tenant=TENANT)
    timer.checks.update(
        {
            "step_statuses": dict(timed_steps),
            "ledger_completed": sum(1 for a in actions if a.status == "completed"),
            "memory_tickets": sum(int((m.value or {}).get("tickets", 0)) for m in memory),
        }
    )


class _Timer:
    """The child's running record: its arguments, the `Measured` result and its checks."""

    def __init__(self, args: ChildArgs, measured: Measured) -> None:
        self.args = args
        self.measured = measured
        self.checks: dict[str, Any] = measured.checks
        self.process_started = time.perf_counter()
        self.sql = Counter[str]()
        _count_sql(self.sql)


def _count_sql(counts: Counter[str]) -> None:
    """Count this process's SQL statements and commits (every SQLAlchemy engine)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import Engine

    def statement(_conn: Any, _cursor: Any, text: str, *_: Any, **__: Any) -> None:
        counts["statements"] += 1
        counts["sql:" + _statement_kind(text)] += 1

    def commit(*_: Any, **__: Any) -> None:
        counts["commits"] += 1

    sa.event.listen(Engine, "before_cursor_execute", statement)
    sa.event.listen(Engine, "commit", commit)
    synchronous = os.environ.get("BENCH_SQLITE_SYNCHRONOUS")
    if synchronous:  # an experiment knob: e.g. NORMAL, to measure the cost of fsync per commit

        def pragma(dbapi_connection: Any, _record: Any) -> None:
            if type(dbapi_connection).__module__.startswith("sqlite3"):
                cursor = dbapi_connection.cursor()
                cursor.execute(f"PRAGMA synchronous={synchronous}")
                cursor.close()

        sa.event.listen(Engine, "connect", pragma)


def _statement_kind(text: str) -> str:
    """`INSERT step_result`, `SELECT memory_item`, ...: a statement's verb and first table."""
    words = text.replace("(", " ").replace(",", " ").replace('"', " ").split()
    if not words:
        return "?"
    verb = words[0].upper()
    if verb == "UPDATE" and len(words) > 1:
        return f"UPDATE {words[1]}"
    upper = [w.upper() for w in words]
    anchor = {"INSERT": "INTO", "SELECT": "FROM", "DELETE": "FROM"}.get(verb)
    if anchor in upper and upper.index(anchor) + 1 < len(words):
        return f"{verb} {words[upper.index(anchor) + 1]}"
    return verb


def _patch_model_requests() -> None:
    """Time every chat-completion request made through openai (`REQUEST_CLOCK`), in any mode.

    This is the model request alone (HTTP and response parsing), without instructor's
    validation or Stalwart's LLM policy around it (answer cache, breaker, recording).
    """
    import functools

    from openai.resources.chat.completions import AsyncCompletions, Completions
    from workload import REQUEST_CLOCK

    original_async = AsyncCompletions.create
    original_sync = Completions.create

    @functools.wraps(original_async)
    async def timed_async(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original_async(self, *args, **kwargs)
        finally:
            REQUEST_CLOCK.add(started)

    @functools.wraps(original_sync)
    def timed_sync(self: Any, *args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return original_sync(self, *args, **kwargs)
        finally:
            REQUEST_CLOCK.add(started)

    AsyncCompletions.create = timed_async  # type: ignore[method-assign]
    Completions.create = timed_sync  # type: ignore[method-assign]


def _warm_inputs(args: ChildArgs) -> list[dict[str, Any]]:
    from workload import make_inputs

    return make_inputs(args.warmup, prefix="warm")


def _timed_inputs(args: ChildArgs) -> list[dict[str, Any]]:
    from workload import make_inputs

    return make_inputs(args.runs, prefix="t")


def _record(timer: _Timer, wall: float, calls: int, outcome: list[Any]) -> None:
    from workload import MODEL_CLOCK, REQUEST_CLOCK

    m = timer.measured
    runs = max(1, m.runs)
    m.checks["sql_statements_per_run"] = round(timer.sql["statements"] / runs, 2)
    m.checks["sql_commits_per_run"] = round(timer.sql["commits"] / runs, 2)
    m.checks["sql_per_run"] = {
        k.removeprefix("sql:"): round(v / runs, 2)
        for k, v in timer.sql.most_common()
        if k.startswith("sql:")
    }
    m.model_request_s = REQUEST_CLOCK.total_s
    m.wall_s = wall
    m.runs_per_s = m.runs / wall if wall > 0 else 0.0
    m.model_s = MODEL_CLOCK.total_s
    m.model_timed_calls = MODEL_CLOCK.calls
    m.model_calls = calls
    failures = [o for o in outcome if o is not None]
    m.failed = len(failures)
    if failures:
        m.checks["first_failure"] = str(failures[0])[:500]
    if m.concurrency == 1 and m.runs:
        m.overhead_ms_per_step = (wall - m.model_s) / m.runs / 4 * 1000
        m.overhead_ms_per_step_request = (wall - m.model_request_s) / m.runs / 4 * 1000


def _timed_sync(batch: Batch, timer: _Timer, on_warm: Callable[[], None] | None = None) -> None:
    from workload import MODEL_CLOCK, REQUEST_CLOCK

    args = timer.args
    warm = batch(_warm_inputs(args))
    if any(o is not None for o in warm):
        raise RuntimeError(f"warm-up failed: {next(o for o in warm if o is not None)}")
    items = _timed_inputs(args)
    timer.measured.startup_s = time.perf_counter() - timer.process_started
    if on_warm is not None:
        on_warm()
    MODEL_CLOCK.reset()
    REQUEST_CLOCK.reset()
    timer.sql.clear()
    before = _model_requests(args.model_url)
    cpu, api_cpu = _cpu_s(), _descendants_cpu_s()
    started = time.perf_counter()
    outcome = batch(items)
    wall = time.perf_counter() - started
    _record_cpu(timer, cpu, api_cpu)
    _record(timer, wall, _model_requests(args.model_url) - before, outcome)


async def _timed_async(
    batch: Batch, timer: _Timer, on_warm: Callable[[], None] | None = None
) -> None:
    from workload import MODEL_CLOCK, REQUEST_CLOCK

    args = timer.args
    workers = os.environ.get("BENCH_DEFAULT_EXECUTOR")
    if workers:  # an experiment knob: the size of asyncio's default executor (`to_thread`)
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(int(workers)))
    warm = await batch(_warm_inputs(args))
    if any(o is not None for o in warm):
        raise RuntimeError(f"warm-up failed: {next(o for o in warm if o is not None)!r}")
    items = _timed_inputs(args)
    timer.measured.startup_s = time.perf_counter() - timer.process_started
    if on_warm is not None:
        on_warm()
    MODEL_CLOCK.reset()
    REQUEST_CLOCK.reset()
    timer.sql.clear()
    before = await asyncio.to_thread(_model_requests, args.model_url)
    cpu, api_cpu = _cpu_s(), _descendants_cpu_s()
    with _profiled(timer):
        started = time.perf_counter()
        outcome = await batch(items)
        wall = time.perf_counter() - started
    _record_cpu(timer, cpu, api_cpu)
    calls = await asyncio.to_thread(_model_requests, args.model_url) - before
    _record(timer, wall, calls, outcome)


def _record_cpu(timer: _Timer, cpu: float, api_cpu: float | None) -> None:
    timer.measured.cpu_s = _cpu_s() - cpu
    after = _descendants_cpu_s()
    if api_cpu is not None and after is not None:
        timer.measured.api_cpu_s = max(0.0, after - api_cpu)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _descendants_cpu_s() -> float | None:
    """CPU seconds of this process's descendants still running (Prefect's temporary API
    server), read from /proc; None where there is no /proc."""
    proc = Path("/proc")
    if not proc.is_dir():
        return None
    parents: dict[int, list[int]] = {}
    cpu: dict[int, float] = {}
    ticks = os.sysconf("SC_CLK_TCK")
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        parents.setdefault(ppid, []).append(pid)
        cpu[pid] = (int(fields[11]) + int(fields[12])) / ticks
    total, todo = 0.0, list(parents.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        total += cpu.get(pid, 0.0)
        todo.extend(parents.get(pid, []))
    return total


@contextlib.contextmanager
def _profiled(timer: _Timer) -> Iterator[None]:
    """With BENCH_PROFILE=<file stem>, profile the timed section with pyinstrument."""
    stem = os.environ.get("BENCH_PROFILE")
    if not stem:
        yield
        return
    from pyinstrument import Profiler

    profiler = Profiler(interval=0.001, async_mode="enabled")
    profiler.start()
    try:
        yield
    finally:
        profiler.stop()
        Path(f"{stem}.txt").write_text(profiler.output_text(unicode=True, show_all=False))
        Path(f"{stem}.html").write_text(profiler.output_html())
        if profiler.last_session is not None:  # re-render: pyinstrument --load <file> ...
            profiler.last_session.save(f"{stem}.pyisession")
        timer.checks["profile"] = f"{stem}.txt"


def _sql_checks(engine: Any, timer: _Timer) -> None:
    from workload import count_rows

    actions, tickets = count_rows(engine)
    timer.checks.update({"action_rows": actions, "memory_tickets": tickets})


def child_main(args: ChildArgs) -> int:
    """Run one mode and print its `BENCH_RESULT` line; the exit code is 0 unless it crashed."""
    sys.path.insert(0, str(BENCH_DIR))
    measured = Measured(
        mode=args.mode,
        scenario=args.scenario,
        runs=args.runs,
        concurrency=args.concurrency,
        latency_ms=args.latency_ms,
    )
    timer = _Timer(args, measured)
    code = 0
    try:
        _patch_model_requests()
        if args.mode == "a":
            _run_bare(args, timer)
        elif args.mode in ("b", "e", "b1"):
            _run_prefect(args, timer, subflows=args.mode == "e", one_task=args.mode == "b1")
        elif args.mode in ("c", "d", "cs"):
            _run_stalwart(args, timer, sync=args.mode == "cs")
        else:
            raise ValueError(f"unknown mode {args.mode!r}")
    except BaseException as exc:  # report, do not hide: the parent shows the error in its table
        measured.error = f"{type(exc).__name__}: {exc}"[:1000]
        traceback.print_exc()
        code = 1
    measured.peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    measured.load_avg = os.getloadavg()
    print(MARKER + json.dumps(asdict(measured)), flush=True)
    sys.stdout.flush()
    # Skip interpreter teardown: Prefect's ephemeral server and its threads may linger for
    # seconds after the last flow; nothing measured depends on it.
    os._exit(code)


# =============================================================================================
# Parent side: model servers, databases, subprocesses, tables
# =============================================================================================


@dataclass
class Scenario:
    """One model-server setting and the modes measured under it."""

    name: str
    latency_ms: float
    concurrency: int
    runs: int
    modes: list[str]
    note: str


@dataclass
class Config:
    """The parent's options."""

    runs: int
    overhead_runs: int
    subflow_runs: int
    postgres: str | None
    extra: list[str]
    only: set[str] | None
    modes: set[str] | None
    timeout_s: float | None
    quick: bool
    keep: bool
    profile: set[str] = field(default_factory=set)
    env: dict[str, str] = field(default_factory=dict)
    run_id: str = ""
    """Names this invocation's logs and report copies (several may share `bench/results/`)."""
    concurrent: set[str] = field(default_factory=set)
    """Other benchmark processes seen running while a child was measured."""


class StateDatabases:
    """Fresh state databases: SQLite files in a temp dir, or temporary PostgreSQL databases."""

    def __init__(self, root: Path, postgres: str | None) -> None:
        self.root = root
        self.postgres = postgres
        self.created: list[str] = []

    def new(self, label: str) -> str:
        if self.postgres is None:
            path = self.root / f"state-{label}.db"
            return f"sqlite:///{path}"
        import psycopg

        name = f"stalwart_bench_{uuid.uuid4().hex[:8]}_{label.lower()}"
        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return f"{self._sqlalchemy_base()}/{name}"

    def _admin_url(self) -> str:
        assert self.postgres is not None
        base = self.postgres.replace("postgresql+psycopg://", "postgresql://")
        return base.rsplit("/", 1)[0] + "/postgres"

    def _sqlalchemy_base(self) -> str:
        assert self.postgres is not None
        base = self.postgres.replace("postgresql://", "postgresql+psycopg://", 1)
        return base.rsplit("/", 1)[0]

    def drop_all(self) -> None:
        if not self.created:
            return
        import psycopg

        with psycopg.connect(self._admin_url(), autocommit=True, connect_timeout=10) as admin:
            for name in self.created:
                admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self.created.clear()


def _child_env(work: Path, model_url: str, db_url: str, prefect_home: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "STALWART_")) and k not in ("SENTRY_DSN",)
    }
    env.update(
        {
            "STALWART_DATABASE_URL": db_url,
            "STALWART_MODEL_URL": model_url,
            "STALWART_DATA_DIR": str(work / "data"),
            "PREFECT_HOME": str(prefect_home),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            # Start-up happens in the untimed warm-up; on a loaded 2-core machine the default
            # 20 s is not always enough for the ephemeral API to come up.
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


def _timeout_for(cfg: Config, scenario: Scenario, mode: str, runs: int) -> float:
    if cfg.timeout_s is not None:
        return cfg.timeout_s
    per_run = 1.5 if mode == "e" else 0.25
    model_s = runs * scenario.latency_ms / 1000 / max(1, scenario.concurrency)
    return 240 + runs * per_run + 3 * model_s


def run_child(
    cfg: Config,
    scenario: Scenario,
    mode: str,
    runs: int,
    model_url: str,
    db_url: str,
    prefect_home: Path,
    work: Path,
) -> dict[str, Any]:
    """Start one child, bounded by a timeout; return its result (or an error row)."""
    label = f"{scenario.name}-{mode}"
    log_dir = RESULTS_DIR / "logs" / cfg.run_id
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{label}.log"
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        json.dumps(
            asdict(
                ChildArgs(
                    mode=mode,
                    scenario="S4" if mode == "d" else scenario.name,
                    runs=runs,
                    concurrency=scenario.concurrency,
                    latency_ms=scenario.latency_ms,
                    model_url=model_url,
                    db_url=db_url,
                )
            )
        ),
    ]
    timeout = _timeout_for(cfg, scenario, mode, runs)
    print(
        f"  {label}: {MODE_LABELS[mode]}, {runs} runs, C={scenario.concurrency}, "
        f"latency {scenario.latency_ms:g} ms (timeout {timeout:.0f} s) ...",
        end="",
        flush=True,
    )
    env = _child_env(work, model_url, db_url, prefect_home)
    env.update(cfg.env)
    if mode in cfg.profile:
        profiles = RESULTS_DIR / "profiles" / cfg.run_id
        profiles.mkdir(parents=True, exist_ok=True)
        env["BENCH_PROFILE"] = str(profiles / label)
    started = time.perf_counter()
    out_path = work / f"{label}.out"
    # Files, not pipes: Prefect's temporary API server (a grandchild) inherits the child's
    # standard streams, and a pipe would stay open until it exits.
    with open(log_path, "w") as log, open(out_path, "w") as out:
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=log,
            text=True,
            env=env,
            cwd=str(BENCH_DIR.parent),
            start_new_session=True,
        )
        try:
            proc.wait(timeout=timeout)
            error = None
        except subprocess.TimeoutExpired:
            error = f"timed out after {timeout:.0f} s"
        _kill_group(proc)  # the child's helpers (Prefect's temporary API server), if any
        proc.wait()
    stdout = out_path.read_text()
    with open(log_path, "a") as log:
        log.write("\n--- stdout ---\n" + stdout)
    elapsed = time.perf_counter() - started
    result: dict[str, Any] | None = None
    for line in (stdout or "").splitlines():
        if line.startswith(MARKER):
            result = json.loads(line[len(MARKER) :])
    if result is None:
        result = asdict(
            Measured(
                mode=mode,
                scenario="S4" if mode == "d" else scenario.name,
                runs=runs,
                concurrency=scenario.concurrency,
                latency_ms=scenario.latency_ms,
                error=error or f"no result (exit code {proc.returncode}); see {log_path}",
            )
        )
    elif error:
        result["error"] = error
    result["process_s"] = elapsed
    result["log"] = str(log_path.relative_to(BENCH_DIR.parent))
    status = (
        f"error: {result['error']}"
        if result.get("error")
        else (
            f"{result['runs_per_s']:.1f} runs/s, {result['peak_rss_mib']:.0f} MiB, "
            f"{result['model_calls']} model calls"
        )
    )
    print(f" {status} ({elapsed:.0f} s)", flush=True)
    return result


def _other_benchmarks() -> list[str]:
    """Other `bench/*.py` benchmark parents running on this machine (they skew every number)."""
    found: list[str] = []
    mine = {os.getpid(), os.getppid()}
    proc = Path("/proc")
    if not proc.is_dir():
        return found
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        script = next((w for w in words[1:3] if w.endswith(".py")), "")
        if "bench" in script and "--child" not in words and Path(script).name.startswith("bench"):
            found.append(f"pid {entry.name}: {Path(script).name}")
    return found


def _kill_group(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def model_server(latency_ms: float) -> Iterator[Any]:
    """One bundled model server with a fixed latency, for one scenario."""
    from agents.modelserver import Faults, ModelServer

    server = ModelServer(port=0, faults=Faults(latency_ms=latency_ms))
    server.start()
    try:
        yield server
    finally:
        server.stop()


def scenarios_for(cfg: Config) -> list[Scenario]:
    s1_modes = ["a", "b", *[m for m in cfg.extra if m == "b1"], "c"]
    s1_modes += [*[m for m in cfg.extra if m == "cs"], "e", "d"]
    found = [
        Scenario("S1", 50, 32, cfg.runs, s1_modes, "throughput at 50 ms model latency"),
        Scenario("S2", 1000, 64, cfg.runs, ["a", "c"], "throughput at 1 s model latency"),
        Scenario("S3", 0, 1, cfg.overhead_runs, ["a", "b", *cfg.extra, "c"], "overhead per step"),
    ]
    if cfg.only:
        found = [s for s in found if s.name in cfg.only]
    if cfg.modes:
        for s in found:
            s.modes = [m for m in s.modes if m in cfg.modes]
    return found


def run_all(cfg: Config) -> list[dict[str, Any]]:
    """Every scenario and mode, one after the other; returns the children's results."""
    work = Path(tempfile.mkdtemp(prefix="stalwart-bench-"))
    databases = StateDatabases(work, cfg.postgres)
    results: list[dict[str, Any]] = []
    try:
        for scenario in scenarios_for(cfg):
            print(f"{scenario.name}: {scenario.note}", flush=True)
            with model_server(scenario.latency_ms) as server:
                stalwart_db: str | None = None
                stalwart_home: Path | None = None
                for mode in scenario.modes:
                    runs = min(cfg.subflow_runs, scenario.runs) if mode == "e" else scenario.runs
                    if mode == "d":
                        if stalwart_db is None or stalwart_home is None:
                            continue
                        db_url, home = stalwart_db, stalwart_home
                    else:
                        db_url = databases.new(f"{scenario.name}_{mode}")
                        home = work / f"prefect-{scenario.name}-{mode}"
                    others = _other_benchmarks()
                    if others:
                        print(f"  warning: other benchmarks are running: {others}", flush=True)
                        cfg.concurrent.update(others)
                    before = server.stats.requests_total
                    parent_cpu = _cpu_s()  # this process only serves the model meanwhile
                    result = run_child(cfg, scenario, mode, runs, server.url, db_url, home, work)
                    result["model_calls_process"] = server.stats.requests_total - before
                    result["modelserver_cpu_s"] = _cpu_s() - parent_cpu
                    results.append(result)
                    if mode == "c":
                        stalwart_db, stalwart_home = db_url, home
    finally:
        databases.drop_all()
        if not cfg.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            print(f"kept work directory {work}")
    return results


# -- tables -----------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _per_run_ms(r: dict[str, Any], key: str) -> float | None:
    value = r.get(key)
    return None if value is None or not r.get("runs") else 1000 * float(value) / r["runs"]


def results_table(results: list[dict[str, Any]]) -> str:
    columns = [
        "mode",
        "scenario",
        "runs",
        "concurrency",
        "latency ms",
        "runs/s",
        "overhead ms/step",
        "peak RSS MiB",
        "model calls",
        "failed",
        "CPU ms/run",
        "API CPU ms/run",
        "SQL commits/run",
        "note",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        failed = bool(r.get("error"))
        checks = r.get("checks", {})
        note = r.get("error") or ""
        if not note and r["mode"] == "d":
            note = f"step statuses {checks.get('step_statuses', {})}"
        if not note and checks.get("first_failure"):
            note = checks["first_failure"][:120]
        cells = [
            MODE_LABELS.get(r["mode"], r["mode"]),
            r["scenario"],
            str(r["runs"]),
            str(r["concurrency"]),
            f"{r['latency_ms']:g}",
            "—" if failed else _fmt(r["runs_per_s"]),
            _fmt(r.get("overhead_ms_per_step"), 2),
            _fmt(r["peak_rss_mib"], 0),
            "—" if failed else str(r["model_calls"]),
            str(r.get("failed", "—")),
            "—" if failed else _fmt(_per_run_ms(r, "cpu_s"), 0),
            "—" if failed else _fmt(_per_run_ms(r, "api_cpu_s"), 0),
            _fmt(checks.get("sql_commits_per_run"), 1),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _find(results: list[dict[str, Any]], scenario: str, mode: str) -> dict[str, Any] | None:
    for r in results:
        if r["scenario"] == scenario and r["mode"] == mode and not r.get("error"):
            return r
    return None


@dataclass
class Ratio:
    """One derived number, its goal and whether it is met."""

    name: str
    value: float | None
    goal: str
    met: bool | None
    shown: str


def ratios(results: list[dict[str, Any]]) -> list[Ratio]:
    found: list[Ratio] = []

    def rate(scenario: str, mode: str) -> float | None:
        r = _find(results, scenario, mode)
        return None if r is None or not r["runs_per_s"] else float(r["runs_per_s"])

    def divide(x: float | None, y: float | None) -> float | None:
        return None if x is None or not y else x / y

    def add(
        name: str,
        value: float | None,
        goal: str,
        check: Callable[[float], bool] | None,
        shown: str | None = None,
    ) -> None:
        met = None if value is None or check is None else check(value)
        found.append(Ratio(name, value, goal, met, shown or _fmt(value, 2)))

    add(
        "S1 c/b runs/s (Stalwart vs plain Prefect)",
        divide(rate("S1", "c"), rate("S1", "b")),
        "≥ 1.5",
        lambda v: v >= 1.5,
    )
    add(
        "S1 c/a runs/s (Stalwart vs bare asyncio)",
        divide(rate("S1", "c"), rate("S1", "a")),
        "—",
        None,
    )
    if _find(results, "S1", "cs"):
        add(
            "S1 cs/c runs/s (sync steps vs async steps)",
            divide(rate("S1", "cs"), rate("S1", "c")),
            "—",
            None,
        )
    if _find(results, "S1", "b1"):
        add(
            "S1 b1/b runs/s (plain Prefect: one task per input vs one per step)",
            divide(rate("S1", "b1"), rate("S1", "b")),
            "—",
            None,
        )
    add(
        "S1 c/e runs/s (one flow per batch vs subflow per input)",
        divide(rate("S1", "c"), rate("S1", "e")),
        "—",
        None,
    )
    add(
        "S2 c/a runs/s at 1 s latency",
        divide(rate("S2", "c"), rate("S2", "a")),
        "≥ 0.9",
        lambda v: v >= 0.9,
    )
    s3c = _find(results, "S3", "c")
    s3b = _find(results, "S3", "b")
    add(
        "S3 c overhead ms/step",
        None if s3c is None else s3c["overhead_ms_per_step"],
        "≤ 5",
        lambda v: v <= 5,
    )
    add(
        "S3 b overhead ms/step (plain Prefect, for reference)",
        None if s3b is None else s3b["overhead_ms_per_step"],
        "—",
        None,
    )
    d = _find(results, "S4", "d")
    c = _find(results, "S1", "c")
    add(
        "S4 rerun model calls",
        None if d is None else float(d["model_calls"]),
        "0",
        lambda v: v == 0,
        None if d is None else str(d["model_calls"]),
    )
    rerun = divide(None if d is None else d["wall_s"], None if c is None else c["wall_s"])
    add(
        "S4 rerun time / first run time",
        rerun,
        "≤ 10%",
        lambda v: v <= 0.10,
        None if rerun is None else f"{rerun:.0%}",
    )
    s2c = _find(results, "S2", "c")
    add(
        "S5 peak RSS of c at C=64 (MiB)",
        None if s2c is None else s2c["peak_rss_mib"],
        "≤ 1024",
        lambda v: v <= 1024,
        None if s2c is None else _fmt(s2c["peak_rss_mib"], 0),
    )
    return found


def ratios_table(found: list[Ratio]) -> str:
    lines = ["| measure | value | goal | met |", "|---|---|---|---|"]
    for r in found:
        met = "—" if r.met is None else ("yes" if r.met else "**no**")
        lines.append(f"| {r.name} | {r.shown} | {r.goal} | {met} |")
    return "\n".join(lines)


def _code_version() -> str:
    """The commit measured, and whether agents/ has uncommitted changes (read-only git)."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "agents"],
            cwd=BENCH_DIR.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}{' + uncommitted changes in agents/' if dirty else ''}"


def write_reports(cfg: Config, results: list[dict[str, Any]], started: datetime) -> str:
    found = ratios(results)
    version = _code_version()
    load = [r.get("load_avg", [0, 0, 0])[0] for r in results]
    header = (
        f"# Stalwart core benchmark\n\n"
        f"{started:%Y-%m-%d %H:%M} UTC, commit {version}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, "
        f"state DB {'PostgreSQL' if cfg.postgres else 'SQLite'}, "
        f"runs {cfg.runs} (S3: {cfg.overhead_runs}, e: {cfg.subflow_runs})"
        f"{', quick' if cfg.quick else ''}; 1-min load average at the end of each child: "
        f"{', '.join(f'{x:.1f}' for x in load)}\n"
    )
    if cfg.concurrent:
        header += (
            f"\n**Warning**: other benchmarks ran at the same time "
            f"({', '.join(sorted(cfg.concurrent))}): the numbers are skewed.\n"
        )
    markdown = "\n".join(
        [
            header,
            "## Results\n",
            results_table(results),
            "\n## Ratios and goals\n",
            ratios_table(found),
            "",
        ]
    )
    payload = {
        "started": started.isoformat(),
        "config": {k: (sorted(v) if isinstance(v, set) else v) for k, v in asdict(cfg).items()},
        "python": platform.python_version(),
        "code_version": version,
        "cpus": os.cpu_count(),
        "results": results,
        "ratios": [asdict(r) for r in found],
    }
    if cfg.postgres:
        payload["config"]["postgres"] = "<given>"
    text = json.dumps(payload, indent=2, default=str)
    runs_dir = RESULTS_DIR / "runs"
    runs_dir.mkdir(parents=True, exist_ok=True)
    for name, content in (("md", markdown), ("json", text)):
        (runs_dir / f"{cfg.run_id}.{name}").write_text(content)
        staged = RESULTS_DIR / f".latest.{name}.{os.getpid()}"
        staged.write_text(content)
        os.replace(staged, RESULTS_DIR / f"latest.{name}")  # atomic: no half-written report
    return markdown


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=None, help="runs in S1/S2 (default 1000)")
    parser.add_argument("--overhead-runs", type=int, default=None, help="runs in S3 (200)")
    parser.add_argument("--subflow-runs", type=int, default=None, help="runs of mode e (30)")
    parser.add_argument("--quick", action="store_true", help="100 runs, 20 in S3, 10 in e")
    parser.add_argument("--postgres", metavar="URL", help="state DBs on PostgreSQL (temporary)")
    parser.add_argument(
        "--extra",
        default="",
        help="optional modes added to S1 and S3: cs (Stalwart, sync steps), b1 (Prefect, one "
        "task per input)",
    )
    parser.add_argument("--only", help="comma-separated scenarios, e.g. S1,S3")
    parser.add_argument("--modes", help="comma-separated modes to run (default: all)")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per child")
    parser.add_argument("--keep", action="store_true", help="keep the temp work directory")
    parser.add_argument(
        "--profile",
        metavar="MODES",
        help="comma-separated modes (e.g. b,c) whose timed section pyinstrument profiles "
        "(results/profiles/; not for the published numbers: profiling slows them down)",
    )
    parser.add_argument(
        "--env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for every child, e.g. PREFECT_LOGGING_LEVEL=WARNING (repeatable)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    ns = parse_args(argv)
    if ns.child:
        return child_main(ChildArgs(**json.loads(ns.child)))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    cfg = Config(
        runs=ns.runs or (100 if ns.quick else 1000),
        overhead_runs=ns.overhead_runs or (20 if ns.quick else 200),
        subflow_runs=ns.subflow_runs or (10 if ns.quick else 30),
        postgres=ns.postgres,
        extra=[m.strip() for m in ns.extra.split(",") if m.strip() in ("cs", "b1")],
        only={s.strip().upper() for s in ns.only.split(",")} if ns.only else None,
        modes={m.strip() for m in ns.modes.split(",")} if ns.modes else None,
        timeout_s=ns.timeout,
        quick=ns.quick,
        keep=ns.keep,
        profile={m.strip() for m in ns.profile.split(",")} if ns.profile else set(),
        env=dict(item.split("=", 1) for item in ns.env),
    )
    started = datetime.now(UTC)
    cfg.run_id = f"{started:%Y%m%dT%H%M%S}-{os.getpid()}"
    results = run_all(cfg)
    markdown = write_reports(cfg, results, started)
    print()
    print(markdown)
    print(f"written: {RESULTS_DIR / 'latest.md'} and latest.json")
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
