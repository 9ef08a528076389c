"""The agent runner: a graph's Prefect flow and tasks, and running batches through them.

`runner_for(graph)` gives the one runner of a graph (cached per graph), so the flow and its
tasks are built once however many batches run.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Coroutine, Mapping, Sequence
from typing import Any, cast

from prefect import Flow, State, Task, tags
from prefect.utilities.annotations import quote
from prefect.utilities.asyncutils import run_coro_as_sync

from agents._ids import new_hex
from agents.execution import batch
from agents.execution.prefect import (
    batch_run_name,
    create_flow_run,
    make_batch_flow,
    make_flow,
    make_task,
    unquoted,
)
from agents.execution.recording import prepare_temporary_server
from agents.execution.storage import result_storage
from agents.execution.threads import in_thread
from agents.graph import AgentGraph
from agents.inputs import batches, input_problem
from agents.result import RunResult

logger = logging.getLogger(__name__)

#: One runner per graph, for the life of the process, like the Prefect flows they hold. (A weak
#: mapping would never let go either: each runner holds its graph.)
_runners: dict[AgentGraph, AgentRunner] = {}


def runner_for(graph: AgentGraph) -> AgentRunner:
    """The runner of `graph`, built on first use."""
    runner = _runners.get(graph)
    if runner is None:
        runner = _runners[graph] = AgentRunner(graph)
    return runner


class AgentRunner:
    """Runs an agent graph as a Prefect flow: one flow run per batch of inputs."""

    def __init__(self, graph: AgentGraph) -> None:
        self.graph = graph
        self.name = graph.name
        self.flow: Flow[Any, Any] = make_flow(graph, self._flow_body)
        self._batch_flows: dict[int, Flow[Any, Any]] = {}

    async def _flow_body(
        self, inputs: list[dict[str, Any]], tenant: str, concurrency: int, review: str | None
    ) -> list[RunResult] | State[list[RunResult]]:
        return await batch.run_flow_body(self, inputs, tenant, concurrency, review)

    @functools.cached_property
    def tasks(self) -> dict[str, Task[Any, Any]]:
        """The step tasks, by step name (built on first use)."""
        return {name: make_task(node) for name, node in self.graph.nodes.items()}

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
        batch.check_tenant(tenant)
        prepare_temporary_server()
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
                run_id=new_hex(),
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
            token = batch.on_result.set(report)  # per call: batches may run concurrently
            try:
                with tags(*self._flow_tags(chunk, tenant)):
                    done = await self._flow_results(chunk, tenant, concurrency)
            finally:
                batch.on_result.reset(token)
            for index, result in zip(where, done, strict=True):
                results[index] = result
        return [r for r in results if r is not None]

    async def _flow_results(
        self, chunk: list[dict[str, Any]], tenant: str, concurrency: int
    ) -> list[RunResult]:
        """One flow run's results, whatever its final state: a batch with failed inputs ends
        `Failed` (`agents.execution.batch.final_state`) and still returns every result. An
        exception that ended the flow run is raised, as calling the flow would."""
        from prefect.context import FlowRunContext
        from prefect.flow_engine import run_flow

        parameters: dict[str, Any] = {"inputs": chunk, "tenant": tenant, "concurrency": concurrency}
        if FlowRunContext.get() is not None:  # a subflow: Prefect links it to its parent
            running = self.flow(**parameters, return_state=True)
        else:
            flow = await self._batch_flow()
            name = batch_run_name(self.name, chunk)
            flow_run = await create_flow_run(flow, parameters, name=name)
            # Quoted, Prefect's engine does not walk the inputs for futures (it unwraps them).
            parameters["inputs"] = quote(chunk)
            running = run_flow(flow, flow_run=flow_run, parameters=parameters, return_type="state")
        state = await cast("Coroutine[Any, Any, State[Any]]", running)
        data = unquoted(await state.aresult(raise_on_failure=False))
        if isinstance(data, BaseException):
            raise data
        if not isinstance(data, list):
            raise RuntimeError(f"flow run of {self.name} ended {state.name}: {state.message}")
        return cast("list[RunResult]", data)

    async def _batch_flow(self) -> Flow[Any, Any]:
        """The flow this runner's own batches run (`make_batch_flow`), made once per result
        storage (one per Prefect API)."""
        storage = await result_storage()
        flow = self._batch_flows.get(id(storage))
        if flow is None:
            flow = self._batch_flows[id(storage)] = make_batch_flow(
                self.graph, self._flow_body, storage
            )
        return flow

    def resume(self, *, tenant: str, concurrency: int = 16) -> list[RunResult]:
        """Continue the runs stopped at reviews now answered or expired (`Agent.resume`)."""
        return run_coro_as_sync(self.aresume(tenant=tenant, concurrency=concurrency))

    async def aresume(self, *, tenant: str, concurrency: int = 16) -> list[RunResult]:
        """Async twin of `resume`: one flow run for every run to continue, in review order."""
        from agents.store import reviews

        batch.check_tenant(tenant)
        await in_thread(reviews.expire_due, tenant=tenant, agent=self.name)
        waiting = await in_thread(reviews.to_continue, tenant=tenant, agent=self.name)
        items: dict[str, dict[str, Any]] = {}
        for review in waiting:  # one run may wait on several steps: continue it once
            if isinstance(review.run_input, dict):
                items.setdefault(review.run_key, dict(review.run_input))
        if not items:
            return []
        logger.info("%s: continuing %d run(s) of tenant %s", self.name, len(items), tenant)
        return await self.arun_batch(list(items.values()), tenant=tenant, concurrency=concurrency)

    def _flow_tags(self, items: list[dict[str, Any]], tenant: str) -> list[str]:
        found = [f"agent:{self.name}", f"tenant:{tenant}"]
        subjects = {i.get("subject") for i in items if i.get("subject") is not None}
        if len(subjects) == 1:
            found.append(f"subject:{subjects.pop()}")
        return found


def _report_at(
    where: list[int], report: Callable[[int, RunResult], None], index: int, result: RunResult
) -> None:
    """`on_result` with a flow run's input index mapped back to the caller's."""
    report(where[index], result)
