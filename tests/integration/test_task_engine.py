"""Stalwart's task engine: every step is still a Prefect task run, recorded with the state
history, counts and times Prefect's own engine gives it, without Prefect's task engine running.

Each test reads what the (temporary) Prefect API server recorded, as the UI does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest
from pydantic import create_model

from agents import Agent, Decision

pytestmark = pytest.mark.usefixtures("prefect_api")


class Routing(Decision):
    queue: str


def _recorded(flow_run_id: str, count: int, timeout: float = 20.0) -> dict[str, Any]:
    """The flow run's task runs by name, each with its state history, once `count` of them
    are final (the server records task runs from events, a moment after the run)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs_of = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            task_runs = client.read_task_runs(flow_run_filter=runs_of)
            final = [t for t in task_runs if t.state is not None and t.state.is_final()]
            if len(final) >= count or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        return {t.name: (t, client.read_task_run_states(t.id)) for t in task_runs}


def _history(states: list[Any]) -> list[str]:
    return [s.name for s in sorted(states, key=lambda s: s.timestamp)]


#: What each step of the test below records, by `STALWART_TASK_RUNNING_AFTER_SECONDS`: 0 gives
#: every state, as Prefect's engine records them; by default a step that ends within a second
#: records no Pending and no Running (unless a retry follows it), only its final state.
HISTORIES = {
    0.0: {
        "flaky": ["Pending", "Running", *["AwaitingRetry", "Retrying"] * 2, "Completed"],
        "slow": ["Pending", "Running", "TimedOut"],
        "route": ["Pending", "Running", "Completed"],
    },
    1.0: {
        "flaky": ["Running", *["AwaitingRetry", "Retrying"] * 2, "Completed"],
        "slow": ["TimedOut"],
        "route": ["Completed"],
    },
}


@pytest.mark.parametrize("running_after", sorted(HISTORIES))
def test_retries_and_timeouts_are_recorded_as_prefects_engine_records_them(
    sqlite_url: str, running_after: float
) -> None:
    from agents.settings import get_current_settings, temporary_settings

    assert get_current_settings().task_running_after_seconds == 1.0  # the default
    name = f"te-states-{uuid.uuid4().hex[:6]}"
    agent = Agent(name)
    attempts: list[int] = []

    @agent.perception(retries=2, retry_delay=0.05, cache=False)
    def flaky(raw: str) -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("transient")
        return raw

    @agent.perception(timeout=0.3, cache=False)
    async def slow(raw: str) -> str:
        await asyncio.sleep(5)
        return raw

    @agent.reasoning
    def route(flaky: str) -> Routing:
        return Routing(queue=flaky, confidence=1.0, rationale="fixed")

    @agent.reasoning
    def late(slow: str) -> Routing:
        return Routing(queue=slow, confidence=1.0, rationale="fixed")

    with temporary_settings(task_running_after_seconds=running_after):
        result = agent.run(tenant="acme", subject="s1", raw="x")
    assert result.steps == {
        "flaky": "completed",
        "slow": "failed",
        "route": "completed",
        "late": "skipped",
    }
    assert result.flow_run_id
    found = _recorded(result.flow_run_id, count=3)

    expected = HISTORIES[running_after]
    flaky_run, flaky_states = found[f"{name}.flaky[s1]"]
    assert _history(flaky_states) == expected["flaky"]
    assert flaky_run.run_count == 3
    assert flaky_run.task_key and flaky_run.flow_run_id is not None
    assert str(flaky_run.flow_run_id) == result.flow_run_id
    assert flaky_run.start_time is not None and flaky_run.end_time is not None
    assert flaky_run.end_time >= flaky_run.start_time
    assert flaky_run.total_run_time.total_seconds() > 0
    assert flaky_run.empirical_policy.retries == 2

    slow_run, slow_states = found[f"{name}.slow[s1]"]
    assert _history(slow_states) == expected["slow"]
    assert slow_run.state is not None and slow_run.state.is_failed()
    assert "exceeded timeout of 0.3 second(s)" in (slow_run.state.message or "")

    route_run, route_states = found[f"{name}.route[s1]"]
    assert _history(route_states) == expected["route"]
    # The step's result persists (it caches): the Completed state points at the stored record.
    completed = next(s for s in route_states if s.name == "Completed")
    assert completed.state_details.task_run_id == route_run.id
    # Its final state alone still gives the UI its run count and times.
    assert route_run.run_count == 1 and route_run.start_time is not None
    assert route_run.end_time is not None and route_run.end_time >= route_run.start_time
    assert route_run.total_run_time.total_seconds() > 0


