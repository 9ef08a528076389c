"""A declared step: `Step` (the user's function, its layer and options), its parameters, and
the checks visible from the function alone."""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import tokenize
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Literal, ParamSpec, TypeVar

from agents.declare.decision import Decision
from agents.declare.options import Calibration, Review, Shadow, StepOptions

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
        >>> from agents import Agent
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
        elif self.options.review is not None:
            try:
                self.options.review.timeout_seconds  # noqa: B018 (parsed to check it)
            except ValueError as exc:
                problems.append(f"{where}: option 'review': timeout: {exc}")
        if self.options.threshold is not None:
            if self.layer != "reasoning":
                problems.append(f"{where}: option 'threshold' only applies to reasoning steps")
            elif not 0.0 <= self.options.threshold <= 1.0:
                problems.append(
                    f"{where}: option 'threshold' is {self.options.threshold}; "
                    "use a value in [0, 1]"
                )
        if self.options.tools and self.layer != "reasoning":
            problems.append(
                f"{where}: option 'tools' only applies to reasoning steps (the model calls them)"
            )
        if self.options.max_turns < 1:
            problems.append(f"{where}: option 'max_turns' must be at least 1")
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
