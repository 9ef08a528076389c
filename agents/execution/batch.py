"""The batch: one flow run runs many inputs, each walking the graph as its own group of task
runs, at most `concurrency` at a time within the tenant's fair share; run records are written
in bulk while it runs.

One flow run per batch is deliberate: a Prefect flow call costs about a second of fixed
overhead, which one flow run per input would pay per input.

The flow run's final state tells how its inputs ended, once every input has finished
(`final_state`):

* `Failed`, message `"3 of 100 inputs failed"`, when any input failed (an invalid input, or a
  step that failed after its retries, e.g. a model down with no default to fall back on). Its
  failed-type state is what `agents.recovery.recover` re-submits and Prefect automations match.
* `Completed` named `Degraded`, message `"2 of 100 inputs took the safe default: the model was
  unavailable"`, when no input failed but some decision fell to its step's safe default because
  the model could not answer. The work is done, so nothing re-submits it; an automation matches
  the event `prefect.flow-run.Degraded`.
* `Completed` otherwise (held, awaiting-review and conflicting inputs are outcomes, not failures).

Either state carries the batch's results: `AgentRunner.arun_batch` returns them in every case,
as it did before; the flow run's tags name the tenant the run serves (`own_tenant_tags`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from prefect.context import FlowRunContext, TagsContext
from prefect.states import Completed, Failed, State

from agents._ids import new_hex
from agents.decisions import publish_artifact
from agents.declare.decision import LadderPath
from agents.digest import digest
from agents.errors import InputError
from agents.execution.call import RunScope
from agents.execution.events import confirm_sent, use_reliable_events
from agents.execution.heap import freeze_startup_heap
from agents.execution.prefect import PrefectStepRunner
from agents.execution.review import Reviewer, take_form_answer
from agents.execution.storage import result_storage
from agents.execution.threads import in_thread
from agents.execution.walk import RunWalk, StepRunner
from agents.graph import META_KEYS
from agents.observe import init_sentry, tracing
from agents.observe.logs import install_log_scrubbing
from agents.policy.tenants import run_slot, server_limit_name
from agents.redact import scrub_error
from agents.result import RunResult
from agents.settings import get_current_settings
from agents.store.records import RecordWriter
from agents.store.tables import AgentRun, utcnow

if TYPE_CHECKING:
    from prefect.client.schemas.objects import FlowRun

    from agents.execution.runner import AgentRunner
    from agents.graph import AgentGraph

logger = logging.getLogger(__name__)

#: The progress callback of the batch being run. A context variable, not a flow parameter (a
#: callback cannot travel as one) nor an attribute (one agent may run several batches at once,
#: e.g. one per tenant).
on_result: contextvars.ContextVar[Callable[[int, RunResult], None] | None] = contextvars.ContextVar(
    "stalwart_on_result", default=None
)

#: The name of the completed final state of a batch some of whose decisions fell to the safe
#: default because the model was unavailable (Prefect emits `prefect.flow-run.Degraded`).
DEGRADED = "Degraded"
#: The prefix of the flow-run tag that names the tenant a run serves.
TENANT_TAG = "tenant:"


async def run_flow_body(
    runner: AgentRunner,
    inputs: list[dict[str, Any]],
    tenant: str,
    concurrency: int,
    review: str | None = None,
) -> list[RunResult] | State[list[RunResult]]:
    """The body of the agent's flow run: every input of the batch, then monitoring and the
    decisions artifact. A review's own flow run (`review` set) first records the answer its
    form was given. Returns the results, or the final state holding them when some inputs
    failed or were degraded (see the module docstring)."""
    from prefect.runtime import flow_run

    check_tenant(tenant)
    freeze_startup_heap()
    use_reliable_events()  # before the first task run emits
    install_log_scrubbing()
    init_sentry()
    await own_tenant_tags(tenant)
    if not isinstance(inputs, list):
        raise InputError(f"inputs: expected a list of objects, got {type(inputs).__name__}")
    graph = runner.graph
    if review and flow_run.id:
        await take_form_answer(review, tenant, flow_run.id)
    storage = await result_storage()
    # A review's form is a flow run of the agent's own deployment: none when the agent runs
    # inside another deployment's flow (whose parameters are not the agent's).
    deployment_id = own_deployment_id()
    reviewer = Reviewer(graph.name, deployment_id=deployment_id)
    steps = PrefectStepRunner(graph, runner.tasks, storage, reviewer)
    flow_run_id = str(flow_run.id) if flow_run.id else None
    gate = asyncio.Semaphore(max(1, int(concurrency)))
    cap = get_current_settings().max_concurrency
    if concurrency > cap and len(inputs) > cap:
        logger.warning(
            "concurrency=%d exceeds STALWART_MAX_CONCURRENCY=%d (the process's cap on agent runs "
            "in flight): this batch runs at most %d at a time",
            concurrency,
            cap,
            cap,
        )
    report = on_result.get()
    degraded: set[str] = set()
    thresholds, server_limit = await asyncio.gather(
        thresholds_in_force(graph, tenant), server_limit_name(tenant)
    )
    # The graph's artifact is a courtesy: its request does not hold up the first input.
    published = asyncio.ensure_future(publish_graph(graph))
    writer = RecordWriter()
    flusher = asyncio.ensure_future(flush_periodically(writer))

    async def one(index: int, item: Any) -> RunResult:
        # The batch's own cap, then the tenant's fair share of the process (and of the
        # server's `tenant:<name>` limit when one exists).
        async with gate, run_slot(tenant, server_limit):
            result = await run_one(
                graph, steps, item, tenant, flow_run_id, writer, thresholds, degraded=degraded
            )
        if report is not None:
            report(index, result)
        return result

    try:
        # Task runs get no inherited tags (see `make_task`); the flow run carries them.
        with TagsContext(current_tags=set()):
            results = list(await asyncio.gather(*(one(i, item) for i, item in enumerate(inputs))))
    finally:
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await writer.aflush()
        await published

    async def decisions_artifact() -> None:
        if writer.decisions_seen:
            await publish_artifact(
                writer.decisions_seen[-500:],
                key=f"{graph.name}-decisions",
                description=f"Decisions of this flow run of `{graph.name}` (latest 500).",
            )

    # Three independent waits on the API, together (each is slow while the server is busy).
    # The server has read every task-run event of the batch before its flow run ends: a
    # process that exits with events still in its socket loses them (`confirm_sent`).
    await asyncio.gather(
        monitor(graph, tenant, deployment_id or under_deployment()),
        decisions_artifact(),
        confirm_sent(),
    )
    return final_state(results, degraded)


def final_state(
    results: list[RunResult], degraded: set[str]
) -> list[RunResult] | State[list[RunResult]]:
    """The flow run's final state for a finished batch (see the module docstring): `Failed`
    counting the failed inputs, `Completed` named `Degraded` counting the inputs whose decision
    fell to the safe default because the model was unavailable (`degraded`: their run ids), or
    the plain results (Prefect makes them `Completed`). The states carry the results.

    Example:
        >>> from agents.result import RunResult
        >>> done = RunResult(status="completed", run_id="a", run_key="k", tenant="acme")
        >>> bad = RunResult(status="failed", run_id="b", run_key="l", tenant="acme")
        >>> final_state([done, bad], set()).message
        '1 of 2 inputs failed'
        >>> state = final_state([done, bad], {"a"})
        >>> state.message
        '1 of 2 inputs failed; 1 of 2 took the safe default: the model was unavailable'
        >>> final_state([done, bad], {"b"}).name  # a failed run is counted as failed only
        'Failed'
        >>> final_state([done], {"a"}).name, final_state([done], set()) == [done]
        ('Degraded', True)
    """
    total = len(results)
    failed = sum(1 for r in results if r.status == "failed")
    fell = sum(1 for r in results if r.run_id in degraded and r.status != "failed")
    noun = "input" if total == 1 else "inputs"
    if failed:
        message = f"{failed} of {total} {noun} failed"
        if fell:
            message += f"; {fell} of {total} took the safe default: the model was unavailable"
        return Failed(message=message, data=results)
    if fell:
        message = f"{fell} of {total} {noun} took the safe default: the model was unavailable"
        return Completed(name=DEGRADED, message=message, data=results)
    return results


async def own_tenant_tags(tenant: str) -> None:
    """Make the flow run's tags name the tenant it serves, and no other.

    A deployment's tags (`tenant:demo` in prefect.yaml) and a parent flow run's are copied onto
    its flow runs whatever their `tenant` parameter: a run for `acme` would be tagged
    `tenant:demo`, and so would its flow-level Sentry events (the failure hook reads the tag).
    Costs one API call, only when the tags are wrong.
    """
    context = FlowRunContext.get()
    flow_run = context.flow_run if context is not None else None
    if flow_run is None:
        return
    tags = list(flow_run.tags or [])
    wanted = [t for t in tags if not t.startswith(TENANT_TAG)] + [f"{TENANT_TAG}{tenant}"]
    if sorted(set(wanted)) == sorted(set(tags)):
        return
    from prefect.client.orchestration import get_client

    try:
        async with get_client() as client:
            await client.update_flow_run(flow_run.id, tags=wanted)
    except Exception as exc:  # the UI's tag is a courtesy; the events below must still be right
        logger.warning("could not correct the tags of flow run %s: %s", flow_run.id, exc)
    # The engine hands this same object to the failure hook, which reads the tenant from it.
    flow_run.tags = wanted


async def run_one(
    graph: AgentGraph,
    steps: StepRunner,
    item: Any,
    tenant: str,
    flow_run_id: str | None,
    writer: RecordWriter,
    thresholds: Mapping[str, float],
    *,
    degraded: set[str] | None = None,
) -> RunResult:
    """One input of the batch: its `agent_run` row, the walk of its steps, its records.

    The run's id joins `degraded` when a decision of it fell to the safe default because the
    model was unavailable."""
    run_id = new_hex()
    if not isinstance(item, Mapping):
        return RunResult(
            status="failed",
            run_id=run_id,
            run_key="",
            tenant=tenant,
            error=f"InputError: expected an object, got {type(item).__name__}",
            flow_run_id=flow_run_id,
        )
    inputs, subject = split_item(item)
    run_key = run_key_of(item)
    result = RunResult(
        status="completed",
        run_id=run_id,
        run_key=run_key,
        tenant=tenant,
        subject=subject,
        flow_run_id=flow_run_id,
    )
    started = time.perf_counter()
    problems = graph.check_inputs(item)
    if problems:
        result.status = "failed"
        result.error = "InputError: " + "; ".join(problems)
    trace = None
    if not problems:
        trace = tracing.begin_run(
            agent=graph.name,
            tenant=tenant,
            subject=subject,
            run_key=run_key,
            run_id=run_id,
            flow_run_id=flow_run_id,
        )
    run_row = AgentRun(
        id=run_id,
        started_at=utcnow(),  # given: a default factory costs pydantic a signature inspection
        tenant=tenant,
        agent=graph.name,
        subject=subject,
        run_key=run_key,
        status="running" if not problems else "failed",
        inputs_digest=digest(inputs, 64),
        flow_run_id=flow_run_id,
        trace_id=trace.trace_id if trace is not None else None,
        error=result.error,
    )
    writer.start_run(run_row)
    if problems:
        return result

    scope = RunScope(started_at=run_row.started_at, trace=trace)
    walk = RunWalk(graph, steps, result, inputs, scope, thresholds)
    try:
        records = await walk.walk()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a runtime bug must fail this input only
        result.status = "failed"
        result.error = scrub_error(exc)
        records = walk.records
    tracing.end_run(trace, status=result.status, error=result.error)
    decisions, recovered, logged = records.decisions, records.recovered, records.logged
    if degraded is not None and any(fell_to_default(d) for d in [*decisions, *logged]):
        degraded.add(run_id)
    if result.status == "conflict":
        # The twin execution that holds the action logs the run's decisions: logging this
        # one's too would record the run's outcome twice.
        result.notes.append(
            f"another execution of run {run_key[:16]} holds its action; "
            f"{len(decisions)} decision(s) of this execution not logged"
        )
        decisions, recovered = [], []
    continued = []
    if result.status in ("completed", "held"):
        # The run went on past its reviews: `resume` has nothing more to do for them.
        continued = records.reviews
    writer.end_run(
        run_id,
        status=result.status,
        error=result.error,
        duration_ms=(time.perf_counter() - started) * 1000,
        steps=records.steps,
        decisions=decisions,
        recovered=recovered,
        continued=continued,
        reviewed=bool(records.reviews) or result.status == "awaiting_review",
    )
    return result


def run_key_of(item: Mapping[str, Any]) -> str:
    """The run key of one input: its `run_key`, else a digest of its inputs and subject (the
    same input gets the same key in every flow run, which is what makes reruns safe).

    Example:
        >>> run_key_of({"raw": {"id": 1}, "run_key": "ticket-1"})
        'ticket-1'
        >>> run_key_of({"raw": {"id": 1}}) == run_key_of({"raw": {"id": 1}, "subject": None})
        True
    """
    if item.get("run_key"):
        return str(item["run_key"])
    inputs, subject = split_item(item)
    return digest({"inputs": inputs, "subject": subject})


def split_item(item: Mapping[str, Any]) -> tuple[dict[str, Any], str | None]:
    """One input's run inputs (its keys but the meta keys) and its subject, as a string.

    Example:
        >>> split_item({"raw": {"id": 1}, "subject": 42, "run_key": "k"})
        ({'raw': {'id': 1}}, '42')
    """
    inputs = {k: v for k, v in item.items() if k not in META_KEYS}
    subject = item.get("subject")
    return inputs, None if subject is None else str(subject)


def fell_to_default(decision: Any) -> bool:
    """Whether a decision row is the safe default taken because the model did not answer (a
    review past its deadline also ends on the default, with no model error)."""
    return decision.path == LadderPath.DEFAULT.value and bool(decision.error_class)


async def thresholds_in_force(graph: AgentGraph, tenant: str) -> dict[str, float]:
    """The tenant's calibrated thresholds, read once per batch; {} when no step opts in."""
    if not any(s.options.calibrate is not None for s in graph.order):
        return {}
    from agents.learning.calibration import in_force

    found: dict[str, float] = await in_thread(in_force, graph, tenant)
    return found


