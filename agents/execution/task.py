"""The body of a step's task run: inject resources, call the user's function, and take actions
through the action ledger so each runs at most once per idempotency key."""

from __future__ import annotations

import contextlib
from typing import Any

from prefect.states import Cancelled

from agents.endpoint import resolve_endpoint
from agents.errors import ActionInProgress
from agents.execution.call import RunScope, StepCall, StepTrace
from agents.execution.inject import inject
from agents.execution.threads import in_thread
from agents.execution.tools import PrefectToolRunner
from agents.graph import StepNode
from agents.observe import tracing
from agents.resources.llm import LLM
from agents.store import ledger
from agents.store._convert import as_utc
from agents.store.decisions import record_decisions


async def execute(
    node: StepNode, call: StepCall, args: dict[str, Any], trace: StepTrace, scope: RunScope
) -> Any:
    """One attempt of one step call; its value (an action's conflict ends Cancelled)."""
    # The run's trace comes in explicitly (the task run may execute in another thread); the
    # fallback model's attempt serves the ladder's next rung.
    rung = "fallback_model" if call.model else "model"
    with tracing.in_step(scope.trace, call.step, rung=rung):
        return await _execute(node, call, args, trace, scope)


async def _execute(
    node: StepNode, call: StepCall, args: dict[str, Any], trace: StepTrace, scope: RunScope
) -> Any:
    trace.attempts += 1
    step = node.step

    def model_client() -> LLM:
        endpoint = resolve_endpoint(call.model) if call.model else None
        return LLM(
            endpoint=endpoint,
            calls=trace.llm_calls,
            tenant=call.tenant,
            tools=node.tools,
            max_turns=step.options.max_turns,
            tool_runner=PrefectToolRunner(node, call) if node.tools else None,
        )

    kwargs = {**args, **inject(node.resources, call, llm=model_client, decisions=scope.decisions)}
    if step.layer == "action":
        return await act(node, call, trace, scope, kwargs)
    if step.layer != "learning":
        return await invoke(node, kwargs)
    before = {name: row.outcome_at for name, row in scope.decisions.items()}
    value = await invoke(node, kwargs)
    # Outcomes set here are written before the step's result is persisted: a rerun that takes
    # this step from the cache does not set them again.
    changed = [r for n, r in scope.decisions.items() if r.outcome_at != before.get(n)]
    if changed:
        await in_thread(record_decisions, changed)
    return value


async def invoke(node: StepNode, kwargs: dict[str, Any]) -> Any:
    """Call the user's function: awaited when async, in the runtime's threads when not."""
    step = node.step
    if step.is_async:
        return await step.fn(**kwargs)
    return await in_thread(step.fn, **kwargs)


async def act(
    node: StepNode, call: StepCall, trace: StepTrace, scope: RunScope, kwargs: dict[str, Any]
) -> Any:
    """Run an action once per idempotency key: claim it in the ledger, hold the claim while it
    runs, store its result; replay the stored result when it was done before."""
    with tracing.action(call.step, call.idempotency_key) as span:
        return await _act(node, call, trace, scope, kwargs, span)


async def _act(
    node: StepNode,
    call: StepCall,
    trace: StepTrace,
    scope: RunScope,
    kwargs: dict[str, Any],
    span: tracing.ActionSpan,
) -> Any:
    lease = ledger.lease_seconds(node.step.options.timeout)
    try:
        record = await ledger.aclaim(
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
        span.done("conflict")
        return conflict_state(trace, exc)
    adapter = node.adapter
    if record.status == "completed":
        if twin_completed(record, call, scope):
            span.done("conflict")
            return conflict_state(
                trace,
                ActionInProgress.completed_by_twin(
                    call.idempotency_key, record.lease_owner, record.completed_at
                ),
            )
        # Done before (the result write or the process died after): replay its result.
        span.done("replayed")
        return adapter.validate_python(record.result)
    # Renewed in a thread while the action runs: a twin execution sees this one is alive.
    try:
        with ledger.hold(call.idempotency_key, call.run_id, lease=lease):
            value = await invoke(node, kwargs)
    except Exception:
        # Failed: whoever retries it (a task retry, a rerun) need not wait for the lease.
        with contextlib.suppress(Exception):
            await in_thread(ledger.release, call.idempotency_key, call.run_id)
        raise
    stored = adapter.dump_python(value, mode="json") if value is not None else None
    await ledger.acomplete(call.idempotency_key, stored)
    span.done("completed")
    return value


async def twin_conflict(call: StepCall, scope: RunScope) -> str | None:
    """For a cached action: why it was completed by a twin execution running alongside this
    one, or None. Only cached actions (reruns, twins) pay this one ledger read."""
    record = await ledger.aget(call.idempotency_key)
    if record is not None and twin_completed(record, call, scope):
        return str(
            ActionInProgress.completed_by_twin(
                call.idempotency_key, record.lease_owner, record.completed_at
            )
        )
    return None


def twin_completed(record: Any, call: StepCall, scope: RunScope) -> bool:
    """Whether another execution completed the action after this one started (a live twin,
    not an earlier run that a rerun replays)."""
    if record.status != "completed" or record.lease_owner in (None, call.run_id):
        return False
    started, completed = scope.started_at, record.completed_at
    if started is None or completed is None:
        return False
    return bool(completed > as_utc(started))  # loaded columns are aware UTC


def conflict_state(trace: StepTrace, exc: ActionInProgress) -> Any:
    """End the action's task run Cancelled, with nothing written to its cache key.

    Cancelled, not Failed: nothing went wrong in this execution and retrying cannot help (the
    twin holds the key), so neither the step's retries nor the failure hook (Sentry) apply. The
    task engine writes no result for a run its body ends with a state, or a rerun would replay
    "nothing" as the action's result.
    """
    trace.conflict = str(exc)
    return Cancelled(message=f"ActionInProgress: {exc}")
