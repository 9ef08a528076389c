"""The engine of a step's task run: the step's attempts, recorded by Prefect as one task run.

Prefect 3 records a task run from the state-change events its client emits. This engine emits
the same events Prefect's own task engine does (`prefect.task-run.Pending`, `Running`,
`AwaitingRetry`, `Retrying`, `Completed`, `Failed`, `TimedOut`, `Cancelled`, `Crashed`, through
`emit_task_run_state_change_event`), with the same task-run fields, except the short-lived ones:
a step's Running state is recorded once the step has run `STALWART_TASK_RUNNING_AFTER_SECONDS`
(or before a retry), and Pending not at all, so a step that ends sooner is recorded with its
final state alone, start and end times included (0: every state, as Prefect's engine). It runs
inside a `TaskRunContext` (so
`get_run_logger()`, `prefect.runtime.task_run` and nested tool task runs work in a step), and
owns what Prefect's engine would otherwise do for a step: retries with backoff and jitter and the
task's `retry_condition_fn`, the timeout, tag concurrency slots, the result write, the finished
line in the task-run log (for a completed step only when `STALWART_TASK_STATE_LOGS` asks).

What it leaves out is Prefect's per-task-run machinery a step does not use: a client context, a
transaction and cache lookup (the runner reads the stored result first, `PrefectStepRunner`), a
copy of the result store per run, and the parameter walk for upstream futures (a step's
arguments are plain values). The `Task` object stays the declaration: name, task key, retries,
delays, timeout, tags and result storage are read from it.

One handler per outcome, as in Prefect's engine: `begin_run`, `handle_success`, `handle_retry`,
`handle_exception`, `handle_timeout`, `handle_final_state` (the body returned a state, as an
action's conflict does) and `handle_crash`.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas import TaskRun
from prefect.client.schemas.objects import ConcurrencyLeaseHolder, StateDetails, TaskRunPolicy
from prefect.context import FlowRunContext, TaskRunContext
from prefect.events.schemas.events import Event
from prefect.logging.loggers import task_run_logger
from prefect.results import ResultRecord, ResultStore
from prefect.states import (
    AwaitingRetry,
    Completed,
    Failed,
    Pending,
    Retrying,
    Running,
    State,
    exception_to_crashed_state,
)
from prefect.task_engine import TaskRunTimeoutError
from prefect.tasks import Task
from prefect.types._datetime import now
from prefect.utilities.engine import emit_task_run_state_change_event
from prefect.utilities.math import clamped_poisson_interval

from agents._ids import new_uuid4, new_uuid7
from agents.redact import scrub_error
from agents.settings import get_current_settings

__all__ = ["TaskRunEngine", "TaskRunOutcome", "run_task"]


@dataclass(kw_only=True)
class TaskRunOutcome:
    """How a task run ended: its final state, and the body's value or exception."""

    state: State[Any]
    task_run_id: UUID
    value: Any = None
    error: BaseException | None = None


async def run_task(
    task: Task[Any, Any],
    body: Callable[[], Awaitable[Any]],
    *,
    name: str,
    parameters: dict[str, Any],
    result_store: ResultStore | None = None,
    persist_key: str | None = None,
    stored_form: Callable[[Any], Any] | None = None,
) -> TaskRunOutcome:
    """Run `body` as one task run of `task` named `name`; its value (`stored_form(value)` when
    given) is written to `result_store` under `persist_key`, when one is given, before the run
    is Completed (a default result store when none is)."""
    engine = TaskRunEngine(
        task,
        name=name,
        parameters=parameters,
        result_store=result_store,
        persist_key=persist_key,
        stored_form=stored_form,
    )
    return await engine.run(body)


