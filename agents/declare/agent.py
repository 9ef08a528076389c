"""Declaration: `Agent` and its four layer decorators.

A step is a plain typed function. Its name is a node; each parameter named like another step is an
edge from that step; parameters named like a resource (`memory`, `llm`, `context`,
`idempotency_key`) are injected; every other parameter is a run input. `Agent.compile()` builds
the immutable `AgentGraph` (`agents.graph`); `run`, `batch` and `flow` hand the graph to
execution (`agents.execution`), the only way this module reaches it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, overload

from agents.declare.options import Calibration, Review, Shadow, StepOptions
from agents.declare.step import Layer, Step, StepInfo
from agents.errors import DeclarationError
from agents.graph import AgentGraph, build_graph

if TYPE_CHECKING:
    from agents.execution.runner import AgentRunner
    from agents.result import RunResult
    from agents.store.tables import Feedback

P = ParamSpec("P")
R = TypeVar("R")

#: Options only reasoning steps take.
_REASONING_OPTIONS = frozenset(
    {
        "threshold",
        "fallback_model",
        "review",
        "default",
        "shadow",
        "calibrate",
        "tools",
        "max_turns",
    }
)


class Agent:
    """An agent: a DAG of typed steps in four layers, compiled to a Prefect flow.

    Example:
        >>> from agents import Agent, Decision
        >>> greeter = Agent("greeter")
        >>> class Greeting(Decision):
        ...     text: str
        >>> @greeter.perception
        ... def name(raw: dict) -> str:
        ...     return raw["name"]
        >>> @greeter.reasoning(threshold=0.5)
        ... def greeting(name: str) -> Greeting:
        ...     return Greeting(text=f"hello {name}", confidence=1.0, rationale="rule")
        >>> [s.name for s in greeter.steps]
        ['name', 'greeting']
    """

    def __init__(
        self,
        name: str,
        *,
        description: str = "",
        allowed_actions: Mapping[str, type[Any] | None] | Sequence[str] | None = None,
    ) -> None:
        if not name or not all(c.isalnum() or c in "-_" for c in name):
            raise DeclarationError.single(
                name or "<empty>",
                f"agent name {name!r}: use letters, digits, '-' and '_' only",
            )
        self.name = name
        self.description = description
        #: Action names a decision may name (`decision.action`), each with the Pydantic model
        #: its `arguments` must fit (None: no arguments). None: decisions name no actions.
        self.allowed_actions: dict[str, type[Any] | None] | None = (
            None
            if allowed_actions is None
            else dict(allowed_actions)
            if isinstance(allowed_actions, Mapping)
            else dict.fromkeys(allowed_actions)
        )
        self._steps: list[Step[Any, Any]] = []
        self._graph: AgentGraph | None = None

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, steps={[s.name for s in self._steps]})"

    # -- layer decorators -------------------------------------------------------------------

    @overload
    def perception(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def perception(
        self,
        *,
        retries: int = ...,
        retry_delay: float = ...,
        timeout: float | None = ...,
        cache: bool = ...,
        tags: tuple[str, ...] | list[str] = ...,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...
    def perception(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare a perception step: turn raw input and memory into what the agent sees."""
        return self._decorate("perception", fn, options)

    @overload
    def reasoning(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def reasoning(
        self,
        *,
        threshold: float | None = ...,
        fallback_model: str | None = ...,
        review: Review | None = ...,
        default: Any = ...,
        shadow: Shadow | None = ...,
        calibrate: Calibration | None = ...,
        tools: Sequence[Callable[..., Any]] = ...,
        max_turns: int = ...,
        retries: int = ...,
        retry_delay: float = ...,
        timeout: float | None = ...,
        cache: bool = ...,
        tags: tuple[str, ...] | list[str] = ...,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...
    def reasoning(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare a reasoning step: return a `Decision` (from `llm.decide` or from rules)."""
        return self._decorate("reasoning", fn, options)

    @overload
    def action(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def action(
        self,
        *,
        retries: int = ...,
        retry_delay: float = ...,
        timeout: float | None = ...,
        cache: bool = ...,
        tags: tuple[str, ...] | list[str] = ...,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...
    def action(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare an action step: act on a decision in the world, at most once per run key."""
        return self._decorate("action", fn, options)

    @overload
    def learning(self, fn: Callable[P, R], /) -> Step[P, R]: ...
    @overload
    def learning(
        self,
        *,
        retries: int = ...,
        retry_delay: float = ...,
        timeout: float | None = ...,
        cache: bool = ...,
        tags: tuple[str, ...] | list[str] = ...,
    ) -> Callable[[Callable[P, R]], Step[P, R]]: ...
    def learning(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:  # type: ignore[misc]
        """Declare a learning step: record outcomes and feedback, update memory."""
        return self._decorate("learning", fn, options)

    def _decorate(
        self, layer: Layer, fn: Callable[..., Any] | None, options: dict[str, Any]
    ) -> Any:
        if "tags" in options:
            options["tags"] = tuple(options["tags"])
        if "tools" in options:
            options["tools"] = tuple(options["tools"] or ())
        unknown = set(options) - {f.name for f in dataclasses.fields(StepOptions)}
        if layer != "reasoning":
            unknown |= _REASONING_OPTIONS & set(options)
        if unknown:
            raise DeclarationError.single(
                self.name,
                f"@{self.name}.{layer}: unknown option(s) {sorted(unknown)}; "
                f"use {sorted(f.name for f in dataclasses.fields(StepOptions))}",
            )
        step_options = StepOptions(**options)

        def register(func: Callable[P, R]) -> Step[P, R]:
            if not callable(func):
                raise DeclarationError.single(
                    self.name, f"@{self.name}.{layer} decorates a function, got {func!r}"
                )
            step: Step[P, R] = Step(func, agent=self.name, layer=layer, options=step_options)
            own = step.own_problems()
            if own:
                raise DeclarationError(self.name, own)
            self._steps.append(step)
            self._graph = None
            return step

        if fn is not None:
            return register(fn)
        return register

    # -- feedback ---------------------------------------------------------------------------

    def feedback(
        self,
        decision_id: str,
        *,
        tenant: str,
        correct: bool | None = None,
        label: Any = None,
        score: float | None = None,
        note: str | None = None,
        by: str | None = None,
    ) -> Feedback:
        """Record feedback on one of this agent's decisions (see `agents.learning.feedback`).

        Args:
            decision_id: The decision's id in the decision log.
            tenant: Its tenant; a decision of another tenant (or agent) raises
                `UnknownDecision` and nothing is written.
            correct: Whether the decision was right.
            label: The right answer, usually the corrected fields (`{"category": "billing"}`).
            score: A grade in [0, 1].
            note: Free text.
            by: Who gave it.

        Example:
            >>> triage.feedback(decision.id, tenant="acme", correct=False,  # doctest: +SKIP
            ...                 label={"category": "billing"}, by="ana")
        """
        from agents.learning.feedback import give

        return give(
            decision_id,
            tenant=tenant,
            correct=correct,
            label=label,
            score=score,
            note=note,
            by=by,
            agent=self.name,
        )

    # -- inspection and compilation -------------------------------------------------------

    @property
    def steps(self) -> tuple[StepInfo, ...]:
        """Read-only views of the declared steps, in execution order."""
        graph = self.compile()
        return tuple(graph.info(step.name) for step in graph.order)

    def compile(self) -> AgentGraph:
        """Validate the whole DAG and build its graph; raises `DeclarationError`.

        Called by `run`, `batch` and `flow`; cached until another step is declared.
        """
        if self._graph is None:
            self._graph = build_graph(
                self.name,
                list(self._steps),
                description=self.description,
                allowed_actions=self.allowed_actions,
            )
        return self._graph

    def _runner(self) -> AgentRunner:
        from agents.execution.runner import runner_for

        return runner_for(self.compile())

    @property
    def flow(self) -> Any:
        """The Prefect `Flow` that runs the agent (parameters: `inputs`, `tenant`,
        `concurrency`, and `review`, set only on a review's own flow run)."""
        return self._runner().flow

    def graph(self) -> str:
        """The DAG as a Mermaid diagram."""
        return self.compile().mermaid()

    def run(
        self,
        *,
        tenant: str = "default",
        subject: str | None = None,
        run_key: str | None = None,
        **inputs: Any,
    ) -> RunResult:
        """Run the agent once, as one Prefect flow run, and wait for its result.

        Args:
            tenant: The tenant (client project) the run belongs to.
            subject: Whose memory the run reads and writes (a customer, an account, ...).
            run_key: Stable key of this piece of work; defaults to a digest of the inputs, so
                running the same input again never repeats its actions.
            **inputs: The run inputs, by parameter name.

        Example:
            >>> result = greeter.run(tenant="acme", raw={"name": "Ada"})  # doctest: +SKIP
            >>> result.outputs["greeting"].text  # doctest: +SKIP
            'hello Ada'
        """
        from prefect.utilities.asyncutils import run_coro_as_sync

        return run_coro_as_sync(
            self.arun(tenant=tenant, subject=subject, run_key=run_key, **inputs)
        )

    async def arun(
        self,
        *,
        tenant: str = "default",
        subject: str | None = None,
        run_key: str | None = None,
        **inputs: Any,
    ) -> RunResult:
        """Async twin of `run`."""
        item = dict(inputs)
        if subject is not None:
            item["subject"] = subject
        if run_key is not None:
            item["run_key"] = run_key
        self.compile().check_inputs(item, raise_error=True)
        results = await self._runner().arun_batch([item], tenant=tenant, concurrency=1)
        return results[0]

    def batch(
        self, inputs: list[dict[str, Any]], *, tenant: str = "default", concurrency: int = 16
    ) -> list[RunResult]:
        """Run the agent over many inputs in one Prefect flow run; results in input order.

        Each input dict holds run inputs and may carry its own `subject` and `run_key`. One
        failing input fails only its own `RunResult`.
        """
        return self._runner().run_batch(inputs, tenant=tenant, concurrency=concurrency)

    async def abatch(
        self, inputs: list[dict[str, Any]], *, tenant: str = "default", concurrency: int = 16
    ) -> list[RunResult]:
        """Async twin of `batch`."""
        return await self._runner().arun_batch(inputs, tenant=tenant, concurrency=concurrency)

    def resume(self, *, tenant: str = "default", concurrency: int = 16) -> list[RunResult]:
        """Continue every run of `tenant` stopped at a review that is now answered, or past its
        deadline (the step's safe default then applies), in one Prefect flow run.

        Finished steps are taken from their persisted results (no model call is repeated) and
        each action still runs at most once. Reviews still pending are left waiting; a run
        already continued (by a rerun of its batch, say) is not run again.

        Example:
            >>> from agents import reviews  # doctest: +SKIP
            >>> (waiting,) = reviews.pending(tenant="acme", agent="triage")  # doctest: +SKIP
            >>> reviews.answer(waiting.id, tenant="acme", verdict="approve", reviewer="ana")
            ... # doctest: +SKIP
            >>> [r.status for r in triage.resume(tenant="acme")]  # doctest: +SKIP
            ['completed']
        """
        return self._runner().resume(tenant=tenant, concurrency=concurrency)

    async def aresume(self, *, tenant: str = "default", concurrency: int = 16) -> list[RunResult]:
        """Async twin of `resume`."""
        return await self._runner().aresume(tenant=tenant, concurrency=concurrency)

    def serve(
        self,
        name: str | None = None,
        *,
        inputs: list[dict[str, Any]] | None = None,
        tenant: str = "default",
        concurrency: int = 16,
        **options: Any,
    ) -> None:
        """Serve the agent's flow without a work pool or worker: Prefect's `Flow.serve`.

        The process polls the API for its scheduled or triggered runs and executes them
        itself, until interrupted. `options` go to `Flow.serve` (`cron`, `interval`, `tags`,
        `limit`, ...); `inputs`, `tenant` and `concurrency` become the default parameters.
        Call it under `if __name__ == "__main__":` in a script: each flow run executes in a
        child process that imports the script again.

        Example:
            >>> triage.serve("ticket-triage", cron="*/30 * * * *", tenant="acme",
            ...              inputs=[{"raw": {...}, "subject": "cust-1"}])  # doctest: +SKIP
        """
        parameters = {"inputs": inputs or [], "tenant": tenant, "concurrency": concurrency}
        parameters.update(options.pop("parameters", {}) or {})
        tags = [f"agent:{self.name}", f"tenant:{tenant}", *options.pop("tags", [])]
        self.flow.serve(name=name or self.name, parameters=parameters, tags=tags, **options)