def test_a_step_logs_through_prefects_run_logger_to_its_task_run(sqlite_url: str) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    name = f"te-logs-{uuid.uuid4().hex[:6]}"
    agent = Agent(name)
    seen: dict[str, Any] = {}

    @agent.perception(cache=False)
    def note(raw: str) -> str:
        from prefect import get_run_logger
        from prefect.runtime import task_run

        seen["task_run_id"] = task_run.id
        seen["task_run_name"] = task_run.name
        get_run_logger().warning("a note from the step %s", raw)
        return raw

    @agent.reasoning(cache=False)
    def route(note: str) -> Routing:
        return Routing(queue=note, confidence=1.0, rationale="fixed")

    result = agent.run(tenant="acme", subject="s2", raw="x")
    assert result.status == "completed", result.error
    assert seen["task_run_name"] == f"{name}.note[s2]"
    assert result.flow_run_id
    logs_of = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result.flow_run_id]))
    deadline = time.monotonic() + 15
    with get_client(sync_client=True) as client:
        while True:
            notes = [
                line
                for line in client.read_logs(log_filter=logs_of)
                if "a note from the step x" in line.message
            ]
            if notes or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    assert [str(line.task_run_id) for line in notes] == [str(seen["task_run_id"])]


@pytest.mark.parametrize(
    ("running_after", "history"), [(0.1, ["Running", "Crashed"]), (5.0, ["Crashed"])]
)
def test_a_cancelled_task_run_is_recorded_crashed_and_the_cancellation_goes_on(
    sqlite_url: str, running_after: float, history: list[str]
) -> None:
    """Cancelled 0.3 s in: a step that has run past the delay has been recorded Running (the
    timer's event) before it crashes; one cancelled sooner is recorded Crashed alone."""
    from prefect import flow, task

    from agents.execution.task_engine import run_task
    from agents.settings import temporary_settings

    started = asyncio.Event()

    async def body() -> str:
        started.set()
        await asyncio.sleep(30)
        return "never"

    @task(name="te-crash-step")
    async def declaration() -> None: ...

    @flow(name=f"te-crash-{uuid.uuid4().hex[:6]}", persist_result=False)
    async def crashing() -> str:
        from prefect.runtime import flow_run

        with temporary_settings(task_running_after_seconds=running_after):
            running = asyncio.ensure_future(
                run_task(declaration, body, name="te-crash-step[run]", parameters={})
            )
            await started.wait()
            await asyncio.sleep(0.3)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running
        return str(flow_run.id)

    flow_run_id = asyncio.run(crashing())
    found = _recorded(flow_run_id, count=1)
    task_run, states = found["te-crash-step[run]"]
    assert _history(states) == history
    assert task_run.state is not None and task_run.state.is_crashed()


def test_a_model_result_persists_as_the_declared_model_not_its_runtime_subclass(
    sqlite_url: str,
) -> None:
    """instructor returns instances of a subclass it creates: pickling one pickles the class
    whole, and rebuilding the class on every read made reruns slow. The stored result holds
    the declared model's fields; a rerun gets the declared model back, equal field by field."""
    import sqlalchemy as sa
    from prefect._internal.result_records import ResultRecord

    from agents.store.engine import get_engine
    from agents.store.tables import StepResult

    name = f"te-model-{uuid.uuid4().hex[:6]}"
    agent = Agent(name)
    made_here = create_model("MadeAtRunTime", __base__=Routing)
    calls: list[str] = []

    @agent.reasoning
    def route(raw: str) -> Routing:
        calls.append(raw)
        value: Routing = made_here(queue=raw, confidence=0.9, rationale="r")
        return value

    first = agent.run(tenant="acme", subject="s3", raw="billing")
    second = agent.run(tenant="acme", subject="s3", raw="billing")
    assert calls == ["billing"]  # the rerun read the stored result
    assert type(first.outputs["route"]).__name__ == "MadeAtRunTime"
    assert type(second.outputs["route"]) is Routing
    assert second.outputs["route"].model_dump() == first.outputs["route"].model_dump()
    with get_engine(sqlite_url).connect() as conn:
        contents = list(conn.execute(sa.select(StepResult.__table__.c.content)).scalars())  # type: ignore[attr-defined]
    stored = [ResultRecord.deserialize(_bytes(c)).result for c in contents]
    assert stored == [first.outputs["route"].model_dump()]


