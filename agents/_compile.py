"""Compilation and execution: a validated DAG becomes one Prefect flow of `<agent>.<step>` tasks.

`CompiledAgent.build` validates the declaration (every problem at once) and wires steps by
parameter name. At run time one flow run executes a batch of inputs (a single run is a batch of
one): each input walks the DAG as its own group of task runs, tagged `agent:`, `tenant:`,
`subject:` and `run:`, with steps that do not depend on each other running concurrently and at
most `concurrency` inputs in flight. One flow run per batch is deliberate: a Prefect flow call
costs about a second of fixed overhead, which one flow run per input would pay per input.

Results persist through Prefect's own result machinery into the `step_result` table
(`SQLResultStorage`) with a cache key made of tenant, agent, subject, step, step source and
inputs (actions: the idempotency key), never the run id, so a rerun in any process skips every
finished step. Actions also go through the action ledger, so they run at most once per key.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import hashlib
import json
import logging
import re
import threading
import time
import uuid
import weakref
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, cast

from prefect import Flow, Task, tags
from prefect.cache_policies import NO_CACHE, CachePolicy
from prefect.context import TagsContext, TaskRunContext
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.results import ResultStore
from prefect.states import Cancelled, Completed
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote
from prefect.utilities.asyncutils import run_coro_as_sync
from pydantic import BaseModel, TypeAdapter

from agents._decision import Decision
from agents._declare import (
    LAYERS,
    RESOURCES,
    Param,
    Review,
    Step,
    StepInfo,
    is_concrete_class,
    resolve_hints,
    returns_decision,
)
from agents.context import RunContext
from agents.decisions import publish_artifact as publish_decisions
from agents.errors import ActionInProgress, DeclarationError, InputError, ProviderUnavailable
from agents.inputs import batches, input_problem
from agents.observe import capture_failure, flow_failure_hook, init_sentry
from agents.observe.logs import install_log_scrubbing
from agents.policy.retry import is_retryable_by_step
from agents.policy.tenants import run_slot, server_limit_name
from agents.resources.llm import LLM, LLMCall, resolve_endpoint
from agents.result import RunResult, RunStatus, StepStatus
from agents.settings import get_current_settings
from agents.store import ledger
from agents.store._convert import as_utc
from agents.store.decisions import cost_of, logged_decision, record_decisions
from agents.store.memory import Memory
from agents.store.records import RecordWriter
from agents.store.results import SQLResultStorage
from agents.store.tables import AgentRun, DecisionRecord, StepRun, new_id

if TYPE_CHECKING:
    from agents._declare import Agent

_META_KEYS = frozenset({"subject", "run_key"})


# -- digests ----------------------------------------------------------------------------------


logger = logging.getLogger(__name__)


def canonical(value: Any) -> Any:
    """A JSON-able form of a value for hashing: stable across processes."""
    if isinstance(value, BaseModel):
        return {"__model__": type(value).__qualname__, **value.model_dump(mode="json")}
    if isinstance(value, Mapping):
        return {str(k): canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, list | tuple):
        return [canonical(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted((canonical(v) for v in value), key=repr)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if hasattr(value, "__dataclass_fields__"):
        return {"__dataclass__": type(value).__qualname__, **canonical(vars(value))}
    return repr(value)


def digest(value: Any, size: int = 32) -> str:
    """sha256 of the canonical JSON of `value`, hex, `size` characters."""
    data = json.dumps(canonical(value), sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.sha256(data.encode()).hexdigest()[:size]


# -- Prefect glue -----------------------------------------------------------------------------


@dataclass(kw_only=True)
class StepCall:
    """The parameters of one task run: who runs what, with which cache key."""

    agent: str
    step: str
    tenant: str
    subject: str | None
    run_key: str
    run_id: str
    flow_run_id: str | None
    cache_key: str
    idempotency_key: str
    model: str | None = None
    attempts: int = 0
    llm_calls: list[LLMCall] = field(default_factory=list)
    conflict: str | None = None
    """Set by an action that found another live execution holding its claim (it did not act)."""

    def __post_init__(self) -> None:
        #: This run's decision rows by step, for `RunContext.set_outcome` (set by the runner).
        self.decisions: dict[str, Any] = {}
        #: When this execution of the run started (set by the runner; twin detection).
        self.run_started_at: datetime | None = None

    @property
    def label(self) -> str:
        """The task run name: `<agent>.<step>[<subject or run key>]`."""
        return f"{self.agent}.{self.step}[{self.subject or self.run_key[:12]}]"


@dataclass
class StepCacheKey(CachePolicy):
    """Cache on the key Stalwart computed: tenant, agent, subject, step, source and inputs.

    The run id is deliberately left out, so a rerun (in any process) hits the cache.
    """

    def compute_key(
        self,
        task_ctx: TaskRunContext,
        inputs: dict[str, Any],
        flow_parameters: dict[str, Any],
        **kwargs: Any,
    ) -> str | None:
        call = inputs.get("call")
        return call.cache_key if isinstance(call, StepCall) else None


STEP_CACHE = StepCacheKey()


def _retry_unless_user_error(task: Task[Any, Any], task_run: Any, state: Any) -> bool:
    """A developer's mistake is never retried, nor a provider failure the LLM layer already
    retried (retries live in one layer); everything else follows the step's retries."""
    error = getattr(state, "data", None)
    return not isinstance(error, BaseException) or is_retryable_by_step(error)


_executor_lock = threading.Lock()
_executor: ThreadPoolExecutor | None = None


def _thread_pool() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=64, thread_name_prefix="stalwart-step")
        return _executor