class TaskRunEngine:
    """One task run: created Pending, then one attempt per retry until a final state."""

    def __init__(
        self,
        task: Task[Any, Any],
        *,
        name: str,
        parameters: dict[str, Any],
        result_store: ResultStore | None,
        persist_key: str | None,
        stored_form: Callable[[Any], Any] | None = None,
    ) -> None:
        self.task = task
        self.stored_form = stored_form
        self.parameters = parameters
        self.result_store = ResultStore() if result_store is None else result_store
        self.persist_key = persist_key
        self.flow_run_context = FlowRunContext.get()
        self.task_run = self._create_run(name)
        self.state: State[Any] = self.task_run.state  # type: ignore[assignment]
        self.retries = 0
        self.logger = task_run_logger(self.task_run, task=task)
        settings = get_current_settings()
        self.state_lines = settings.task_state_logs
        self.running_after = settings.task_running_after_seconds
        self._last_event: Event | None = None
        #: The Running state taken but not recorded yet, its predecessor, and the timer that
        #: records it once the step has run `running_after` seconds.
        self._unrecorded: tuple[State[Any], State[Any], asyncio.TimerHandle] | None = None

    # -- the run -------------------------------------------------------------------------------

    async def run(self, body: Callable[[], Awaitable[Any]]) -> TaskRunOutcome:
        try:
            async with AsyncExitStack() as stack:
                stack.enter_context(self._run_context())
                if not self.running_after:
                    # Pending inside the run context, as Prefect's engine emits it: the events
                    # worker takes related resources from the context current at the emit.
                    self._last_event = emit_task_run_state_change_event(
                        task_run=self.task_run, initial_state=None, validated_state=self.state
                    )
                if self.task_run.tags:
                    await stack.enter_async_context(self._concurrency_slots())
                self.begin_run()
                outcome = await self._attempts(body)
        except BaseException as exc:
            await self.handle_crash(exc)
            raise
        finally:
            self._forget_unrecorded()
        self._log_finished()
        return outcome

    async def _attempts(self, body: Callable[[], Awaitable[Any]]) -> TaskRunOutcome:
        seconds = self.task.timeout_seconds
        while True:
            try:
                async with asyncio.timeout(seconds) as deadline:
                    value = await body()
            except TimeoutError as exc:
                if deadline.expired():
                    timed_out = TaskRunTimeoutError(f"Scope timed out after {seconds} second(s).")
                    timed_out.__cause__ = exc
                    if await self.handle_retry(timed_out):
                        continue
                    return self.handle_timeout(timed_out)
                if await self.handle_retry(exc):
                    continue
                return self.handle_exception(exc)
            except Exception as exc:
                if await self.handle_retry(exc):
                    continue
                return self.handle_exception(exc)
            if isinstance(value, State):
                return self.handle_final_state(value)
            return await self.handle_success(value)

    # -- one handler per outcome -----------------------------------------------------------------

    def begin_run(self) -> None:
        running: State[Any] = Running(id=new_uuid7())
        self.task_run.start_time = running.timestamp  # type: ignore[assignment]  # as Prefect's
        if self.flow_run_context is not None and self.flow_run_context.flow_run is not None:
            self.task_run.flow_run_run_count = self.flow_run_context.flow_run.run_count
        if not self.running_after:
            self.set_state(running)
            return
        # Most steps end within a fraction of a second: their Running state would be two
        # events (client and server work) for a state nobody sees. It is recorded only if the
        # step is still running after `running_after` (the timer runs in this context: the
        # events worker takes related resources from it).
        last = self._take(running)
        timer = asyncio.get_running_loop().call_later(
            self.running_after, self._record_unrecorded, context=contextvars.copy_context()
        )
        self._unrecorded = (last, running, timer)

    async def handle_success(self, value: Any) -> TaskRunOutcome:
        data: Any = value
        if self.persist_key is not None:
            try:
                stored = value if self.stored_form is None else self.stored_form(value)
                record: ResultRecord[Any] = self.result_store.create_result_record(
                    stored, key=self.persist_key
                )
                await self.result_store.apersist_result_record(record)
            except Exception as exc:  # as Prefect's engine: the step is done, its cache is not
                self.logger.warning(
                    "Failed to write result: %s Execution will continue, but the result has "
                    "not been written",
                    scrub_error(exc),
                )
            else:
                data = record
        self.set_state(Completed(id=new_uuid7(), data=data))
        return self._outcome(value=value)

    async def handle_retry(self, exc: BaseException) -> bool:
        """Whether the step gets another attempt; if so, wait for it (AwaitingRetry, then
        Retrying), as Prefect's engine does."""
        task = self.task
        if self.retries >= task.retries or not self._may_retry(exc):
            return False
        delay = self._retry_delay()
        self.logger.info(
            "Task run failed with exception: %s - Retry %s/%s will start %s",
            scrub_error(exc),
            self.retries + 1,
            task.retries,
            f"{delay} second(s) from now" if delay else "immediately",
        )
        self.retries += 1
        if delay:
            scheduled = now("UTC") + timedelta(seconds=delay)
            self.set_state(AwaitingRetry(scheduled_time=scheduled))
            await asyncio.sleep(delay)
        self.set_state(Retrying())
        return True

    def handle_exception(self, exc: BaseException) -> TaskRunOutcome:
        self._log_failure(exc)
        self.set_state(_failed(exc))
        return self._outcome(error=exc)

    def handle_timeout(self, exc: TaskRunTimeoutError) -> TaskRunOutcome:
        message = f"Task run exceeded timeout of {self.task.timeout_seconds} second(s)"
        self.logger.error(message)
        self.set_state(Failed(data=exc, message=message, name="TimedOut"))
        return self._outcome(error=exc)

    def handle_final_state(self, state: State[Any]) -> TaskRunOutcome:
        """The body ended the run itself (an action's conflict returns `Cancelled`)."""
        self.set_state(state)
        return self._outcome(value=state)

    async def handle_crash(self, exc: BaseException) -> None:
        """Cancelled or interrupted mid-run: record Crashed (then the caller re-raises)."""
        try:
            state = await exception_to_crashed_state(exc)
            self.logger.error("Crash detected! %s", state.message)
            self.set_state(state)
        except BaseException:  # recording must not replace the exception that crashed the run
            pass

    # -- state -------------------------------------------------------------------------------

    def set_state(self, state: State[Any]) -> None:
        """Take `state` and emit its state-change event (as Prefect's `set_state`).

        A Running state not recorded yet is recorded first when `state` is not final (a
        retry's states follow it), and dropped when it is: the final event carries the run's
        start time, run count and run time."""
        if self._unrecorded is not None and not state.is_final():
            self._record_unrecorded()
        self._forget_unrecorded()
        last = self._take(state)
        self._emit(last, state)

    def _take(self, state: State[Any]) -> State[Any]:
        """Make `state` the run's state, its task-run fields updated as Prefect's engine does;
        returns the state it replaces."""
        last, task_run = self.state, self.task_run
        if last.timestamp and state.timestamp and state.timestamp <= last.timestamp:
            state.timestamp = last.timestamp + timedelta(microseconds=1)
        state.state_details.task_run_id = task_run.id
        state.state_details.flow_run_id = task_run.flow_run_id
        task_run.state = state
        task_run.state_id, task_run.state_type, task_run.state_name = (
            state.id,
            state.type,
            state.name,
        )
        if last.is_running() and state.timestamp and last.timestamp:
            task_run.total_run_time += state.timestamp - last.timestamp
        if state.is_running():
            task_run.run_count += 1
        if state.is_final() and task_run.start_time and not task_run.end_time:
            task_run.end_time = state.timestamp  # type: ignore[assignment]  # as Prefect's
        self.state = state
        return last

    def _emit(self, last: State[Any], state: State[Any]) -> None:
        self._last_event = emit_task_run_state_change_event(
            task_run=self.task_run,
            initial_state=last,
            validated_state=state,
            follows=self._last_event,
        )

    def _record_unrecorded(self) -> None:
        """Emit the Running state taken at the start (the step has run long enough, or is
        about to retry)."""
        if self._unrecorded is None:
            return
        last, running, timer = self._unrecorded
        timer.cancel()
        self._unrecorded = None
        self._emit(last, running)

    def _forget_unrecorded(self) -> None:
        if self._unrecorded is not None:
            self._unrecorded[2].cancel()
            self._unrecorded = None

    # -- internals -------------------------------------------------------------------------------

    def _create_run(self, name: str) -> TaskRun:
        task, context = self.task, self.flow_run_context
        flow_run_id = context.flow_run.id if context and context.flow_run else None
        parent = TaskRunContext.get()
        task_inputs: dict[str, Any] = {key: [] for key in self.parameters}
        if parent is not None and parent.task_run.flow_run_id == flow_run_id:
            from prefect.client.schemas.objects import TaskRunResult

            task_inputs["__parents__"] = [TaskRunResult(id=parent.task_run.id)]
        task_run_id = new_uuid7()
        state: State[Any] = Pending(
            id=new_uuid7(),
            state_details=StateDetails(task_run_id=task_run_id, flow_run_id=flow_run_id),
        )
        return TaskRun(
            id=task_run_id,
            name=name,
            flow_run_id=flow_run_id,
            task_key=task.task_key,
            dynamic_key=str(new_uuid4()),
            task_version=task.version,
            empirical_policy=TaskRunPolicy(
                retries=task.retries,
                retry_delay=task.retry_delay_seconds,
                retry_jitter_factor=task.retry_jitter_factor,
            ),
            tags=list(task.tags),
            task_inputs=task_inputs,
            expected_start_time=state.timestamp,
            state_id=state.id,
            state_type=state.type,
            state_name=state.name,
            state=state,
            created=state.timestamp,
            updated=state.timestamp,
        )

    def _run_context(self) -> TaskRunContext:
        context = self.flow_run_context
        client = context.client if context is not None else get_client()
        return TaskRunContext(
            task=self.task,
            task_run=self.task_run,
            parameters=self.parameters,
            result_store=self.result_store,
            persist_result=self.persist_key is not None,
            client=client,
        )

    def _concurrency_slots(self) -> Any:
        """Prefect's tag concurrency limits, held for the whole run as its engine does."""
        from prefect.concurrency._asyncio import concurrency

        return concurrency(
            names=[f"tag:{tag}" for tag in self.task_run.tags],
            occupy=1,
            holder=ConcurrencyLeaseHolder(type="task_run", id=self.task_run.id),
            lease_duration=60,
            suppress_warnings=True,
        )

    def _may_retry(self, exc: BaseException) -> bool:
        condition = self.task.retry_condition_fn
        if condition is None:
            return True
        try:
            return bool(condition(self.task, self.task_run, _failed(exc)))
        except Exception:
            self.logger.error("An error was encountered while running `retry_condition_fn`")
            return False

    def _retry_delay(self) -> float:
        delays = self.task.retry_delay_seconds
        if isinstance(delays, Sequence):
            delay = float(delays[min(self.retries, len(delays) - 1)]) if delays else 0.0
        else:
            delay = float(delays or 0)
        jitter = self.task.retry_jitter_factor
        if jitter and delay > 0:
            delay = float(clamped_poisson_interval(delay, clamping_factor=jitter))
        return delay

    def _log_failure(self, exc: BaseException) -> None:
        exhausted = " - Retries are exhausted" if self.task.retries else ""
        self.logger.error(
            "Task run failed with exception: %s%s", scrub_error(exc), exhausted, exc_info=exc
        )

    def _log_finished(self) -> None:
        if self.state.is_completed() and self.state_lines == "off":
            # A line per step printed through Prefect's rich console handler is a large share
            # of a batch's client CPU, for what the UI shows as each task run's state.
            return
        level = logging.INFO if self.state.is_completed() else logging.ERROR
        if self.logger.isEnabledFor(level):
            self.logger.log(level, f"Finished in state {self.state}")

    def _outcome(self, *, value: Any = None, error: BaseException | None = None) -> TaskRunOutcome:
        return TaskRunOutcome(
            state=self.state, task_run_id=self.task_run.id, value=value, error=error
        )


def _failed(exc: BaseException) -> State[Any]:
    """The Failed state of an attempt that raised `exc` (its message scrubbed of secrets)."""
    return Failed(data=exc, message=f"Task run encountered an exception {scrub_error(exc)}")