def _bytes(content: Any) -> bytes:
    return content if isinstance(content, bytes) else str(content).encode()


def test_a_tagged_step_holds_its_tag_concurrency_slot_while_it_runs(sqlite_url: str) -> None:
    """A step's tags reach its task run, and a tag concurrency limit on the server holds the
    step to it: two runs of a step limited to one slot do not overlap."""
    from prefect import get_client

    tag = f"te-tag-{uuid.uuid4().hex[:6]}"
    name = f"te-tags-{uuid.uuid4().hex[:6]}"
    agent = Agent(name)
    spans: list[tuple[float, float]] = []

    @agent.perception(tags=[tag], cache=False)
    async def slow(raw: str) -> str:
        started = time.monotonic()
        await asyncio.sleep(0.5)
        spans.append((started, time.monotonic()))
        return raw

    @agent.reasoning(cache=False)
    def route(slow: str) -> Routing:
        return Routing(queue=slow, confidence=1.0, rationale="fixed")

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=tag, concurrency_limit=1)
    try:
        results = agent.batch(
            [{"raw": "a", "subject": "t1"}, {"raw": "b", "subject": "t2"}],
            tenant="acme",
            concurrency=2,
        )
    finally:
        with get_client(sync_client=True) as client:
            client.delete_concurrency_limit_by_tag(tag)
    assert [r.status for r in results] == ["completed", "completed"], [r.error for r in results]
    (_, first_ended), (second_started, _) = sorted(spans)
    assert second_started >= first_ended, f"the limit of one slot did not hold: {spans}"
    assert results[0].flow_run_id
    found = _recorded(results[0].flow_run_id, count=4)
    assert found[f"{name}.slow[t1]"][0].tags == [tag]


@pytest.mark.parametrize("setting", ["off", "local"])
def test_a_completed_steps_finished_line_is_logged_only_when_asked(
    sqlite_url: str, setting: str
) -> None:
    """By default a completed step logs no "Finished in state Completed()" (the UI shows its
    state); `STALWART_TASK_STATE_LOGS=local` brings the line back; a failed step is logged at
    ERROR either way."""
    import logging

    from agents.settings import temporary_settings

    agent = Agent(f"te-lines-{uuid.uuid4().hex[:6]}")

    @agent.perception(cache=False)
    def parsed(raw: str) -> str:
        if raw == "bad":
            raise ValueError("unreadable ticket")
        return raw

    @agent.learning(cache=False)
    def noted(parsed: str) -> None:
        return None

    class Kept(logging.Handler):
        def __init__(self) -> None:
            super().__init__(logging.DEBUG)
            self.records: list[logging.LogRecord] = []

        def emit(self, record: logging.LogRecord) -> None:
            self.records.append(record)

    agent.run(tenant="acme", subject="warm", raw="fine")  # Prefect sets its logging up once
    kept = Kept()
    logger = logging.getLogger("prefect.task_runs")
    level = logger.level
    logger.addHandler(kept)
    logger.setLevel(logging.INFO)
    try:
        with temporary_settings(task_state_logs=setting):
            good = agent.run(tenant="acme", subject="good", raw="fine")
            bad = agent.run(tenant="acme", subject="bad", raw="bad")
    finally:
        logger.removeHandler(kept)
        logger.setLevel(level)
    assert (good.status, bad.status) == ("completed", "failed")
    completed = [
        r.getMessage()
        for r in kept.records
        if r.levelno == logging.INFO and r.getMessage().startswith("Finished in state Completed")
    ]
    assert len(completed) == (2 if setting == "local" else 0), completed
    errors = [r.getMessage() for r in kept.records if r.levelno == logging.ERROR]
    assert any("unreadable ticket" in m for m in errors), errors
