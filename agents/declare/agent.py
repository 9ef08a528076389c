"""Declaration: `Agent`, its four layer decorators, `Step`, and validation of the DAG.

A step is a plain typed function. Its name is a node; each parameter named like another step is an
edge from that step; parameters named like a resource (`memory`, `llm`, `context`,
`idempotency_key`) are injected; every other parameter is a run input. Validation collects every
problem and raises one `DeclarationError`. Compiling to Prefect lives in `agents._compile`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import tokenize
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, TypeVar, overload

from agents._decision import Decision
from agents.errors import DeclarationError
from agents.learning._options import Calibration

if TYPE_CHECKING:
    from agents._compile import CompiledAgent
    from agents.result import RunResult
    from agents.store.tables import Feedback

P = ParamSpec("P")
R = TypeVar("R")

Layer = Literal["perception", "reasoning", "action", "learning"]
LAYERS: tuple[Layer, ...] = ("perception", "reasoning", "action", "learning")

#: Parameter names injected by the runtime instead of wired to a step or a run input.
RESOURCES: Mapping[str, str] = {
    "memory": "Memory: what the agent remembers about the run's subject (per tenant)",
    "llm": "LLM: structured model calls (perception and reasoning steps)",
    "context": "RunContext: tenant, subject, run key and ids of the current run",
    "idempotency_key": "str: the stable key an action passes to the outside system",
}
#: Names the runtime uses for run metadata; no step or parameter may take them.
RESERVED = frozenset({"tenant", "subject", "run_key", "inputs", "concurrency"})
_LLM_LAYERS = frozenset({"perception", "reasoning"})


def parse_duration(value: float | str) -> float:
    """Seconds from a number or a string like `90s`, `30m`, `4h`, `2d`.

    Example:
        >>> parse_duration("4h")
        14400.0
    """
    if isinstance(value, int | float):
        return float(value)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    text = value.strip().lower()
    if text and text[-1] in units:
        return float(text[:-1]) * units[text[-1]]
    return float(text)


@dataclass(frozen=True, kw_only=True)
class Review:
    """Human review, the second rung of the fallback ladder.

    The flow run pauses with a typed form in the Prefect UI showing the input, the proposed
    decision, its confidence and rationale; the reviewer approves, corrects or rejects it.

    Example:
        >>> Review(timeout="4h").timeout_seconds
        14400.0
    """

    timeout: float | str = "4h"
    """How long to wait for a reviewer before falling to the default."""
    poll_interval: float = 10.0
    """How often the paused run checks for the reviewer's answer, in seconds."""

    @property
    def timeout_seconds(self) -> float:
        return parse_duration(self.timeout)