def _context_flow_run() -> FlowRun | None:
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run if context is not None else None


def own_deployment_id() -> str | None:
    """The deployment this flow run was created from, read from the run context.

    Not `prefect.runtime.deployment.id`: outside a deployment it reads the flow run from the
    API with a blocking call, which stalls the event loop (seconds while the API server is busy
    recording the previous batch)."""
    run = _context_flow_run()
    return str(run.deployment_id) if run is not None and run.deployment_id else None


def under_deployment() -> str | None:
    """For a nested flow run: the deployment of the flow run it runs in, if any."""
    run = _context_flow_run()
    if run is None or run.parent_task_run_id is None:
        return None
    from prefect.runtime import deployment

    return deployment.id


async def monitor(graph: AgentGraph, tenant: str, deployment_id: Any) -> None:
    """Drift check and summary artifact at the end of a batch (STALWART_MONITOR)."""
    mode = get_current_settings().monitor
    if mode == "off" or (mode == "deployments" and not deployment_id):
        return
    from agents.observe.drift import monitor as check_drift

    try:
        await check_drift(tenant, graph.name)
    except Exception as exc:  # monitoring must never fail the batch it watches
        logger.warning("monitoring %s for %s failed: %s", graph.name, tenant, scrub_error(exc))


async def publish_graph(graph: AgentGraph) -> None:
    """The graph as a Mermaid artifact on the flow run (a courtesy: never fails a run)."""
    from prefect.artifacts import acreate_markdown_artifact

    key = re.sub(r"[^a-z0-9-]", "-", f"{graph.name.lower()}-dag")
    markdown = f"# Agent `{graph.name}`\n\n```mermaid\n{graph.mermaid()}\n```\n"
    with contextlib.suppress(Exception):
        await acreate_markdown_artifact(
            markdown=markdown, key=key, description=f"DAG of agent {graph.name}"
        )


async def flush_periodically(writer: RecordWriter, interval: float = 0.1) -> None:
    """Flush run records every `interval` seconds (one transaction for many runs)."""
    while True:
        await asyncio.sleep(interval)
        try:
            await writer.aflush()
        except Exception:  # the database hiccuped: the rows stay queued for the next flush
            await asyncio.sleep(interval)


def check_tenant(tenant: str) -> None:
    """Refuse a run without a tenant: every run belongs to one."""
    if not isinstance(tenant, str) or not tenant.strip():
        raise InputError("tenant: every run belongs to a tenant; pass tenant='<name>'")