async def in_thread(fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
    """Run blocking work (a sync step, a DB write) off the event loop, keeping context vars."""
    ctx = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(
        _thread_pool(), functools.partial(ctx.run, fn, *args, **kwargs)
    )


_storages: dict[tuple[str, str], SQLResultStorage] = {}


async def _result_storage() -> SQLResultStorage:
    """The SQL result storage block, saved once per Prefect API and process."""
    from prefect.settings import PREFECT_API_URL

    name = get_current_settings().result_storage_block
    key = (str(PREFECT_API_URL.value() or "ephemeral"), name)
    loop = asyncio.get_running_loop()
    lock = _storage_locks.get(loop)
    if lock is None:
        lock = _storage_locks[loop] = asyncio.Lock()
    # Concurrent first batches (one per tenant) would both register the block type: 409.
    async with lock:
        storage = _storages.get(key)
        if storage is None:
            storage = SQLResultStorage()
            await _save_block(storage, name)
            _storages[key] = storage
    return storage


async def _save_block(block: SQLResultStorage, name: str, attempts: int = 5) -> None:
    """Save the block, retrying when another process registers its type or schema first.

    Flow runs starting at once on a fresh server (one worker process each) all try to create
    the block type; the losers get 409 `ObjectAlreadyExists` and succeed on the next try.
    """
    from prefect.exceptions import ObjectAlreadyExists

    for attempt in range(attempts):
        try:
            await block.save(name, overwrite=True)
            return
        except ObjectAlreadyExists:
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(0.1 * (attempt + 1))


_storage_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


class ReviewInput(RunInput):
    """What a reviewer answers in the Prefect UI for a paused decision."""

    verdict: Literal["approve", "correct", "reject"] = "approve"
    correction: dict[str, Any] | None = None
    reviewer: str | None = None


@dataclass(kw_only=True)
class LadderOutcome:
    """Where the fallback ladder ended: the decision, its path, and what it cost."""

    decision: Any
    path: str
    held: bool = False
    llm_calls: list[LLMCall] = field(default_factory=list)
    reviewer: str | None = None
    correction: dict[str, Any] | None = None
    proposed: Decision | None = None


def _review_markdown(
    agent: str, step: str, result: RunResult, args: dict[str, Any], proposed: Decision
) -> str:
    from agents.observe import scrub_text

    inputs = scrub_text(json.dumps(canonical(args), indent=2, default=repr))[:4000]
    decision = scrub_text(json.dumps(proposed.model_dump(mode="json"), indent=2))[:4000]
    return (
        f"## Review `{agent}.{step}`\n\n"
        f"Tenant `{result.tenant}`, subject `{result.subject}`, run `{result.run_id}`.\n\n"
        f"**Confidence {proposed.confidence:.2f}** — {scrub_text(proposed.rationale)}\n\n"
        f"### Proposed decision\n```json\n{decision}\n```\n"
        f"### Input\n```json\n{inputs}\n```\n"
        "Answer `approve`, `correct` (with the corrected fields in `correction`) or `reject`."
    )


# -- the compiled agent -----------------------------------------------------------------------


@dataclass(frozen=True)
class _Edge:
    producer: str
    consumer: str
    param: str


class CompiledAgent:
    """A validated agent: its steps in topological order, its edges, inputs and Prefect flow."""

    def __init__(
        self,
        agent: Agent,
        steps: dict[str, Step[Any, Any]],
        order: list[Step[Any, Any]],
        deps: dict[str, tuple[str, ...]],
        run_inputs: dict[str, tuple[Param, ...]],
        returns: dict[str, Any],
    ) -> None:
        self.agent = agent
        self.name = agent.name
        self.steps = steps
        self.order = order
        self.deps = deps
        self.run_inputs = run_inputs
        self.returns = returns
        self.consumers: dict[str, tuple[str, ...]] = {
            name: tuple(s.name for s in order if name in deps[s.name]) for name in steps
        }
        self._tasks: dict[str, Task[Any, Any]] = {}
        self._tasks_storage: SQLResultStorage | None = None
        self._review_locks: dict[int, asyncio.Lock] = {}
        self._store: ResultStore | None = None
        self.flow: Flow[Any, Any] = self._make_flow()

    # -- validation -------------------------------------------------------------------------

    @classmethod
    def build(cls, agent: Agent, steps: list[Step[Any, Any]]) -> CompiledAgent:
        """Validate the declaration and compile it; raises one `DeclarationError` listing all."""
        problems: list[str] = []
        if not steps:
            raise DeclarationError.single(agent.name, "the agent declares no steps")
        counts = Counter(s.name for s in steps)
        for name, count in counts.items():
            if count > 1:
                layers = ", ".join(s.layer for s in steps if s.name == name)
                problems.append(
                    f"step '{name}': declared {count} times ({layers}); give each step a "
                    "unique function name"
                )
        by_name: dict[str, Step[Any, Any]] = {}
        for s in steps:
            by_name.setdefault(s.name, s)

        hints: dict[str, tuple[dict[str, Any], Any]] = {
            name: resolve_hints(s) for name, s in by_name.items()
        }
        deps: dict[str, tuple[str, ...]] = {}
        run_inputs: dict[str, tuple[Param, ...]] = {}
        for name, s in by_name.items():
            where = f"{s.layer} step '{name}'"
            param_hints, _ = hints[name]
            edges: list[str] = []
            inputs: list[Param] = []
            for p in s.params:
                if p.name in RESOURCES:
                    continue
                producer = by_name.get(p.name)
                if producer is None:
                    inputs.append(p)
                    continue
                edges.append(p.name)
                if producer is s:
                    problems.append(f"{where}: parameter '{p.name}' consumes the step itself")
                    continue
                if LAYERS.index(producer.layer) > LAYERS.index(s.layer):
                    problems.append(
                        f"{where}: parameter '{p.name}' consumes {producer.layer} step "
                        f"'{p.name}', a later layer; data flows perception → reasoning → "
                        "action → learning"
                    )
                produced = hints[p.name][1]
                expected = param_hints.get(p.name)
                if produced is type(None) or produced is None:
                    problems.append(
                        f"{where}: parameter '{p.name}' consumes step '{p.name}', which "
                        "returns None; return a value or drop the parameter"
                    )
                elif (
                    is_concrete_class(produced)
                    and is_concrete_class(expected)
                    and not issubclass(produced, cast(type, expected))
                ):
                    problems.append(
                        f"{where}: parameter '{p.name}' expects {cast(type, expected).__name__}, "
                        "but step "
                        f"'{p.name}' returns {produced.__name__}"
                    )
            deps[name] = tuple(edges)
            run_inputs[name] = tuple(inputs)
            if s.layer == "reasoning" and returns_decision(hints[name][1]) is False:
                problems.append(
                    f"{where}: returns {getattr(hints[name][1], '__name__', hints[name][1])}, "
                    "which does not subclass Decision; return a Decision subclass"
                )

        order, cycle = _toposort([s.name for s in steps if by_name[s.name] is s], deps)
        if cycle:
            problems.append(
                f"step '{cycle[0]}': cycle {' → '.join([*cycle, cycle[0]])}; "
                "break it by removing one of these parameters"
            )
        else:
            ancestors = _ancestors(order, deps)
            for name in order:
                s = by_name[name]
                if s.layer == "action" and not any(
                    by_name[a].layer == "reasoning" for a in ancestors[name]
                ):
                    problems.append(
                        f"action step '{name}': no reasoning step upstream; actions must be "
                        "decided: add a parameter naming a reasoning step"
                    )
                if s.layer == "perception" and not any(name in deps[c] for c in order):
                    problems.append(
                        f"perception step '{name}': its output reaches no step; name '{name}' "
                        "as a parameter of a step that uses it, or remove it"
                    )
        if problems:
            raise DeclarationError(agent.name, problems)
        return cls(
            agent,
            by_name,
            [by_name[n] for n in order],
            deps,
            run_inputs,
            {n: hints[n][1] for n in by_name},
        )

    def info(self, name: str) -> StepInfo:
        step = self.steps[name]
        return StepInfo(
            name=name,
            layer=step.layer,
            depends_on=self.deps[name],
            resources=tuple(p.name for p in step.params if p.name in RESOURCES),
            run_inputs=tuple(p.name for p in self.run_inputs[name]),
            options=step.options,
            is_async=step.is_async,
        )

    @property
    def input_names(self) -> tuple[str, ...]:
        """Every run input any step reads, in first-use order."""
        seen: dict[str, None] = {}
        for s in self.order:
            for p in self.run_inputs[s.name]:
                seen.setdefault(p.name, None)
        return tuple(seen)

    def check_inputs(self, item: Mapping[str, Any], *, raise_error: bool = False) -> list[str]:
        """Problems with one run's inputs: missing required inputs, unknown names."""
        problems: list[str] = []
        for s in self.order:
            for p in self.run_inputs[s.name]:
                if p.name not in item and not p.has_default:
                    problems.append(
                        f"{s.layer} step '{s.name}': run input '{p.name}' is missing; pass "
                        f"{p.name}=... to run() or add the key to the input"
                    )
        known = set(self.input_names) | _META_KEYS
        for key in item:
            if key not in known:
                problems.append(
                    f"input '{key}': no step has a parameter of that name; known inputs: "
                    f"{sorted(self.input_names)}"
                )
        if problems and raise_error:
            raise DeclarationError(self.name, problems)
        return problems

    # -- graph ------------------------------------------------------------------------------

    def mermaid(self) -> str:
        """The DAG as a Mermaid flowchart: run inputs, steps grouped by layer, edges."""
        lines = ["flowchart LR"]
        for name in self.input_names:
            lines.append(f"  in_{_mid(name)}([{name}])")
        for layer in LAYERS:
            members = [s for s in self.order if s.layer == layer]
            if not members:
                continue
            lines.append(f"  subgraph {layer}")
            for s in members:
                extra = ""
                if s.options.threshold is not None:
                    extra = f"<br/>threshold {s.options.threshold}"
                lines.append(f'    {_mid(s.name)}["{s.name}{extra}"]:::{layer}')
            lines.append("  end")
        for s in self.order:
            for p in self.run_inputs[s.name]:
                lines.append(f"  in_{_mid(p.name)} --> {_mid(s.name)}")
            for dep in self.deps[s.name]:
                lines.append(f"  {_mid(dep)} --> {_mid(s.name)}")
        lines += [
            "  classDef perception fill:#e3f2fd,stroke:#1e88e5",
            "  classDef reasoning fill:#fff3e0,stroke:#fb8c00",
            "  classDef action fill:#fce4ec,stroke:#d81b60",
            "  classDef learning fill:#e8f5e9,stroke:#43a047",
        ]
        return "\n".join(lines)

    def text(self) -> str:
        """The DAG as indented text, one step per line in execution order."""
        lines = [f"agent {self.name}"]
        for s in self.order:
            sources = [*self.deps[s.name], *(f"<{p.name}>" for p in self.run_inputs[s.name])]
            uses = [p.name for p in s.params if p.name in RESOURCES]
            opts = []
            if s.options.threshold is not None:
                opts.append(f"threshold={s.options.threshold}")
            if s.options.retries:
                opts.append(f"retries={s.options.retries}")
            suffix = f" [{', '.join(opts)}]" if opts else ""
            using = f" using {', '.join(uses)}" if uses else ""
            lines.append(f"  {s.layer:<10} {s.name} ← {', '.join(sources) or '∅'}{using}{suffix}")
        return "\n".join(lines)

    # -- Prefect objects --------------------------------------------------------------------

    def _make_task(self, step: Step[Any, Any], storage: SQLResultStorage) -> Task[Any, Any]:
        compiled = self

        async def run_step(call: StepCall, args: dict[str, Any]) -> Any:
            return await compiled._execute(step, call, args)

        run_step.__name__ = step.name
        run_step.__qualname__ = step.qualified_name
        run_step.__doc__ = step.fn.__doc__
        caching = step.options.cache or step.layer == "action"
        retries = step.options.retries
        return Task(
            fn=run_step,
            name=step.qualified_name,
            task_run_name="{call.label}",
            retries=retries,
            retry_delay_seconds=exponential_backoff(step.options.retry_delay) if retries else 0,
            retry_jitter_factor=0.5 if retries else None,
            retry_condition_fn=_retry_unless_user_error,
            timeout_seconds=step.options.timeout,
            cache_policy=STEP_CACHE if caching else NO_CACHE,
            persist_result=caching,
            result_storage=storage if caching else None,
            # No default tags: Prefect 3.9 makes one concurrency-slot API call per tagged task
            # run (tag-based limits), which costs more than the step itself.
            tags=set(step.options.tags),
        )

    def _tasks_for(self, storage: SQLResultStorage) -> dict[str, Task[Any, Any]]:
        if self._tasks_storage is not storage:
            self._tasks = {s.name: self._make_task(s, storage) for s in self.order}
            self._tasks_storage = storage
        return self._tasks

    def _make_flow(self) -> Flow[Any, Any]:
        compiled = self

        async def agent_flow(
            inputs: list[dict[str, Any]], tenant: str = "default", concurrency: int = 16
        ) -> list[RunResult]:
            return await compiled._flow_body(inputs, tenant, concurrency)

        agent_flow.__doc__ = self.agent.description or f"Stalwart agent {self.name!r}."
        return Flow(
            fn=agent_flow,
            name=self.name,
            flow_run_name=_flow_run_name,
            persist_result=False,
            validate_parameters=False,
            on_failure=[flow_failure_hook(self.name)],
        )

    # -- running ----------------------------------------------------------------------------

    def run_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        tenant: str,
        concurrency: int = 16,
        on_result: Callable[[int, RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Run inputs in one flow run and return their results in input order.

        `on_result(index, result)` is called as each input finishes (for progress bars). The
        sync twin delegates to `arun_batch`, so the two cannot drift.
        """
        return run_coro_as_sync(
            self.arun_batch(inputs, tenant=tenant, concurrency=concurrency, on_result=on_result)
        )

    async def arun_batch(
        self,
        inputs: Sequence[Mapping[str, Any]],
        *,
        tenant: str,
        concurrency: int = 16,
        on_result: Callable[[int, RunResult], None] | None = None,
    ) -> list[RunResult]:
        """Async twin of `run_batch`.

        An input that cannot travel as a flow-run parameter (`agents.inputs.input_problem`)
        fails alone, before any flow run; the others run in as many flow runs as Prefect's
        parameter limit needs, one after the other.
        """
        _check_tenant(tenant)
        results: list[RunResult | None] = [None] * len(inputs)
        good: list[tuple[int, dict[str, Any]]] = []
        for index, item in enumerate(inputs):
            problem = input_problem(item) if isinstance(item, Mapping) else None
            if problem is None:
                good.append((index, dict(item) if isinstance(item, Mapping) else item))
                continue
            logger.warning("%s: input %d refused: %s", self.name, index, problem)
            refused = RunResult(
                status="failed",
                run_id=uuid.uuid4().hex,
                run_key="",
                tenant=tenant,
                error=f"InputError: {problem}",
            )
            results[index] = refused
            if on_result is not None:
                on_result(index, refused)
        for chunk in batches([item for _, item in good]):
            where = [index for index, _ in good[: len(chunk)]]
            good = good[len(chunk) :]
            report = None
            if on_result is not None:
                report = functools.partial(_report_at, where, on_result)
            token = _on_result.set(report)  # per call: batches may run concurrently
            try:
                with tags(*self._flow_tags(chunk, tenant)):
                    done = await cast(
                        "Coroutine[Any, Any, list[RunResult]]",
                        self.flow(inputs=chunk, tenant=tenant, concurrency=concurrency),
                    )
            finally:
                _on_result.reset(token)
            for index, result in zip(where, done, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    def _flow_tags(self, items: list[dict[str, Any]], tenant: str) -> list[str]:
        found = [f"agent:{self.name}", f"tenant:{tenant}"]
        subjects = {i.get("subject") for i in items if i.get("subject") is not None}
        if len(subjects) == 1:
            found.append(f"subject:{subjects.pop()}")
        return found

    async def _flow_body(
        self, inputs: list[dict[str, Any]], tenant: str, concurrency: int
    ) -> list[RunResult]:
        from prefect.runtime import deployment, flow_run

        _check_tenant(tenant)
        install_log_scrubbing()
        init_sentry()
        if not isinstance(inputs, list):
            raise InputError(f"inputs: expected a list of objects, got {type(inputs).__name__}")
        storage = await _result_storage()
        prefect_tasks = self._tasks_for(storage)
        self._store = ResultStore(result_storage=storage)
        flow_run_id = str(flow_run.id) if flow_run.id else None
        await self._publish_graph()
        gate = asyncio.Semaphore(max(1, int(concurrency)))
        report = _on_result.get()
        thresholds = _thresholds.set(await self._thresholds_in_force(tenant))
        server_limit = await server_limit_name(tenant)
        writer = RecordWriter()
        flusher = asyncio.ensure_future(_flush_periodically(writer))

        async def one(index: int, item: Any) -> RunResult:
            # The batch's own cap, then the tenant's fair share of the process (and of the
            # server's `tenant:<name>` limit when one exists).
            async with gate, run_slot(tenant, server_limit):
                result = await self._run_one(item, tenant, flow_run_id, prefect_tasks, writer)
            if report is not None:
                report(index, result)
            return result

        try:
            # Task runs get no inherited tags (see `_make_task`); the flow run carries them.
            with TagsContext(current_tags=set()):
                results = list(
                    await asyncio.gather(*(one(i, item) for i, item in enumerate(inputs)))
                )
        finally:
            _thresholds.reset(thresholds)
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
            await in_thread(writer.flush)
        await self._monitor(tenant, deployment.id)
        if writer.decisions_seen:
            await publish_decisions(
                writer.decisions_seen[-500:],
                key=f"{self.name}-decisions",
                description=f"Decisions of this flow run of `{self.name}` (latest 500).",
            )
        return results

    async def _thresholds_in_force(self, tenant: str) -> dict[str, float]:
        """The tenant's calibrated thresholds, read once per batch; {} when no step opts in."""
        if not any(s.options.calibrate is not None for s in self.order):
            return {}
        from agents.learning.calibration import in_force

        found: dict[str, float] = await in_thread(in_force, self.agent, tenant)
        return found

    async def _monitor(self, tenant: str, deployment_id: Any) -> None:
        """Drift check and summary artifact at the end of a batch (STALWART_MONITOR)."""
        mode = get_current_settings().monitor
        if mode == "off" or (mode == "deployments" and not deployment_id):
            return
        from agents.observe.drift import monitor

        try:
            await monitor(tenant, self.name)
        except Exception as exc:  # monitoring must never fail the batch it watches
            logger.warning("monitoring %s for %s failed: %s", self.name, tenant, _describe(exc))

    async def _publish_graph(self) -> None:
        from prefect.artifacts import acreate_markdown_artifact

        key = re.sub(r"[^a-z0-9-]", "-", f"{self.name.lower()}-dag")
        markdown = f"# Agent `{self.name}`\n\n```mermaid\n{self.mermaid()}\n```\n"
        with contextlib.suppress(Exception):  # an artifact is a courtesy; never fail a run
            await acreate_markdown_artifact(
                markdown=markdown, key=key, description=f"DAG of agent {self.name}"
            )

    async def _run_one(
        self,
        item: Any,
        tenant: str,
        flow_run_id: str | None,
        prefect_tasks: dict[str, Task[Any, Any]],
        writer: RecordWriter,
    ) -> RunResult:
        run_id = uuid.uuid4().hex
        if not isinstance(item, Mapping):
            return RunResult(
                status="failed",
                run_id=run_id,
                run_key="",
                tenant=tenant,
                error=f"InputError: expected an object, got {type(item).__name__}",
                flow_run_id=flow_run_id,
            )
        inputs = {k: v for k, v in item.items() if k not in _META_KEYS}
        subject = item.get("subject")
        subject = None if subject is None else str(subject)
        run_key = str(item.get("run_key") or digest({"inputs": inputs, "subject": subject}))
        result = RunResult(
            status="completed",
            run_id=run_id,
            run_key=run_key,
            tenant=tenant,
            subject=subject,
            flow_run_id=flow_run_id,
        )
        started = time.perf_counter()
        problems = self.check_inputs(item)
        if problems:
            result.status = "failed"
            result.error = "InputError: " + "; ".join(problems)
        run_row = AgentRun(
            id=run_id,
            tenant=tenant,
            agent=self.name,
            subject=subject,
            run_key=run_key,
            status="running" if not problems else "failed",
            inputs_digest=digest(inputs, 64),
            flow_run_id=flow_run_id,
            error=result.error,
        )
        writer.start_run(run_row)
        if problems:
            return result

        rows: list[StepRun] = []
        decisions: list[DecisionRecord] = []
        recovered: list[DecisionRecord] = []
        try:
            await self._walk(
                inputs, result, prefect_tasks, rows, decisions, recovered, run_row.started_at
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a runtime bug must fail this input only
            result.status = "failed"
            result.error = _describe(exc)
        if result.status == "conflict":
            # The twin execution that holds the action logs the run's decisions: logging this
            # one's too would record the run's outcome twice.
            result.notes.append(
                f"another execution of run {run_key[:16]} holds its action; "
                f"{len(decisions)} decision(s) of this execution not logged"
            )
            decisions, recovered = [], []
        writer.end_run(
            run_id,
            status=result.status,
            error=result.error,
            duration_ms=(time.perf_counter() - started) * 1000,
            steps=rows,
            decisions=decisions,
            recovered=recovered,
        )
        return result

    async def _walk(
        self,
        inputs: dict[str, Any],
        result: RunResult,
        prefect_tasks: dict[str, Task[Any, Any]],
        rows: list[StepRun],
        decisions: list[DecisionRecord],
        recovered: list[DecisionRecord],
        started_at: datetime | None = None,
    ) -> None:
        statuses: dict[str, StepStatus] = {}
        run_decisions: dict[str, DecisionRecord] = {}
        held_above: dict[str, bool] = {}
        running: dict[str, asyncio.Task[None]] = {}

        async def step_job(step: Step[Any, Any]) -> None:
            deps = self.deps[step.name]
            for dep in deps:
                await running[dep]
            held_above[step.name] = any(
                statuses[d] == "held" or held_above.get(d, False) for d in deps
            )
            blocked = [d for d in deps if statuses[d] in ("failed", "skipped", "conflict")]
            if blocked or (step.layer == "action" and held_above[step.name]):
                statuses[step.name] = "skipped"
                rows.append(self._row(step, result, "skipped", 0, False, 0.0, None))
                return
            args = {p.name: inputs[p.name] for p in self.run_inputs[step.name] if p.name in inputs}
            args.update({d: result.outputs[d] for d in deps})
            call = self._call(step, result, args)
            call.decisions = run_decisions  # not a dataclass field: Prefect never walks it
            call.run_started_at = started_at
            t0 = time.perf_counter()
            found, value = await self._stored_result(step, call)
            if found:
                # Done before: take the persisted result without a task run (a rerun of a
                # finished batch then costs a read per step instead of Prefect's task engine).
                state: Any = Completed(name="Cached")
            else:
                state = await prefect_tasks[step.name](
                    call=call, args=quote(args), return_state=True
                )
            elapsed = (time.perf_counter() - t0) * 1000
            task_run_id = str(state.state_details.task_run_id or "") or None
            if step.layer == "action" and state.is_completed() and state.name == "Cached":
                await self._check_twin(call)
            failure: BaseException | None = None
            rescued: LadderOutcome | None = None
            if not state.is_completed() and call.conflict is None:
                failure = await _state_exception(state)
                capture_failure(
                    failure,
                    agent=self.name,
                    step=step.name,
                    layer=step.layer,
                    tenant=result.tenant,
                    flow_run_id=result.flow_run_id,
                    attempt=call.attempts,
                    extra={"run_id": result.run_id, "subject": result.subject},
                )
                if step.layer == "reasoning" and isinstance(failure, ProviderUnavailable):
                    rescued = await self._without_model(step, args, result, prefect_tasks)
            if (state.is_completed() and call.conflict is None) or rescued is not None:
                if not found and rescued is None:
                    value = await state.aresult()
                cached = state.name == "Cached"
                status: StepStatus = "cached" if cached else "completed"
                llm_calls = list(call.llm_calls)
                if rescued is not None:
                    assert failure is not None  # rescued only from a failure
                    outcome = rescued
                    value = outcome.decision
                    llm_calls += outcome.llm_calls
                    result.paths[step.name] = outcome.path
                    result.notes.append(
                        f"{step.name}: no decision from the model ({_describe(failure)}); "
                        f"took the {outcome.path.replace('_', ' ')}"
                    )
                    if outcome.held:
                        status = "held"
                    row = self._decision_row(step, result, args, outcome, llm_calls, call.attempts)
                    row.error_class = type(failure).__name__
                    decisions.append(row)
                    run_decisions[step.name] = row
                elif step.layer == "reasoning" and isinstance(value, Decision):
                    refusal = self._refusal(value)
                    if refusal is not None:
                        outcome = LadderOutcome(decision=value, path="rejected", held=True)
                        result.notes.append(f"{step.name}: {refusal}")
                    else:
                        outcome = await self._ladder(step, value, args, result, prefect_tasks)
                    value = outcome.decision
                    llm_calls += outcome.llm_calls
                    result.paths[step.name] = outcome.path
                    if outcome.held:
                        status = "held"
                    if not cached:
                        row = self._decision_row(
                            step,
                            result,
                            args,
                            outcome,
                            llm_calls,
                            call.attempts,
                            _decision_id(call) if step.options.cache else None,
                        )
                        decisions.append(row)
                        run_decisions[step.name] = row
                        shadow_row = await self._shadow(step, call, args, result)
                        if shadow_row is not None:
                            decisions.append(shadow_row)
                    else:
                        row, logged = await self._logged_decision(step, result, args, outcome, call)
                        # Written again at the run's end: the logged row with its outcome, or
                        # the recovered one unless the row it stands in for arrives first.
                        (decisions if logged else recovered).append(row)
                        run_decisions[step.name] = row
                result.outputs[step.name] = value
                statuses[step.name] = status
                rows.append(
                    self._row(
                        step,
                        result,
                        status,
                        call.attempts,
                        cached,
                        elapsed,
                        task_run_id,
                        llm_calls=llm_calls,
                    )
                )
            elif call.conflict is not None:
                # A twin execution holds the action: stop this branch cleanly, no Sentry event.
                logger.warning(
                    "%s.%s run %s (tenant %s): %s",
                    self.name,
                    step.name,
                    result.run_key[:16],
                    result.tenant,
                    call.conflict,
                )
                statuses[step.name] = "conflict"
                if result.error is None:
                    result.error = f"{step.name}: ActionInProgress: {call.conflict}"
                rows.append(
                    self._row(
                        step,
                        result,
                        "conflict",
                        call.attempts,
                        False,
                        elapsed,
                        task_run_id,
                        call.conflict,
                    )
                )
            else:
                assert failure is not None  # neither completed nor a conflict
                error = _describe(failure)
                statuses[step.name] = "failed"
                if result.error is None:
                    result.error = f"{step.name}: {error}"
                rows.append(
                    self._row(
                        step,
                        result,
                        "failed",
                        call.attempts,
                        False,
                        elapsed,
                        task_run_id,
                        error,
                        llm_calls=call.llm_calls,
                    )
                )

        for step in self.order:
            running[step.name] = asyncio.ensure_future(step_job(step))
        await asyncio.gather(*running.values())
        result.steps = {s.name: statuses[s.name] for s in self.order}
        values = set(statuses.values())
        status: RunStatus = "completed"
        if "failed" in values:
            status = "failed"
        elif "conflict" in values:
            status = "conflict"
        elif "held" in values:
            status = "held"
        result.status = status

    async def _check_twin(self, call: StepCall) -> None:
        """A cached action: was it completed by a twin execution running alongside this one?

        Only cached actions (reruns, twins) pay this one ledger read.
        """
        record = await in_thread(ledger.get, call.idempotency_key)
        if record is not None and _twin_completed(record, call):
            call.conflict = str(
                ActionInProgress.completed_by_twin(
                    call.idempotency_key, record.lease_owner, record.completed_at
                )
            )

    async def _shadow(
        self, step: Step[Any, Any], call: StepCall, args: dict[str, Any], result: RunResult
    ) -> DecisionRecord | None:
        """The candidate's decision for a run in the step's shadow share, logged, not acted on.

        A failing candidate never fails the run: the error is logged at debug level only.
        """
        shadow = step.options.shadow
        if shadow is None or not shadow.picks(result.run_key):
            return None
        calls: list[LLMCall] = []
        candidate = LLM(endpoint=resolve_endpoint(shadow.model), calls=calls, tenant=call.tenant)
        kwargs = {**args, **self._resources(step, call, llm=candidate)}
        try:
            decision = await self._invoke(step, kwargs)
        except Exception as exc:
            logger.debug("shadow %s.%s failed: %s", self.name, step.name, _describe(exc))
            return None
        outcome = LadderOutcome(decision=decision, path="shadow")
        return self._decision_row(step, result, args, outcome, calls, 1)

    async def _logged_decision(
        self,
        step: Step[Any, Any],
        result: RunResult,
        args: dict[str, Any],
        outcome: LadderOutcome,
        call: StepCall,
    ) -> tuple[DecisionRecord, bool]:
        """The decision behind a cached reasoning result, so learning steps can set its outcome;
        and whether it was found logged.

        An earlier execution logged it, unless that execution died between persisting the
        step's result and writing its run records (or is a twin still running): then a row
        is recovered from the cached result, under the id the original has (`_decision_id`),
        with no model call, so no tokens or cost; the run's notes say so.
        """
        found = await in_thread(
            logged_decision,
            tenant=result.tenant,
            agent=self.name,
            step=step.name,
            run_key=result.run_key,
            input_digest=digest(args, 64),
        )
        if found is not None:
            return found, True
        result.notes.append(
            f"{step.name}: decision recovered from its cached result (the execution that made "
            "it had not logged it)"
        )
        row = self._decision_row(step, result, args, outcome, [], 0, _decision_id(call))
        return row, False

    async def _stored_result(self, step: Step[Any, Any], call: StepCall) -> tuple[bool, Any]:
        """The persisted result of this exact step call, if a previous run stored one."""
        if self._store is None or not (step.options.cache or step.layer == "action"):
            return False, None
        try:
            record = await self._store.aread(call.cache_key)
        except Exception:  # missing (the usual first-run case) or unreadable: run the task
            return False, None
        return True, record.result

    def _call(
        self,
        step: Step[Any, Any],
        result: RunResult,
        args: dict[str, Any],
        model: str | None = None,
    ) -> StepCall:
        key = ledger.idempotency_key(
            result.tenant, self.name, result.subject or "", result.run_key, step.name
        )
        if step.layer == "action":
            cache_key = f"{result.tenant}:{self.name}:{step.name}:{key}"
        else:
            cache_key = f"{result.tenant}:{self.name}:{step.name}:" + digest(
                {
                    "tenant": result.tenant,
                    "agent": self.name,
                    "subject": result.subject,
                    "step": step.name,
                    "source": step.source_digest,
                    "args": args,
                    "model": model,
                },
                48,
            )
        return StepCall(
            agent=self.name,
            step=step.name,
            tenant=result.tenant,
            subject=result.subject,
            run_key=result.run_key,
            run_id=result.run_id,
            flow_run_id=result.flow_run_id,
            cache_key=_safe_key(cache_key),
            idempotency_key=key,
            model=model,
        )

    def _row(
        self,
        step: Step[Any, Any],
        result: RunResult,
        status: StepStatus,
        attempts: int,
        cached: bool,
        duration_ms: float,
        task_run_id: str | None,
        error: str | None = None,
        llm_calls: Sequence[LLMCall] = (),
    ) -> StepRun:
        return StepRun(
            tokens_in=sum(c.tokens_in for c in llm_calls),
            tokens_out=sum(c.tokens_out for c in llm_calls),
            model_ms=sum(c.latency_ms for c in llm_calls) if llm_calls else None,
            tenant=result.tenant,
            agent=self.name,
            agent_run_id=result.run_id,
            step=step.name,
            layer=step.layer,
            status=status,
            attempts=attempts,
            cache_hit=cached,
            task_run_id=task_run_id,
            duration_ms=duration_ms,
            error=error,
        )

    # -- the fallback ladder ----------------------------------------------------------------

    async def _ladder(
        self,
        step: Step[Any, Any],
        decision: Decision,
        args: dict[str, Any],
        result: RunResult,
        prefect_tasks: dict[str, Task[Any, Any]],
    ) -> LadderOutcome:
        """Below the threshold: fallback model, then a person, then the safe default."""
        options = step.options
        threshold = _thresholds.get().get(step.name, options.threshold)
        if threshold is None or decision.confidence >= threshold:
            return LadderOutcome(decision=decision, path="direct")
        extra_calls: list[LLMCall] = []
        proposed = decision
        if options.fallback_model:
            second = await self._ask_fallback(step, result, args, prefect_tasks, extra_calls)
            if second is not None:
                if second.confidence >= threshold:
                    return LadderOutcome(
                        decision=second, path="fallback_model", llm_calls=extra_calls
                    )
                if second.confidence > proposed.confidence:
                    proposed = second
        if options.review is not None:
            verdict = await self._review(step, proposed, args, result, options.review)
            if verdict is not None and verdict.verdict in ("approve", "correct"):
                final = proposed
                if verdict.verdict == "correct" and verdict.correction:
                    final = type(proposed).model_validate(
                        {**proposed.model_dump(), **verdict.correction}
                    )
                return LadderOutcome(
                    decision=final,
                    path="human",
                    llm_calls=extra_calls,
                    reviewer=verdict.reviewer,
                    correction=verdict.correction if verdict.verdict == "correct" else None,
                    proposed=proposed,
                )
        if options.default is not None:
            return _default_outcome(options.default, threshold, extra_calls, proposed)
        return LadderOutcome(decision=proposed, path="held", llm_calls=extra_calls, held=True)

    async def _without_model(
        self,
        step: Step[Any, Any],
        args: dict[str, Any],
        result: RunResult,
        prefect_tasks: dict[str, Task[Any, Any]],
    ) -> LadderOutcome | None:
        """The model stayed unreachable through every retry: the fallback model's decision if
        it clears the threshold, else the step's safe default; None when it has neither (the
        step fails). No person is asked: there is no proposal to review.
        """
        options = step.options
        threshold = _thresholds.get().get(step.name, options.threshold)
        extra_calls: list[LLMCall] = []
        if options.fallback_model:
            second = await self._ask_fallback(step, result, args, prefect_tasks, extra_calls)
            if second is not None and (threshold is None or second.confidence >= threshold):
                return LadderOutcome(decision=second, path="fallback_model", llm_calls=extra_calls)
        if options.default is None:
            return None
        return _default_outcome(options.default, threshold, extra_calls, None)

    async def _ask_fallback(
        self,
        step: Step[Any, Any],
        result: RunResult,
        args: dict[str, Any],
        prefect_tasks: dict[str, Task[Any, Any]],
        calls: list[LLMCall],
    ) -> Decision | None:
        """Run the step again on its fallback model; its decision, or None (`calls` gets the
        model calls it made either way)."""
        call = self._call(step, result, args, model=step.options.fallback_model)
        state = await prefect_tasks[step.name](call=call, args=quote(args), return_state=True)
        calls += call.llm_calls
        if not state.is_completed():
            return None
        second = await state.aresult()
        return second if isinstance(second, Decision) else None

    def _refusal(self, decision: Decision) -> str | None:
        """Why a decision may not be acted on (an action it names is not allowed), or None.

        Input text is data, not instructions: whatever the model was told, a decision can only
        name an action the agent declared, with arguments that fit that action's schema.
        """
        action = getattr(decision, "action", None)
        if action is None:
            return None
        allowed = self.agent.allowed_actions
        if allowed is None or action not in allowed:
            names = sorted(allowed or {})
            return f"action {str(action)[:100]!r} is not allowed (allowed: {names})"
        schema = allowed[action]
        arguments = getattr(decision, "arguments", None)
        if schema is None:
            if arguments:
                return f"action {action!r} takes no arguments"
            return None
        try:
            TypeAdapter(schema).validate_python(arguments or {})
        except ValueError as exc:
            return f"arguments of action {action!r} do not fit its schema: {exc}"[:500]
        return None

    async def _review(
        self,
        step: Step[Any, Any],
        proposed: Decision,
        args: dict[str, Any],
        result: RunResult,
        review: Review,
    ) -> ReviewInput | None:
        """Pause the flow run for a person; None when nobody answered in time.

        A verdict is kept in the action ledger, so a rerun never asks twice.
        """
        key = ledger.idempotency_key(
            result.tenant, self.name, result.subject or "", result.run_key, f"{step.name}#review"
        )
        try:
            record = await in_thread(
                ledger.claim,
                key,
                tenant=result.tenant,
                agent=self.name,
                subject=result.subject or "",
                run_key=result.run_key,
                step=f"{step.name}#review",
                agent_run_id=result.run_id,
            )
        except ActionInProgress:
            # A twin execution is asking (or just got an answer): use its verdict if there is
            # one, else fall to the default rather than ask a person twice.
            record = await in_thread(ledger.get, key)
            if record is None or record.status != "completed":
                result.notes.append(f"{step.name}: review in progress in another execution")
                return None
        if record.status == "completed" and isinstance(record.result, dict):
            return ReviewInput.model_validate(record.result)
        description = _review_markdown(self.name, step.name, result, args, proposed)
        async with self._review_lock():
            try:
                # pause_flow_run is async-dispatched: awaitable inside a flow run.
                pending: Any = pause_flow_run(
                    wait_for_input=ReviewInput.with_initial_data(
                        description=description, verdict="approve"
                    ),
                    timeout=int(review.timeout_seconds),
                    poll_interval=int(max(1, review.poll_interval)),
                    key=f"review-{step.name}-{result.run_key[:16]}",
                )
                verdict = cast(ReviewInput, await pending)
            except Exception as exc:  # FlowPauseTimeout or an API failure: fall to the default
                result.notes.append(f"{step.name}: review not completed ({type(exc).__name__})")
                return None
        await in_thread(ledger.complete, key, verdict.model_dump(mode="json", exclude={"metadata"}))
        return verdict

    def _review_lock(self) -> asyncio.Lock:
        # One pause at a time: a flow run can only be paused once at a time.
        loop = asyncio.get_running_loop()
        lock = self._review_locks.get(id(loop))
        if lock is None:
            lock = self._review_locks[id(loop)] = asyncio.Lock()
        return lock

    def _decision_row(
        self,
        step: Step[Any, Any],
        result: RunResult,
        args: dict[str, Any],
        outcome: LadderOutcome,
        llm_calls: Sequence[LLMCall],
        attempts: int,
        decision_id: str | None = None,
    ) -> DecisionRecord:
        from agents.observe import scrub_text

        decision = outcome.decision
        last = llm_calls[-1] if llm_calls else None
        tokens_in = sum(c.tokens_in for c in llm_calls)
        tokens_out = sum(c.tokens_out for c in llm_calls)
        model = getattr(last, "model", None)
        snapshot: Any = scrub_text(json.dumps(canonical(args), default=repr))[:20_000]
        with contextlib.suppress(ValueError):  # cut at 20k it is no longer JSON: keep the text
            snapshot = json.loads(snapshot)
        output = decision.model_dump(mode="json") if isinstance(decision, BaseModel) else decision
        return DecisionRecord(
            id=decision_id or new_id(),
            tenant=result.tenant,
            agent=self.name,
            step=step.name,
            agent_run_id=result.run_id,
            flow_run_id=result.flow_run_id,
            subject=result.subject,
            run_key=result.run_key,
            input_digest=digest(args, 64),
            input_snapshot=snapshot,
            prompt_digest=getattr(last, "prompt_digest", None) or None,
            # The prompt lives in the step's code: its source digest versions the prompt.
            prompt_version=step.source_digest,
            model=model,
            endpoint=getattr(last, "endpoint", None),
            raw_output=getattr(last, "raw_output", None),
            output=output,
            confidence=getattr(decision, "confidence", None),
            logprobs=getattr(last, "logprobs", None),
            rationale=scrub_text(str(getattr(decision, "rationale", "") or "")),
            path=outcome.path,
            reviewer=outcome.reviewer,
            correction=outcome.correction,
            tokens_in=tokens_in,
            tokens_out=tokens_out,
            # Each call at its own model's price: a fallback decision paid for both models.
            cost=sum(cost_of(c.model, c.tokens_in, c.tokens_out) for c in llm_calls),
            latency_ms=sum(c.latency_ms for c in llm_calls) if llm_calls else None,
            attempts=attempts,
            error_class=getattr(last, "error_class", None),
        )

    # -- inside the task run ----------------------------------------------------------------

    async def _execute(self, step: Step[Any, Any], call: StepCall, args: dict[str, Any]) -> Any:
        call.attempts += 1
        kwargs = {**args, **self._resources(step, call)}
        if step.layer == "action":
            return await self._act(step, call, kwargs)
        if step.layer != "learning":
            return await self._invoke(step, kwargs)
        before = {name: row.outcome_at for name, row in call.decisions.items()}
        value = await self._invoke(step, kwargs)
        # Outcomes set here are written before the step's result is persisted: a rerun that
        # takes this step from the cache does not set them again.
        changed = [r for n, r in call.decisions.items() if r.outcome_at != before.get(n)]
        if changed:
            await in_thread(record_decisions, changed)
        return value

    async def _invoke(self, step: Step[Any, Any], kwargs: dict[str, Any]) -> Any:
        if step.is_async:
            return await step.fn(**kwargs)
        return await in_thread(step.fn, **kwargs)

    def _resources(
        self, step: Step[Any, Any], call: StepCall, *, llm: LLM | None = None
    ) -> dict[str, Any]:
        """The injected resources a step declares (`llm` overridden for a shadow call)."""
        found: dict[str, Any] = {}
        for p in step.params:
            if p.name == "memory":
                found["memory"] = Memory(tenant=call.tenant, agent=call.agent, subject=call.subject)
            elif p.name == "llm":
                endpoint = resolve_endpoint(call.model) if call.model else None
                found["llm"] = llm or LLM(
                    endpoint=endpoint, calls=call.llm_calls, tenant=call.tenant
                )
            elif p.name == "context":
                found["context"] = RunContext(
                    agent=call.agent,
                    tenant=call.tenant,
                    subject=call.subject,
                    run_key=call.run_key,
                    run_id=call.run_id,
                    flow_run_id=call.flow_run_id,
                    step=call.step,
                    decisions=call.decisions,
                )
            elif p.name == "idempotency_key":
                found["idempotency_key"] = call.idempotency_key
        return found

    async def _act(self, step: Step[Any, Any], call: StepCall, kwargs: dict[str, Any]) -> Any:
        lease = ledger.lease_seconds(step.options.timeout)
        try:
            record = await in_thread(
                ledger.claim,
                call.idempotency_key,
                tenant=call.tenant,
                agent=call.agent,
                subject=call.subject or "",
                run_key=call.run_key,
                step=call.step,
                agent_run_id=call.run_id,
                owner=call.run_id,
                lease=lease,
            )
        except ActionInProgress as exc:
            return _conflict_state(call, exc)
        adapter: TypeAdapter[Any] = TypeAdapter(self.returns.get(step.name, Any))
        if record.status == "completed":
            if _twin_completed(record, call):
                return _conflict_state(
                    call,
                    ActionInProgress.completed_by_twin(
                        call.idempotency_key, record.lease_owner, record.completed_at
                    ),
                )
            # Done before (the result write or the process died after): replay its result.
            return adapter.validate_python(record.result)
        # Renewed in a thread while the action runs: a twin execution sees this one is alive.
        try:
            with ledger.hold(call.idempotency_key, call.run_id, lease=lease):
                value = await self._invoke(step, kwargs)
        except Exception:
            # Failed: whoever retries it (a task retry, a rerun) need not wait for the lease.
            with contextlib.suppress(Exception):
                await in_thread(ledger.release, call.idempotency_key, call.run_id)
            raise
        stored = adapter.dump_python(value, mode="json") if value is not None else None
        await in_thread(ledger.complete, call.idempotency_key, stored)
        return value


def _twin_completed(record: Any, call: StepCall) -> bool:
    """Whether another execution completed the action after this one started (a live twin,
    not an earlier run that a rerun replays)."""
    if record.status != "completed" or record.lease_owner in (None, call.run_id):
        return False
    started, completed = call.run_started_at, record.completed_at
    if started is None or completed is None:
        return False
    return bool(as_utc(completed) > as_utc(started))


def _conflict_state(call: StepCall, exc: ActionInProgress) -> Any:
    """End the action's task run Cancelled, with nothing written to its cache key.

    Cancelled, not Failed: nothing went wrong in this execution and retrying cannot help (the
    twin holds the key), so neither the step's retries nor the failure hook (Sentry) apply. The
    result is kept out of the cache, or a rerun would replay "nothing" as the action's result.
    """
    from prefect.transactions import get_transaction

    transaction = get_transaction()
    if transaction is not None:
        transaction.write_on_commit = False
    call.conflict = str(exc)
    return Cancelled(message=f"ActionInProgress: {exc}")


# -- helpers ----------------------------------------------------------------------------------


async def _flush_periodically(writer: RecordWriter, interval: float = 0.1) -> None:
    """Flush run records every `interval` seconds (one transaction for many runs)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await in_thread(writer.flush)
        except Exception:  # the database hiccuped: the rows stay queued for the next flush
            await asyncio.sleep(interval)


#: The thresholds in force for the batch being run (calibrated per tenant where a step opts in).
_thresholds: contextvars.ContextVar[Mapping[str, float]] = contextvars.ContextVar(
    "stalwart_thresholds", default=MappingProxyType({})
)

#: The progress callback of the batch being run (a context variable, not an attribute: one
#: compiled agent may run several batches at once, e.g. one per tenant).
_on_result: contextvars.ContextVar[Callable[[int, RunResult], None] | None] = (
    contextvars.ContextVar("stalwart_on_result", default=None)
)


def _decision_id(call: StepCall) -> str:
    """The id of the decision a cached reasoning call makes: the same in every execution of
    the run, so a twin's or a rerun's row for it is the same row."""
    return digest({"decision": call.cache_key}, 32)


def _default_outcome(
    default: Any, threshold: float | None, llm_calls: list[LLMCall], proposed: Decision | None
) -> LadderOutcome:
    """The step's safe default as the decision (held when it does not clear the threshold)."""
    if callable(default) and not isinstance(default, BaseModel):
        default = default()
    held = not isinstance(default, Decision) or (
        threshold is not None and default.confidence < threshold
    )
    return LadderOutcome(
        decision=default, path="default", llm_calls=llm_calls, held=held, proposed=proposed
    )


def _report_at(
    where: list[int], report: Callable[[int, RunResult], None], index: int, result: RunResult
) -> None:
    """`on_result` with a flow run's input index mapped back to the caller's."""
    report(where[index], result)


def _flow_run_name() -> str:
    from prefect.runtime import flow_run

    params = flow_run.parameters or {}
    inputs = params.get("inputs") or []
    name = flow_run.flow_name or "agent"
    if len(inputs) == 1 and isinstance(inputs[0], Mapping):
        label = inputs[0].get("subject") or inputs[0].get("run_key")
        return f"{name}/{label}" if label else f"{name}/run"
    return f"{name}/batch-{len(inputs)}"


def _toposort(
    names: list[str], deps: dict[str, tuple[str, ...]]
) -> tuple[list[str], list[str] | None]:
    """Kahn's algorithm, stable in declaration order; returns (order, a cycle or None)."""
    remaining = {n: {d for d in deps[n] if d != n and d in deps} for n in names}
    order: list[str] = []
    while True:
        ready = [n for n in names if n in remaining and not remaining[n]]
        if not ready:
            break
        for n in ready:
            order.append(n)
            del remaining[n]
        for pending in remaining.values():
            pending.difference_update(ready)
    if not remaining:
        return order, None
    start = next(iter(remaining))
    path = [start]
    seen = {start}
    current = start
    while True:
        current = sorted(remaining[current])[0]
        if current in seen:
            return order, path[path.index(current) :]
        path.append(current)
        seen.add(current)


def _ancestors(order: list[str], deps: dict[str, tuple[str, ...]]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for name in order:
        acc: set[str] = set()
        for d in deps[name]:
            acc.add(d)
            acc |= found.get(d, set())
        found[name] = acc
    return found


def _mid(name: str) -> str:
    return re.sub(r"\W", "_", name)


def _safe_key(key: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.:@-]", "_", key)[:480]


def _check_tenant(tenant: str) -> None:
    if not isinstance(tenant, str) or not tenant.strip():
        raise InputError("tenant: every run belongs to a tenant; pass tenant='<name>'")


def _describe(exc: BaseException) -> str:
    from agents.observe import scrub_text

    return scrub_text(f"{type(exc).__name__}: {exc}")[:2000]


async def _state_exception(state: Any) -> BaseException:
    try:
        data = await state.aresult(raise_on_failure=False)
    except Exception as exc:
        data = exc
    if isinstance(data, BaseException):
        return data
    return RuntimeError(state.message or state.name)
