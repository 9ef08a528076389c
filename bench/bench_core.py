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

from agents.execution.recording import SERVER_SETTINGS, TEMPORARY_SERVER_SETTINGS

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
MARKER = "BENCH_RESULT "
WARMUP_RUNS = 2
MODEL_NAME = "stalwart-test"
MAX_REASKS = 2

MODE_LABELS: dict[str, str] = {
    "a": "a bare asyncio",
    "b": "b plain Prefect",
    "bt": "bt plain Prefect, server tuned",
    "c": "c Stalwart",
    "cs": "c Stalwart (sync steps)",
    "b1": "b1 Prefect, 1 task/input",
    "d": "d Stalwart rerun",
    "e": "e Prefect subflow/input",
    "p": "p Pydantic AI x Prefect",
}
NOMINAL_TASK_RUNS: dict[str, int] = {
    "b": 4,
    "bt": 4,
    "b1": 1,
    "e": 5,
    "p": 4,
    "c": 4,
    "cs": 4,
    "d": 0,
}
"""Task runs per run each mode recorded on an idle API (warm-up, 2026-12-06): the recorded
clock's expectation when the warm-up finds none (an API too busy to record them in time)."""
TUNED_MODES = frozenset({"bt", "c", "cs", "d"})
"""Modes whose Prefect API server runs with Stalwart's settings (`agents.execution.recording`:
`TEMPORARY_SERVER_SETTINGS` on a temporary server, which Stalwart applies itself, and
`SERVER_SETTINGS` on a real one, as documented); `bt` is plain Prefect given the same settings,
to show what they alone are worth. b and p keep Prefect's defaults, as their users get them."""
FOLLOWUP_RUNS = 20
"""New inputs of the second, small batch after the timed one (S1 and S2; not S3, d, e)."""


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
    followup_runs: int = 0
    """New inputs of a second, small batch run right after the timed one (0: none)."""
    rerun_same_process: bool = False
    """Rerun the timed inputs in the same process once the first batch is recorded."""
    recorded_bound_s: float = 300.0
    """How long the recorded clock may poll the API after the timed batch."""


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
    skipped: str | None = None
    # -- issue #19: what users get (see clocks.py) --
    recorded_s: float | None = None
    """Batch call to every task run of the batch terminal in the API (= wall_s for mode a)."""
    recorded_runs_per_s: float | None = None
    overhead_ms_per_step_recorded: float | None = None
    task_runs_per_run: float | None = None
    """Task runs one run records in this mode, counted on the warm-up batch."""
    recorded: dict[str, Any] | None = None
    """The recorded clock's details (`clocks.Recorded`)."""
    api_cpu_recorded_s: float | None = None
    events_dropped: dict[str, int] = field(default_factory=dict)
    """'dropping message' warnings per phase: warmup, timed, until_recorded, after."""
    followup: dict[str, Any] | None = None
    """The second, small batch of new inputs in the same process: gap to its flow run, wall."""
    rerun_same_process: dict[str, Any] | None = None
    """The timed inputs again in the same process (all cached for Stalwart): wall, fraction."""


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


def _side_tasks(engine: Any) -> tuple[Any, Any, Any]:
    """perceive, act and learn as plain Prefect async tasks: modes b and p share them, so only
    the decision differs between plain Prefect and Pydantic AI x Prefect."""
    from prefect import task
    from workload import insert_action, parse_ticket, upsert_memory

    @task
    async def perceive(raw: dict[str, Any]) -> Any:
        return parse_ticket(raw)

    @task
    async def act(ticket: Any, decision: Any) -> str:
        return await asyncio.to_thread(insert_action, engine, ticket, decision)

    @task
    async def learn(ticket: Any, decision: Any) -> None:
        await asyncio.to_thread(upsert_memory, engine, ticket, decision)

    return perceive, act, learn


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

    perceive, act, learn = _side_tasks(engine)

    @task
    async def decide(ticket: Any) -> Any:
        return await _decide(client_box["client"], ticket)

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
    statuses: dict[str, int] = {}

    def on_timed() -> None:  # the timed batch's step statuses, not the follow-ups'
        statuses.update(timed_steps)

    if os.environ.get("BENCH_PROFILE") or os.environ.get("BENCH_ASYNC_BATCH"):
        # pyinstrument samples one thread: run the batch on this thread's loop (`abatch`)
        # instead of Prefect's run-sync loop thread (`batch`). Same flow, same steps.
        asyncio.run(_timed_async(abatch, timer, on_warm=timed_steps.clear, on_timed=on_timed))
    else:
        _timed_sync(batch, timer, on_warm=timed_steps.clear, on_timed=on_timed)
    from agents.store import queries

    actions = queries.actions(tenant=TENANT)
    memory = queries.memory(tenant=TENANT)
    timer.checks.update(
        {
            "step_statuses": statuses,
            "ledger_completed": sum(1 for a in actions if a.status == "completed"),
            "memory_tickets": sum(int((m.value or {}).get("tickets", 0)) for m in memory),
        }
    )


