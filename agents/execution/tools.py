"""Tool calls as durable Prefect task runs: the `ToolRunner` a reasoning step's `llm` uses in a
run.

Each call is a task run named `<agent>.<step>.<tool>[<subject>]` whose result is persisted in
the SQL result storage under a key of tenant, agent, run key, step, turn, tool and arguments:
a step re-executed after a kill reads its finished tool calls from there (no task run) instead
of calling the tools again, and two tenants never share a result. A tool gets the run's
`context` and a read-only `memory` when it asks for them; it follows its step's retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from prefect import Task
from prefect.results import ResultStore
from prefect.tasks import exponential_backoff
from prefect.transactions import CommitMode, atransaction
from prefect.utilities.annotations import quote

from agents.digest import digest
from agents.execution.inject import inject
from agents.execution.storage import ComputedKey, result_storage
from agents.execution.threads import in_thread
from agents.policy.retry import retry_unless_user_error

if TYPE_CHECKING:
    from agents.declare.tool import Tool
    from agents.execution.call import StepCall
    from agents.graph import StepNode
    from agents.store.memory import Memory
    from agents.store.results import SQLResultStorage

__all__ = ["PrefectToolRunner", "ReadOnlyMemory"]


TOOL_CACHE = ComputedKey(parameter="key")


class ReadOnlyMemory:
    """The run's memory as a tool sees it: read, never written (tools have no side effects)."""

    def __init__(self, memory: Memory) -> None:
        self._memory = memory

    def get(self, key: str, default: Any = None) -> Any:
        return self._memory.get(key, default)

    def keys(self) -> list[str]:
        return self._memory.keys()

    def items(self) -> dict[str, Any]:
        return self._memory.items()


_tasks: dict[tuple[int, str, int], Task[Any, Any]] = {}


def tool_task(node: StepNode, tool: Tool, storage: SQLResultStorage) -> Task[Any, Any]:
    """The Prefect task of one tool of one step (built once per step, tool and storage)."""
    found = _tasks.get((id(node), tool.name, id(storage)))
    if found is not None:
        return found
    step = node.step

    async def run_tool(
        key: str, label: str, arguments: dict[str, Any], resources: dict[str, Any]
    ) -> Any:
        if tool.is_async:
            return await tool.fn(**arguments, **resources)
        return await in_thread(tool.fn, **arguments, **resources)

    run_tool.__name__ = tool.name
    run_tool.__doc__ = tool.description
    retries = step.options.retries
    task: Task[Any, Any] = Task(
        fn=run_tool,
        name=f"{step.qualified_name}.{tool.name}",
        task_run_name="{label}",
        retries=retries,
        retry_delay_seconds=exponential_backoff(step.options.retry_delay) if retries else 0,
        retry_jitter_factor=0.5 if retries else None,
        retry_condition_fn=retry_unless_user_error,
        timeout_seconds=step.options.timeout,
        cache_policy=TOOL_CACHE,
        persist_result=True,
        result_storage=storage,
        refresh_cache=True,  # the runner read the stored result first: Prefect only writes it
        tags=set(step.options.tags),
    )
    _tasks[(id(node), tool.name, id(storage))] = task
    return task


class PrefectToolRunner:
    """Runs one step call's tool calls as durable, cached Prefect task runs."""

    def __init__(self, node: StepNode, call: StepCall) -> None:
        self.node = node
        self.call = call

    async def run(self, turn: int, tool: Tool, arguments: dict[str, Any]) -> Any:
        call = self.call
        storage = await result_storage()
        key = "tool-" + digest(
            {
                "tenant": call.tenant,
                "agent": call.agent,
                "run_key": call.run_key,
                "step": call.step,
                "model": call.model,
                "turn": turn,
                "tool": tool.name,
                "arguments": arguments,
            },
            64,
        )
        try:
            # Finished before (this run, killed mid-loop, is executing again): replay it
            # without a task run, as a step's persisted result is read.
            record = await ResultStore(result_storage=storage).aread(key)
        except Exception:  # missing (the usual case) or unreadable: run the tool
            pass
        else:
            return record.result
        resources = inject(tool.resources, call, llm=_no_llm)
        if "memory" in resources:
            resources["memory"] = ReadOnlyMemory(resources["memory"])
        label = f"{call.agent}.{call.step}.{tool.name}[{call.subject or call.run_key[:12]}]"
        # EAGER: the tool's result is written when the tool finishes. By default a task run
        # nested in the step's task run commits with it, so a kill mid-loop would lose it.
        async with atransaction(commit_mode=CommitMode.EAGER):
            state = await tool_task(self.node, tool, storage)(
                key=key,
                label=label,
                arguments=quote(arguments),
                resources=quote(resources),
                return_state=True,
            )
        return await state.aresult()


def _no_llm() -> Any:
    raise TypeError("a tool does not call the model")