@dataclass(frozen=True, kw_only=True)
class Shadow:
    """A candidate model that sees a share of live decisions: recorded, never acted on.

    The chosen runs (a stable hash of the run key, so a rerun picks the same ones) call the
    reasoning step once more with the candidate; its decision is logged with `path="shadow"`
    beside the real one. Compare them with `stalwart decisions --path shadow` or
    `stalwart shadow`.

    Example:
        >>> Shadow(model="gpt-4o-mini", share=0.1).picks("run-key-1") in (True, False)
        True
    """

    model: str
    """The candidate model, on the endpoint in force."""
    share: float = 0.1
    """Share of runs (0..1) whose decision the candidate also makes."""

    def picks(self, run_key: str) -> bool:
        """Whether the run with this key is in the shadow share (stable across processes)."""
        import hashlib

        bucket = int(hashlib.sha256(run_key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
        return bucket < self.share


@dataclass(frozen=True, kw_only=True)
class StepOptions:
    """How a step runs. Every option has a default; decorators accept each as a keyword."""

    retries: int = 0
    """Attempts after the first when the step raises (never for a `UserError`)."""
    retry_delay: float = 1.0
    """Base delay in seconds; attempt n waits `retry_delay * 2**(n-1)`, with jitter."""
    timeout: float | None = None
    """Seconds before an attempt is abandoned and counted as failed."""
    cache: bool = True
    """Persist the result and reuse it when the same inputs come again (in any process)."""
    tags: tuple[str, ...] = ()
    """Extra Prefect tags on this step's task runs."""
    threshold: float | None = None
    """Reasoning only: below this confidence the fallback ladder runs; a decision still below
    it is held and no action runs on it."""
    fallback_model: str | None = None
    """Reasoning only, rung 1: the model asked again when confidence is below the threshold."""
    review: Review | None = None
    """Reasoning only, rung 2: a person approves, corrects or rejects the decision."""
    default: Any = None
    """Reasoning only, rung 3: the safe decision (an instance of the step's return type, or a
    function of no arguments returning one) used when nothing above reached the threshold.
    Actions run on it only if its own confidence meets the threshold."""
    calibrate: Calibration | None = None
    """Reasoning only: let `agents.learning.calibration.apply` move the threshold per tenant,
    within `Calibration.bounds`, to meet `Calibration.target_precision`."""
    shadow: Shadow | None = None
    """Reasoning only: a candidate model also decides a share of runs, logged, never acted on."""


@dataclass(frozen=True)
class StepInfo:
    """A read-only view of a declared step, for inspection and docs."""

    name: str
    layer: Layer
    depends_on: tuple[str, ...]
    resources: tuple[str, ...]
    run_inputs: tuple[str, ...]
    options: StepOptions
    is_async: bool


@dataclass(frozen=True)
class Param:
    """One parameter of a step function, as declared."""

    name: str
    annotation: Any
    has_default: bool
    default: Any = None


class Step(Generic[P, R]):
    """A declared step: the user's function plus its layer and options.

    Calling a step calls the function itself, so steps stay testable as plain Python.

    Example:
        >>> agent = Agent("echo")
        >>> @agent.perception
        ... def words(text: str) -> list[str]:
        ...     return text.split()
        >>> words("a b")
        ['a', 'b']
    """

    def __init__(
        self, fn: Callable[P, R], *, agent: str, layer: Layer, options: StepOptions
    ) -> None:
        self.fn = fn
        self.agent = agent
        self.name: str = fn.__name__
        self.layer: Layer = layer
        self.options = options
        self.is_async = inspect.iscoroutinefunction(fn)
        self.__doc__ = fn.__doc__
        self.__wrapped__ = fn
        signature = inspect.signature(fn)
        self.params: tuple[Param, ...] = tuple(
            Param(
                name=p.name,
                annotation=p.annotation,
                has_default=p.default is not inspect.Parameter.empty,
                default=None if p.default is inspect.Parameter.empty else p.default,
            )
            for p in signature.parameters.values()
        )
        self.return_annotation: Any = signature.return_annotation
        self._kinds = [p.kind for p in signature.parameters.values()]
        self.source_digest = _source_digest(fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def __repr__(self) -> str:
        return f"Step({self.agent}.{self.name}, layer={self.layer!r})"

    @property
    def qualified_name(self) -> str:
        """`<agent>.<step>`: the Prefect task name."""
        return f"{self.agent}.{self.name}"

    def with_options(self, **options: Any) -> Step[P, R]:
        """A copy of the step with some options replaced (the original is unchanged)."""
        return Step(
            self.fn,
            agent=self.agent,
            layer=self.layer,
            options=dataclasses.replace(self.options, **options),
        )

    def own_problems(self) -> list[str]:
        """Problems visible from the function alone: hints, reserved names, parameter kinds."""
        problems: list[str] = []
        where = f"{self.layer} step '{self.name}'"
        if self.name in RESOURCES or self.name in RESERVED:
            problems.append(
                f"{where}: the name '{self.name}' is reserved by the runtime; rename the function"
            )
        for param, kind in zip(self.params, self._kinds, strict=True):
            if kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
                problems.append(
                    f"{where}: parameter '{param.name}' is variadic; name each input explicitly"
                )
                continue
            if kind is inspect.Parameter.POSITIONAL_ONLY:
                problems.append(
                    f"{where}: parameter '{param.name}' is positional-only; steps are called "
                    "by keyword"
                )
            if param.annotation is inspect.Parameter.empty:
                problems.append(f"{where}: parameter '{param.name}' has no type hint; annotate it")
            if param.name in RESERVED:
                problems.append(
                    f"{where}: parameter '{param.name}' uses a reserved name; read it from "
                    "`context: RunContext` instead"
                )
            if param.name == "llm" and self.layer not in _LLM_LAYERS:
                problems.append(
                    f"{where}: parameter 'llm' is only injected into perception and reasoning "
                    "steps; decide in a reasoning step and act on its output"
                )
            if param.name == "idempotency_key" and self.layer != "action":
                problems.append(
                    f"{where}: parameter 'idempotency_key' is only injected into action steps"
                )
        if self.return_annotation is inspect.Signature.empty:
            problems.append(f"{where}: the return type has no hint; annotate it (-> None if none)")
        if self.options.calibrate is not None:
            if self.layer != "reasoning":
                problems.append(f"{where}: option 'calibrate' only applies to reasoning steps")
            elif not isinstance(self.options.calibrate, Calibration):
                problems.append(f"{where}: option 'calibrate' must be a Calibration(...)")
            else:
                problems.extend(
                    f"{where}: option 'calibrate': {problem}"
                    for problem in self.options.calibrate.problems(self.options.threshold)
                )
        for ladder in ("fallback_model", "review", "default"):
            if getattr(self.options, ladder) is not None:
                if self.layer != "reasoning":
                    problems.append(f"{where}: option '{ladder}' only applies to reasoning steps")
                elif self.options.threshold is None:
                    problems.append(
                        f"{where}: option '{ladder}' needs a 'threshold' to know when to apply"
                    )
        if self.options.shadow is not None and not isinstance(self.options.shadow, Shadow):
            problems.append(f"{where}: option 'shadow' must be a Shadow(model=..., share=...)")
        if self.options.review is not None and not isinstance(self.options.review, Review):
            problems.append(f"{where}: option 'review' must be a Review(...)")
        if self.options.threshold is not None:
            if self.layer != "reasoning":
                problems.append(f"{where}: option 'threshold' only applies to reasoning steps")
            elif not 0.0 <= self.options.threshold <= 1.0:
                problems.append(
                    f"{where}: option 'threshold' is {self.options.threshold}; "
                    "use a value in [0, 1]"
                )
        if self.options.retries < 0:
            problems.append(f"{where}: option 'retries' is negative")
        if self.options.timeout is not None and self.options.timeout <= 0:
            problems.append(f"{where}: option 'timeout' must be positive")
        return problems


def _source_digest(fn: Callable[..., Any]) -> str:
    try:
        source = inspect.getsource(fn)
    except (OSError, TypeError, SyntaxError, tokenize.TokenError):
        # No readable source (a REPL, exec'd text whose file name points at something else):
        # the name still keys the cache, never a crash at declaration.
        source = getattr(fn, "__qualname__", repr(fn))
    return hashlib.sha256(source.encode()).hexdigest()[:16]


@dataclass
class _Registry:
    steps: list[Step[Any, Any]] = field(default_factory=list)


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
        self._registry = _Registry()
        self._compiled: CompiledAgent | None = None

    def __repr__(self) -> str:
        return f"Agent({self.name!r}, steps={[s.name for s in self._registry.steps]})"

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
        unknown = set(options) - {f.name for f in dataclasses.fields(StepOptions)}
        if layer != "reasoning":
            unknown |= {
                "threshold",
                "fallback_model",
                "review",
                "default",
                "shadow",
                "calibrate",
            } & set(options)
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
            self._registry.steps.append(step)
            self._compiled = None
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
        """Read-only views of the declared steps, in declaration order."""
        compiled = self.compile()
        return tuple(compiled.info(step.name) for step in compiled.order)

    def compile(self) -> CompiledAgent:
        """Validate the whole DAG and build its Prefect flow; raises `DeclarationError`.

        Called by `run`, `batch` and `flow`; cached until another step is declared.
        """
        if self._compiled is None:
            from agents._compile import CompiledAgent

            self._compiled = CompiledAgent.build(self, list(self._registry.steps))
        return self._compiled

    @property
    def flow(self) -> Any:
        """The compiled Prefect `Flow` (parameters: `inputs`, `tenant`, `concurrency`)."""
        return self.compile().flow

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
        compiled = self.compile()
        item = dict(inputs)
        if subject is not None:
            item["subject"] = subject
        if run_key is not None:
            item["run_key"] = run_key
        compiled.check_inputs(item, raise_error=True)
        results = await compiled.arun_batch([item], tenant=tenant, concurrency=1)
        return results[0]

    def batch(
        self, inputs: list[dict[str, Any]], *, tenant: str = "default", concurrency: int = 16
    ) -> list[RunResult]:
        """Run the agent over many inputs in one Prefect flow run; results in input order.

        Each input dict holds run inputs and may carry its own `subject` and `run_key`. One
        failing input fails only its own `RunResult`.
        """
        return self.compile().run_batch(inputs, tenant=tenant, concurrency=concurrency)

    async def abatch(
        self, inputs: list[dict[str, Any]], *, tenant: str = "default", concurrency: int = 16
    ) -> list[RunResult]:
        """Async twin of `batch`."""
        return await self.compile().arun_batch(inputs, tenant=tenant, concurrency=concurrency)

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


# -- type compatibility ---------------------------------------------------------------------


def resolve_hints(step: Step[Any, Any]) -> tuple[dict[str, Any], Any]:
    """Resolve a step's parameter and return hints; unresolvable ones come back as `Any`."""
    try:
        hints = typing.get_type_hints(step.fn)
    except Exception:
        hints = {}
    params = {p.name: hints.get(p.name, Any) for p in step.params}
    return params, hints.get("return", Any)


def is_concrete_class(annotation: Any) -> bool:
    """A plain class, not `Any`, a union, a generic alias or a type variable."""
    return (
        isinstance(annotation, type)
        and not isinstance(annotation, types.GenericAlias)
        and annotation is not typing.Any
        and typing.get_origin(annotation) is None
    )


def returns_decision(annotation: Any) -> bool | None:
    """True/False when the hint is known, None when it cannot be judged (e.g. `Any`)."""
    if is_concrete_class(annotation):
        return issubclass(annotation, Decision)
    return None