def pydantic_ai_missing() -> str | None:
    """Why mode p cannot run here (None if it can): it needs the optional `bench` extra."""
    import importlib.util

    for module in ("pydantic_ai", "pydantic_ai.models.openai", "prefect"):
        try:
            if importlib.util.find_spec(module) is None:
                raise ImportError(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[bench]')"
    try:
        import pydantic_ai.durable_exec.prefect  # noqa: F401
    except ImportError as exc:
        return f"pydantic_ai.durable_exec.prefect: {exc} (pip install -e '.[bench]')"
    return None


def _pydantic_ai_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("pydantic-ai-slim")


def _run_pydantic_ai(args: ChildArgs, timer: _Timer) -> None:
    """Mode p: the workload with Pydantic AI's Prefect durability, the peer the issue names.

    perceive, act and learn are Prefect tasks as in mode b; the decision is one
    `Agent(output_type=TicketDecision, capabilities=[PrefectDurability()])` run, whose model
    request Pydantic AI makes a Prefect task (result persisted, its default cache policy),
    against the bundled model server through an OpenAI-compatible provider. One flow per batch,
    the runs gathered under a semaphore at concurrency C, like mode b.
    """
    from prefect import flow
    from pydantic_ai import Agent
    from pydantic_ai.durable_exec.prefect import PrefectDurability
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider
    from workload import (
        AGENT_NAME,
        SYSTEM_PROMPT,
        TicketDecision,
        make_engine,
        user_prompt,
    )

    timer.checks["pydantic_ai_version"] = _pydantic_ai_version()
    engine = make_engine(args.db_url)
    model = OpenAIChatModel(
        MODEL_NAME, provider=OpenAIProvider(base_url=args.model_url, api_key="bench")
    )
    agent = Agent(
        model,
        name=AGENT_NAME.replace("-", "_"),
        output_type=TicketDecision,
        instructions=SYSTEM_PROMPT,
        retries=MAX_REASKS,
        capabilities=[PrefectDurability()],
    )

    perceive, act, learn = _side_tasks(engine)

    async def one(item: dict[str, Any]) -> None:
        ticket = await perceive(item["raw"])
        result = await agent.run(user_prompt(ticket))
        await act(ticket, result.output)
        await learn(ticket, result.output)

    @flow(name="bench-triage-batch-pydantic-ai")
    async def batch_flow(items: list[dict[str, Any]], concurrency: int) -> list[str | None]:
        gate = asyncio.Semaphore(concurrency)

        async def guarded(item: dict[str, Any]) -> None:
            async with gate:
                await one(item)

        outcomes = await asyncio.gather(*(guarded(i) for i in items), return_exceptions=True)
        return [None if o is None else repr(o) for o in outcomes]

    async def main() -> None:
        async def batch(items: list[dict[str, Any]]) -> list[str | None]:
            return await batch_flow(items, args.concurrency)

        await _timed_async(batch, timer)

    asyncio.run(main())
    _sql_checks(engine, timer)


class _Timer:
    """The child's running record: its arguments, the `Measured` result and its checks."""

    def __init__(self, args: ChildArgs, measured: Measured) -> None:
        self.args = args
        self.measured = measured
        self.checks: dict[str, Any] = measured.checks
        self.process_started = time.perf_counter()
        self.sql = Counter[str]()
        _count_sql(self.sql)
        self.clocks = _Clocks(self)


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


class _Clocks:
    """The child's clocks around its batches (issue #19): warm-up task runs per run, the client
    and recorded clocks of the timed batch, the follow-up batches, the API server's CPU and the
    dropped-message warnings between the phases. Mode a has no API: both clocks are equal."""

    def __init__(self, timer: _Timer) -> None:
        from clocks import log_offsets

        self.timer = timer
        self.args = timer.args
        self.prefect = self.args.mode != "a"
        self.marks: dict[str, dict[str, int]] = {"start": log_offsets()}
        self.warm_utc = utc_now()
        self.timed_ids: list[str] = []
        self.started = 0.0
        self.started_utc = self.warm_utc
        self.cpu = 0.0
        self.api_cpu: float | None = None
        self.recorded: Any = None
        self.returned = 0.0
        self.followup_after_return_s: float | None = None
        self.followup_error: str | None = None
        self.followup_error_after_s: float | None = None

    def warm_begin(self) -> None:
        self.warm_utc = utc_now()

    def warm_end(self) -> None:
        """Learn how many task runs one run records here (the warm-up batch, settled)."""
        from clocks import batch_flow_runs, log_offsets, settle_task_runs

        if self.prefect:
            try:
                ids = batch_flow_runs(self.warm_utc, utc_now())
                _total, terminal = settle_task_runs(ids)
                per_run = terminal / max(1, self.args.warmup)
                nominal = NOMINAL_TASK_RUNS.get(self.args.mode)
                if per_run == 0 and nominal:
                    self.timer.checks["expected_task_runs_from"] = (
                        f"nominal {nominal}/run: the warm-up's task runs were not recorded"
                    )
                    per_run = float(nominal)
                self.timer.measured.task_runs_per_run = per_run
            except Exception as exc:
                self.timer.checks["warmup_task_runs_error"] = repr(exc)[:300]
        self.marks["timed"] = log_offsets()

    def timed_begin(self) -> None:
        from clocks import api_cpu_s

        self.cpu, self.api_cpu = _cpu_s(), api_cpu_s()
        self.started_utc = utc_now()
        self.started = time.perf_counter()

    def timed_end(self) -> float:
        """The client clock stops: record CPU, start the recorded clock; returns the wall."""
        from clocks import RecordedClock, api_cpu_s, batch_flow_runs, log_offsets

        self.returned = time.perf_counter()
        wall = self.returned - self.started
        returned_utc = utc_now()
        m = self.timer.measured
        m.cpu_s = _cpu_s() - self.cpu
        after = api_cpu_s()
        if self.api_cpu is not None and after is not None:
            m.api_cpu_s = max(0.0, after - self.api_cpu)
        self.marks["returned"] = log_offsets()
        if not self.prefect:
            return wall
        try:
            self.timed_ids = batch_flow_runs(self.started_utc, returned_utc)
        except Exception as exc:
            self.timer.checks["recorded_error"] = repr(exc)[:300]
            return wall
        per_run = m.task_runs_per_run
        expected = None if per_run is None else round(per_run * self.args.runs)
        self.recorded = RecordedClock(
            self.timed_ids,
            expected,
            self.started,
            self.args.recorded_bound_s,
            api_cpu=api_cpu_s,
            api_cpu_start=self.api_cpu,
        ).start()
        return wall

    def followup_begin(self) -> tuple[datetime, float, int]:
        now = time.perf_counter()
        self.followup_after_return_s = now - self.returned
        return utc_now(), now, _model_requests(self.args.model_url)

    def followup_failed(self, began: tuple[datetime, float, int], exc: Exception) -> list[Any]:
        """A follow-up batch call that raised: one failure per input, the error kept."""
        self.followup_error = f"{type(exc).__name__}: {exc}"[:500]
        self.followup_error_after_s = time.perf_counter() - began[1]
        traceback.print_exc()
        return [self.followup_error]

    def followup_end(
        self, began: tuple[datetime, float, int], outcome: list[Any], what: str
    ) -> dict[str, Any]:
        from clocks import first_flow_run_start

        called_utc, called, requests = began
        wall = time.perf_counter() - called
        found: dict[str, Any] = {
            "inputs": what,
            "runs": len(outcome),
            "wall_s": wall,
            "failed": sum(1 for o in outcome if o is not None),
            "model_calls": _model_requests(self.args.model_url) - requests,
            "called_after_timed_return_s": self.followup_after_return_s,
        }
        if self.followup_error is not None:
            found["error"] = self.followup_error
            found["runs"] = None
            self.followup_error = None
        try:
            start = first_flow_run_start(called_utc, set(self.timed_ids))
            found["gap_s"] = None if start is None else (start - called_utc).total_seconds()
        except Exception as exc:
            found["gap_error"] = repr(exc)[:300]
        return found

    def finish_recorded(self) -> None:
        """Wait for the recorded clock (bounded) and fill its figures."""
        from clocks import log_offsets

        m = self.timer.measured
        if not self.prefect:
            m.recorded_s = m.wall_s
            m.recorded_runs_per_s = m.runs_per_s
            m.overhead_ms_per_step_recorded = m.overhead_ms_per_step
            m.api_cpu_recorded_s = m.api_cpu_s
        elif self.recorded is not None:
            r = self.recorded.wait()
            m.recorded = r.as_dict()
            m.recorded_s = r.recorded_s
            m.api_cpu_recorded_s = r.api_cpu_s
            if r.recorded_s:
                m.recorded_runs_per_s = m.runs / r.recorded_s
                if m.concurrency == 1 and m.runs:
                    model_s = m.model_s if m.model_timed_calls else m.model_request_s
                    m.overhead_ms_per_step_recorded = (r.recorded_s - model_s) / m.runs / 4 * 1000
        self.marks["recorded"] = log_offsets()

    def finish(self) -> None:
        """Count the dropped-message warnings per phase (every log the API server writes to)."""
        from clocks import count_drops, log_files, log_offsets

        self.marks["end"] = log_offsets()
        phases = [
            ("warmup", "start", "timed"),
            ("timed", "timed", "returned"),
            ("until_recorded", "returned", "recorded"),
            ("after", "recorded", "end"),
        ]
        drops: dict[str, int] = {}
        for name, path in log_files().items():
            for phase, first, last in phases:
                if first not in self.marks or last not in self.marks:
                    continue
                start, end = self.marks[first].get(name, 0), self.marks[last].get(name)
                drops[phase] = drops.get(phase, 0) + count_drops(path, start, end)
        self.timer.measured.events_dropped = drops
        self.timer.checks["logs_marked"] = sorted(log_files())


def utc_now() -> datetime:
    return datetime.now(UTC)


def _begin_timed(timer: _Timer, on_warm: Callable[[], None] | None) -> list[dict[str, Any]]:
    from workload import MODEL_CLOCK, REQUEST_CLOCK

    items = _timed_inputs(timer.args)
    timer.measured.startup_s = time.perf_counter() - timer.process_started
    if on_warm is not None:
        on_warm()
    MODEL_CLOCK.reset()
    REQUEST_CLOCK.reset()
    timer.sql.clear()
    return items


def _followup_inputs(args: ChildArgs) -> list[dict[str, Any]]:
    from workload import make_inputs

    return make_inputs(args.followup_runs, prefix="next")


def _timed_sync(
    batch: Batch,
    timer: _Timer,
    on_warm: Callable[[], None] | None = None,
    on_timed: Callable[[], None] | None = None,
) -> None:
    args = timer.args
    clocks = timer.clocks
    clocks.warm_begin()
    warm = batch(_warm_inputs(args))
    if any(o is not None for o in warm):
        raise RuntimeError(f"warm-up failed: {next(o for o in warm if o is not None)}")
    clocks.warm_end()
    items = _begin_timed(timer, on_warm)
    before = _model_requests(args.model_url)
    clocks.timed_begin()
    outcome = batch(items)
    wall = clocks.timed_end()
    _record(timer, wall, _model_requests(args.model_url) - before, outcome)
    if on_timed is not None:
        on_timed()
    if args.followup_runs:
        began = clocks.followup_begin()
        try:
            done = batch(_followup_inputs(args))
        except Exception as exc:  # e.g. the busy API answers 503: what a user gets, reported
            done = clocks.followup_failed(began, exc)
        timer.measured.followup = clocks.followup_end(began, done, "new")
    clocks.finish_recorded()
    if args.rerun_same_process:
        began = clocks.followup_begin()
        try:
            done = batch(items)
        except Exception as exc:
            done = clocks.followup_failed(began, exc)
        rerun = clocks.followup_end(began, done, "same as the timed batch")
        rerun["fraction_of_first"] = rerun["wall_s"] / wall if wall else None
        timer.measured.rerun_same_process = rerun


async def _timed_async(
    batch: Batch,
    timer: _Timer,
    on_warm: Callable[[], None] | None = None,
    on_timed: Callable[[], None] | None = None,
) -> None:
    args = timer.args
    clocks = timer.clocks
    workers = os.environ.get("BENCH_DEFAULT_EXECUTOR")
    if workers:  # an experiment knob: the size of asyncio's default executor (`to_thread`)
        from concurrent.futures import ThreadPoolExecutor

        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(int(workers)))
    clocks.warm_begin()
    warm = await batch(_warm_inputs(args))
    if any(o is not None for o in warm):
        raise RuntimeError(f"warm-up failed: {next(o for o in warm if o is not None)!r}")
    clocks.warm_end()
    items = _begin_timed(timer, on_warm)
    before = await asyncio.to_thread(_model_requests, args.model_url)
    with _profiled(timer):
        clocks.timed_begin()
        outcome = await batch(items)
        wall = clocks.timed_end()
    calls = await asyncio.to_thread(_model_requests, args.model_url) - before
    _record(timer, wall, calls, outcome)
    if on_timed is not None:
        on_timed()
    if args.followup_runs:
        began = clocks.followup_begin()
        try:
            done = await batch(_followup_inputs(args))
        except Exception as exc:  # e.g. the busy API answers 503: what a user gets, reported
            done = clocks.followup_failed(began, exc)
        timer.measured.followup = clocks.followup_end(began, done, "new")
    clocks.finish_recorded()
    if args.rerun_same_process:
        began = clocks.followup_begin()
        try:
            done = await batch(items)
        except Exception as exc:
            done = clocks.followup_failed(began, exc)
        rerun = clocks.followup_end(began, done, "same as the timed batch")
        rerun["fraction_of_first"] = rerun["wall_s"] / wall if wall else None
        timer.measured.rerun_same_process = rerun


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


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
        elif args.mode in ("b", "bt", "e", "b1"):
            _run_prefect(args, timer, subflows=args.mode == "e", one_task=args.mode == "b1")
        elif args.mode in ("c", "d", "cs"):
            _run_stalwart(args, timer, sync=args.mode == "cs")
        elif args.mode == "p":
            _run_pydantic_ai(args, timer)
        else:
            raise ValueError(f"unknown mode {args.mode!r}")
    except BaseException as exc:  # report, do not hide: the parent shows the error in its table
        measured.error = f"{type(exc).__name__}: {exc}"[:1000]
        traceback.print_exc()
        code = 1
    try:
        timer.clocks.finish()
    except Exception as exc:
        measured.checks["drops_error"] = repr(exc)[:300]
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
    server: str = "ephemeral"
    """`ephemeral` (each child's temporary API server) or `postgres` (one real Prefect server
    per mode (d reuses c's), on a temporary PostgreSQL database)."""
    messaging: str = "memory"
    recorded_bound_s: float = 300.0
    followup_runs: int = FOLLOWUP_RUNS
    notes: list[str] = field(default_factory=list)
    run_id: str = ""
    code_version: str = ""
    """The commit measured, read when the invocation starts (not when the report is written)."""
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
    rerun = 2 if scenario.name == "S1" and mode in ("c", "cs") else 1  # the same-process rerun
    return 300 + rerun * runs * per_run + 3 * model_s + cfg.recorded_bound_s


def run_child(
    cfg: Config,
    scenario: Scenario,
    mode: str,
    runs: int,
    model_url: str,
    db_url: str,
    prefect_home: Path,
    work: Path,
    api_env: dict[str, str] | None = None,
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
                    followup_runs=(
                        cfg.followup_runs
                        if scenario.name != "S3" and mode not in ("a", "d", "e")
                        else 0
                    ),
                    rerun_same_process=scenario.name == "S1" and mode in ("c", "cs"),
                    recorded_bound_s=cfg.recorded_bound_s,
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
    if mode in TUNED_MODES:  # inherited by the temporary API server the child starts
        env.update(TEMPORARY_SERVER_SETTINGS)
    env.update(api_env or {})
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
    from clocks import count_drops

    drops_total = count_drops(log_path) + count_drops(out_path)
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
    result["events_dropped_child_lifetime"] = drops_total
    result["log"] = str(log_path.relative_to(BENCH_DIR.parent))
    recorded = result.get("recorded_runs_per_s")
    status = (
        f"error: {result['error']}"
        if result.get("error")
        else (
            f"{result['runs_per_s']:.1f} runs/s client, "
            f"{'—' if recorded is None else f'{recorded:.1f}'} recorded, "
            f"{result['peak_rss_mib']:.0f} MiB, {result['model_calls']} model calls, "
            f"{sum(result.get('events_dropped', {}).values())} events dropped"
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
    s1_modes = ["a", "b", "bt", *[m for m in cfg.extra if m == "b1"], "p", "c"]
    s1_modes += [*[m for m in cfg.extra if m == "cs"], "e", "d"]
    found = [
        Scenario("S1", 50, 32, cfg.runs, s1_modes, "throughput at 50 ms model latency"),
        Scenario("S2", 1000, 64, cfg.runs, ["a", "c"], "throughput at 1 s model latency"),
        Scenario(
            "S3",
            0,
            1,
            cfg.overhead_runs,
            ["a", "b", "bt", *cfg.extra, "p", "c"],
            "overhead per step",
        ),
    ]
    if cfg.only:
        found = [s for s in found if s.name in cfg.only]
    if cfg.modes:
        for s in found:
            s.modes = [m for m in s.modes if m in cfg.modes]
    return found


def _skipped(scenario: Scenario, mode: str, runs: int, why: str) -> dict[str, Any]:
    row = asdict(
        Measured(
            mode=mode,
            scenario=scenario.name,
            runs=runs,
            concurrency=scenario.concurrency,
            latency_ms=scenario.latency_ms,
            skipped=why,
        )
    )
    print(f"  {scenario.name}-{mode}: skipped ({why})", flush=True)
    return row


@contextlib.contextmanager
def api_server(cfg: Config, scenario: Scenario, mode: str) -> Iterator[dict[str, str]]:
    """The Prefect API one mode's child uses: {} for its own ephemeral server, or the
    environment pointing it at a real Prefect server on PostgreSQL (`--server postgres`; none
    for mode a, which has no Prefect)."""
    if cfg.server != "postgres" or mode == "a":
        yield {}
        return
    from prefect_server import PrefectServer

    label = f"{scenario.name}-{mode}"
    log = RESULTS_DIR / "logs" / cfg.run_id / f"server-{label}.log"
    tuned = SERVER_SETTINGS if mode in TUNED_MODES else {}
    with PrefectServer(
        log, label.replace("-", "_"), messaging=cfg.messaging, settings=tuned
    ) as server:
        print(
            f"  {label}: Prefect server on PostgreSQL at {server.api_url} "
            f"(healthy after {server.started_s:.1f} s, log {log.name})",
            flush=True,
        )
        if server.skipped_messaging and server.skipped_messaging not in cfg.notes:
            print(f"  note: {server.skipped_messaging}", flush=True)
            cfg.notes.append(server.skipped_messaging)
            cfg.messaging = "memory (redis asked for; prefect-redis is not installed)"
        yield server.child_env()


def run_all(cfg: Config) -> list[dict[str, Any]]:
    """Every scenario and mode, one after the other; returns the children's results."""
    work = Path(tempfile.mkdtemp(prefix="stalwart-bench-"))
    databases = StateDatabases(work, cfg.postgres)
    results: list[dict[str, Any]] = []
    peer_missing = pydantic_ai_missing()
    if peer_missing:
        note = f"mode p (Pydantic AI x Prefect) skipped: {peer_missing}"
        print(note, flush=True)
        cfg.notes.append(note)
    try:
        for scenario in scenarios_for(cfg):
            print(f"{scenario.name}: {scenario.note}", flush=True)
            with model_server(scenario.latency_ms) as server, contextlib.ExitStack() as kept:
                stalwart_db: str | None = None
                stalwart_home: Path | None = None
                stalwart_api: dict[str, str] = {}
                for mode in scenario.modes:
                    runs = min(cfg.subflow_runs, scenario.runs) if mode == "e" else scenario.runs
                    if mode == "p" and peer_missing:
                        results.append(_skipped(scenario, mode, runs, peer_missing))
                        continue
                    if mode == "d" and (stalwart_db is None or stalwart_home is None):
                        continue
                    # One API server per mode, stopped after it (only c's is kept, for d): a
                    # mode's event backlog must not slow, or drop the events of, the next mode.
                    with contextlib.ExitStack() as apis:
                        if mode == "d":
                            assert stalwart_db is not None and stalwart_home is not None
                            db_url, home, api = stalwart_db, stalwart_home, stalwart_api
                        else:
                            db_url = databases.new(f"{scenario.name}_{mode}")
                            home = work / f"prefect-{scenario.name}-{mode}"
                            api = apis.enter_context(api_server(cfg, scenario, mode))
                        if mode == "c" and "d" in scenario.modes:
                            kept.enter_context(apis.pop_all())
                        others = _other_benchmarks()
                        if others:
                            print(f"  warning: other benchmarks are running: {others}", flush=True)
                            cfg.concurrent.update(others)
                        before = server.stats.requests_total
                        parent_cpu = _cpu_s()  # this process only serves the model meanwhile
                        result = run_child(
                            cfg, scenario, mode, runs, server.url, db_url, home, work, api
                        )
                        result["model_calls_process"] = server.stats.requests_total - before
                        result["modelserver_cpu_s"] = _cpu_s() - parent_cpu
                        results.append(result)
                    if mode == "c":
                        stalwart_db, stalwart_home, stalwart_api = db_url, home, api
                    if mode == "d":
                        kept.close()  # c's server, kept for d
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


def _task_runs_cell(r: dict[str, Any]) -> str:
    rec = r.get("recorded") or {}
    if not rec:
        return "—"
    expected = rec.get("expected_task_runs")
    return f"{rec.get('terminal_task_runs', 0)}/{'?' if expected is None else expected}"


def _drops(r: dict[str, Any]) -> int | None:
    """Dropped-message warnings from the timed batch on (the warm-up's are left out)."""
    found = r.get("events_dropped")
    if found is None or r.get("skipped"):
        return None
    return sum(v for k, v in found.items() if k != "warmup")


def results_table(results: list[dict[str, Any]]) -> str:
    columns = [
        "mode",
        "scenario",
        "runs",
        "concurrency",
        "latency ms",
        "runs/s client",
        "runs/s recorded",
        "client s",
        "recorded s",
        "task runs terminal/expected",
        "events dropped",
        "overhead ms/step client",
        "overhead ms/step recorded",
        "peak RSS MiB",
        "model calls",
        "failed",
        "client CPU ms/run",
        "API CPU ms/run to client",
        "API CPU ms/run to recorded",
        "SQL commits/run",
        "note",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        failed = bool(r.get("error") or r.get("skipped"))
        checks = r.get("checks", {})
        rec = r.get("recorded") or {}
        note = r.get("error") or (f"skipped: {r['skipped']}" if r.get("skipped") else "")
        if not note and rec.get("gave_up"):
            note = f"recorded clock: {rec['gave_up']}"
        if not note and r["mode"] == "d":
            note = f"step statuses {checks.get('step_statuses', {})}"
        if not note and checks.get("first_failure"):
            note = checks["first_failure"][:120]
        drops = _drops(r)
        cells = [
            MODE_LABELS.get(r["mode"], r["mode"]),
            r["scenario"],
            str(r["runs"]),
            str(r["concurrency"]),
            f"{r['latency_ms']:g}",
            "—" if failed else _fmt(r["runs_per_s"]),
            "—" if failed else _fmt(r.get("recorded_runs_per_s")),
            "—" if failed else _fmt(r.get("wall_s"), 2),
            "—" if failed else _fmt(r.get("recorded_s"), 2),
            "—" if failed else _task_runs_cell(r),
            "—" if failed or drops is None else str(drops),
            _fmt(r.get("overhead_ms_per_step"), 2),
            _fmt(r.get("overhead_ms_per_step_recorded"), 2),
            "—" if r.get("skipped") else _fmt(r["peak_rss_mib"], 0),
            "—" if failed else str(r["model_calls"]),
            "—" if r.get("skipped") else str(r.get("failed", "—")),
            "—" if failed else _fmt(_per_run_ms(r, "cpu_s"), 0),
            "—" if failed else _fmt(_per_run_ms(r, "api_cpu_s"), 0),
            "—" if failed else _fmt(_per_run_ms(r, "api_cpu_recorded_s"), 0),
            _fmt(checks.get("sql_commits_per_run"), 1),
            note.replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def followups_table(results: list[dict[str, Any]]) -> str:
    """The batches after the timed one, in the same process: the gap before a second, small
    batch of new inputs starts its flow run, its wall time, and the same-process rerun."""
    columns = [
        "mode",
        "scenario",
        "first batch s (client)",
        "second batch runs",
        "gap to its flow run s",
        "second batch s",
        "rerun in same process s",
        "rerun gap to its flow run s",
        "rerun / first",
        "rerun model calls",
    ]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        follow, rerun = r.get("followup"), r.get("rerun_same_process")
        if r.get("error") or not (follow or rerun):
            continue
        follow, rerun = follow or {}, rerun or {}
        fraction = rerun.get("fraction_of_first")
        if follow.get("error"):
            follow = {**follow, "runs": f"failed: {follow['error'][:80]}".replace("|", "/")}
        cells = [
            MODE_LABELS.get(r["mode"], r["mode"]),
            r["scenario"],
            _fmt(r.get("wall_s"), 2),
            str(follow.get("runs", "—")),
            _fmt(follow.get("gap_s"), 2),
            _fmt(follow.get("wall_s"), 2),
            _fmt(rerun.get("wall_s"), 2),
            _fmt(rerun.get("gap_s"), 2),
            "—" if fraction is None else f"{fraction:.0%}",
            str(rerun.get("model_calls", "—")),
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

    def rate(scenario: str, mode: str, clock: str = "client") -> float | None:
        r = _find(results, scenario, mode)
        key = "runs_per_s" if clock == "client" else "recorded_runs_per_s"
        return None if r is None or not r.get(key) else float(r[key])

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

    def both_clocks(
        name: str, scenario: str, mode: str, other: str, goal: str, check: Any = None
    ) -> None:
        for clock in ("client", "recorded"):
            label = f"{scenario} {mode}/{other} runs/s, {clock} clock ({name})"
            mine, theirs = rate(scenario, mode, clock), rate(scenario, other, clock)
            bound = None
            if clock == "recorded" and mine is not None and theirs is None:
                bound = _never_recorded(_find(results, scenario, other))
            if bound is None:
                add(label, divide(mine, theirs), goal, check)
                continue
            # The other system's recorded clock never converged: its recorded rate is below
            # runs / the time the clock gave up at, so the ratio is above mine / that.
            ceiling, why = bound
            value = divide(mine, ceiling)
            add(label, value, goal, check, f"> {_fmt(value, 2)} ({other}: {why})")

    both_clocks("Stalwart vs plain Prefect", "S1", "c", "b", "≥ 1.2", lambda v: v >= 1.2)
    if _find(results, "S1", "bt"):
        both_clocks("Stalwart vs plain Prefect, both servers tuned", "S1", "c", "bt", "—")
    if _find(results, "S1", "p"):
        both_clocks(
            "Stalwart vs Pydantic AI x Prefect", "S1", "c", "p", "≥ 1.2", lambda v: v >= 1.2
        )
        both_clocks("Pydantic AI x Prefect vs plain Prefect", "S1", "p", "b", "—")
    both_clocks("Stalwart vs bare asyncio", "S1", "c", "a", "—")
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
    both_clocks("at 1 s latency", "S2", "c", "a", "≥ 0.75", lambda v: v >= 0.75)

    def overhead(mode: str, key: str) -> float | None:
        r = _find(results, "S3", mode)
        return None if r is None else r.get(key)

    for clock, key in (
        ("client", "overhead_ms_per_step"),
        ("recorded", "overhead_ms_per_step_recorded"),
    ):
        add(f"S3 c overhead ms/step, {clock} clock", overhead("c", key), "—", None)
        add(f"S3 b overhead ms/step, {clock} clock (plain Prefect)", overhead("b", key), "—", None)
        if _find(results, "S3", "p"):
            add(f"S3 p overhead ms/step, {clock} clock", overhead("p", key), "—", None)
        add(
            f"S3 c/b overhead per step, {clock} clock (Stalwart vs plain Prefect)",
            divide(overhead("c", key), overhead("b", key)),
            "≤ 1",
            lambda v: v <= 1.0,
        )
    d = _find(results, "S4", "d")
    c = _find(results, "S1", "c")
    add(
        "S4 rerun in a new process: model calls",
        None if d is None else float(d["model_calls"]),
        "0",
        lambda v: v == 0,
        None if d is None else str(d["model_calls"]),
    )
    rerun = divide(None if d is None else d["wall_s"], None if c is None else c["wall_s"])
    add(
        "S4 rerun in a new process: time / first run time",
        rerun,
        "≤ 20%",
        lambda v: v <= 0.20,
        None if rerun is None else f"{rerun:.0%}",
    )
    same = None if c is None else c.get("rerun_same_process")
    add(
        "S1 rerun in the same process: model calls",
        None if not same else float(same["model_calls"]),
        "0",
        lambda v: v == 0,
        None if not same else str(same["model_calls"]),
    )
    fraction = None if not same else same.get("fraction_of_first")
    add(
        "S1 rerun in the same process: time / first run time",
        fraction,
        "≤ 20%",
        lambda v: v <= 0.20,
        None if fraction is None else f"{fraction:.0%}",
    )
    for mode in ("b", "bt", "p", "c"):
        r = _find(results, "S1", mode)
        follow = None if r is None else r.get("followup")
        if follow:
            add(
                f"S1 {mode}: gap before a second batch's flow run starts (s)",
                follow.get("gap_s"),
                "—",
                None,
            )
    for mode in ("b", "bt", "p", "c"):
        r = _find(results, "S1", mode)
        if r is not None:
            drops = _drops(r)
            add(
                f"S1 {mode}: events dropped by the API server",
                None if drops is None else float(drops),
                "0",
                lambda v: v == 0,
                None if drops is None else str(drops),
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


def _never_recorded(r: dict[str, Any] | None) -> tuple[float, str] | None:
    """For a mode whose recorded clock gave up: the most its recorded runs/s can be (its runs
    over the seconds the clock waited), and why; None when it converged or never polled."""
    recorded = None if r is None else r.get("recorded")
    if not recorded or recorded.get("converged") or not recorded.get("waited_s"):
        return None
    terminal = recorded.get("terminal_task_runs") or 0
    expected = recorded.get("expected_task_runs")  # None when the warm-up learned no count
    of = "an unknown number of" if expected is None else f"{expected:,}"
    waited = recorded["waited_s"]
    why = f"{terminal:,} of {of} task runs recorded {waited:.0f} s after its batch began"
    return r["runs"] / recorded["waited_s"], why


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


CLOCKS_NOTE = """
Two clocks per batch: **client** = the batch call returns; **recorded** = every task run of
the batch's flow run(s) is in a terminal state in the Prefect API (`POST /task_runs/count`
filtered to those flow runs, polled every 0.5 s; expected = the task runs per run seen on the
warm-up batch times the runs). Bare asyncio (a) has one clock. Fewer terminal task runs than
expected means the API never recorded some (dropped events): the recorded clock then gives up
(bounded) and shows —. Events dropped = "dropping message" warnings the API server logged from
the timed batch until the child ended (the ephemeral server writes them to the child's log, a
real server to its own log). API CPU to recorded includes the second, small batch, which runs
while the recorded clock polls.
"""


def _api_label(cfg: Config) -> str:
    if cfg.server != "postgres":
        return "ephemeral (one per child, SQLite)"
    return f"Prefect server on PostgreSQL (one per mode, d reuses c's, messaging {cfg.messaging})"


def write_reports(cfg: Config, results: list[dict[str, Any]], started: datetime) -> str:
    found = ratios(results)
    version = cfg.code_version or _code_version()
    load = [r.get("load_avg", [0, 0, 0])[0] for r in results]
    header = (
        f"# Stalwart core benchmark\n\n"
        f"{started:%Y-%m-%d %H:%M} UTC, commit {version}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs, "
        f"state DB {'PostgreSQL' if cfg.postgres else 'SQLite'}, "
        f"Prefect API {_api_label(cfg)}, "
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
            CLOCKS_NOTE,
            "## Results\n",
            results_table(results),
            "\n## Batches after the timed one, in the same process\n",
            followups_table(results),
            "\n## Ratios and goals\n",
            ratios_table(found),
            "",
            *[f"- {note}" for note in cfg.notes],
            "",
        ]
    )
    payload: dict[str, Any] = {
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
    parser.add_argument(
        "--server",
        choices=("ephemeral", "postgres"),
        default="ephemeral",
        help="the Prefect API: each child's ephemeral server (default), or one `prefect server "
        "start` per mode (d reuses c's) on a temporary PostgreSQL database at 127.0.0.1:5432",
    )
    parser.add_argument(
        "--messaging",
        choices=("memory", "redis"),
        default="memory",
        help="with --server postgres: prefect-redis messaging (Redis at 127.0.0.1:6379), "
        "only if prefect-redis is installed",
    )
    parser.add_argument(
        "--recorded-timeout",
        type=float,
        default=None,
        help="seconds the recorded clock may poll the API after a timed batch (300; quick 120)",
    )
    parser.add_argument(
        "--followup-runs",
        type=int,
        default=FOLLOWUP_RUNS,
        help=f"new inputs in the second batch after the timed one ({FOLLOWUP_RUNS}; 0: none)",
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
        server=ns.server,
        messaging=ns.messaging,
        recorded_bound_s=ns.recorded_timeout or (120.0 if ns.quick else 300.0),
        followup_runs=max(0, ns.followup_runs),
    )
    started = datetime.now(UTC)
    cfg.run_id = f"{started:%Y%m%dT%H%M%S}-{os.getpid()}"
    cfg.code_version = _code_version()
    results = run_all(cfg)
    markdown = write_reports(cfg, results, started)
    print()
    print(markdown)
    print(f"written: {RESULTS_DIR / 'latest.md'} and latest.json")
    return 0 if all(not r.get("error") for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
