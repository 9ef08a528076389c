"""Tracing: the span tree of one agent run, recorded once and sent to Sentry and to OTLP.

One internal span model feeds both sinks, so they cannot drift: `begin_run` decides, once per
run, whether the run is traced (Sentry: `STALWART_SENTRY_TRACES_SAMPLE_RATE` or the Sentry
block's `traces_sample_rate`; OpenTelemetry: `STALWART_OTLP_ENDPOINT` with the `OTEL_TRACES_SAMPLER`
in force), and a traced run records, in memory:

* the run (op `gen_ai.invoke_agent`, named `invoke_agent <agent>`): tenant, subject, run key,
  run id, flow run id, status;
* one span per step (op `stalwart.step`): layer, outcome, attempts, task run id;
* one `gen_ai.chat` span per model call: model, endpoint name, input/output tokens, cost,
  latency, attempts, cached or not, ladder rung;
* one `gen_ai.execute_tool` span per tool call and per action: name, status, and for an action
  its idempotency key (itself a sha256 digest of the action's coordinates, never data).

When the run ends, `end_run` hands the finished tree to each sink that sampled it
(`agents.observe.sentry.send_trace`, `agents.observe.otel.export_trace`). Nothing is recorded for
a run that is not traced, and with no sink configured `begin_run` returns None after two
attribute reads.

The run's steps execute in Prefect task runs, sometimes in worker threads: the trace travels
explicitly, in the run's `RunScope`, and the task body re-enters it (`in_step`); from there a
context variable (copied into threads by `in_thread` and `asyncio.to_thread`) lets the model and
tool hooks (`model_call`, `tool_call`, `action`) find their step. Attribute names are the ones
Sentry's AI Agents module and the OpenTelemetry GenAI semantic conventions share
(`gen_ai.operation.name`, `gen_ai.agent.name`, `gen_ai.request.model`,
`gen_ai.usage.input_tokens`, `gen_ai.tool.name`, ...); Stalwart's own are under `stalwart.`.
Prompts, outputs and tool arguments are recorded only with `STALWART_TRACE_CONTENT=true`, and
then scrubbed by `agents.redact` like every other attribute.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import random
import secrets
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from agents.redact import scrub_text, scrub_value
from agents.settings import get_current_settings

if TYPE_CHECKING:
    from agents.resources.llm import LLMCall

__all__ = [
    "CONTENT_MAX_CHARS",
    "ActionSpan",
    "RunTrace",
    "Span",
    "action",
    "begin_run",
    "current_ids",
    "end_run",
    "flush",
    "in_step",
    "model_call",
    "render_tree",
    "step_ended",
    "step_started",
    "tool_call",
]

logger = logging.getLogger(__name__)

CONTENT_MAX_CHARS = 8_000
"""A recorded prompt, output, tool argument or result keeps at most this many characters."""

OP_RUN = "gen_ai.invoke_agent"
OP_STEP = "stalwart.step"
OP_CHAT = "gen_ai.chat"
OP_TOOL = "gen_ai.execute_tool"

#: The `gen_ai.provider.name` (and deprecated `gen_ai.system`) of every model call: Stalwart
#: speaks the OpenAI chat-completions protocol to whichever endpoint is configured.
PROVIDER = "openai"

SpanStatus = Literal["ok", "error", "cancelled"]


@dataclass(kw_only=True, eq=False)
class Span:
    """One span of a run's tree: what the sinks translate (times are epoch seconds)."""

    span_id: str
    parent_id: str | None
    op: str
    name: str
    start: float
    end: float | None = None
    status: SpanStatus = "ok"
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(kw_only=True, eq=False)
class RunTrace:
    """The spans of one traced run and the sinks that sampled it."""

    trace_id: str
    root: Span
    to_sentry: bool
    to_otel: bool
    content: bool
    spans: list[Span] = field(default_factory=list)
    steps: dict[str, Span] = field(default_factory=dict)

    def add(self, op: str, name: str, parent: Span, start: float, **attributes: Any) -> Span:
        span = Span(
            span_id=_span_id(),
            parent_id=parent.span_id,
            op=op,
            name=name,
            start=start,
            attributes={k: v for k, v in attributes.items() if v is not None},
        )
        self.spans.append(span)  # list.append is atomic: hooks in worker threads may add
        return span

    def all_spans(self) -> list[Span]:
        """The root first, then every other span in the order it started recording."""
        return [self.root, *self.spans]


def _span_id() -> str:
    return secrets.token_hex(8)


# -- sampling -------------------------------------------------------------------------------------


def _sentry_rate() -> float:
    from agents.observe.sentry import traces_sample_rate

    return traces_sample_rate()


_otel_missing_reported = False


def _otel_samples(trace_id: str) -> bool:
    """The OpenTelemetry sampler's decision; False (said once) when the SDK is not installed."""
    global _otel_missing_reported
    try:
        from agents.observe.otel import samples
    except ImportError:
        if not _otel_missing_reported:
            _otel_missing_reported = True
            logger.error(
                "STALWART_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: "
                "no spans are exported (pip install 'stalwart[otel]')"
            )
        return False
    return samples(trace_id)


def begin_run(
    *,
    agent: str,
    tenant: str,
    subject: str | None,
    run_key: str,
    run_id: str,
    flow_run_id: str | None,
) -> RunTrace | None:
    """Decide whether this run is traced and, if so, open its root span; else None.

    The decision is made here, once per run, for every span of the run: a traced run is whole.
    Sentry samples at its traces rate; OpenTelemetry at its configured sampler, on the run's
    trace id. None when neither sink takes the run (always when neither is configured).
    """
    settings = get_current_settings()
    rate = _sentry_rate()
    if rate <= 0 and not settings.otlp_endpoint:
        return None
    trace_id = secrets.token_hex(16)
    to_sentry = rate > 0 and (rate >= 1 or random.random() < rate)
    to_otel = bool(settings.otlp_endpoint) and _otel_samples(trace_id)
    if not (to_sentry or to_otel):
        return None
    root = Span(
        span_id=_span_id(),
        parent_id=None,
        op=OP_RUN,
        name=f"invoke_agent {agent}",
        start=time.time(),
        attributes={
            k: v
            for k, v in {
                "gen_ai.operation.name": "invoke_agent",
                "gen_ai.agent.name": agent,
                "stalwart.tenant": tenant,
                "stalwart.subject": subject,
                "stalwart.run_key": run_key,
                "stalwart.run_id": run_id,
                "stalwart.flow_run_id": flow_run_id,
            }.items()
            if v is not None
        },
    )
    return RunTrace(
        trace_id=trace_id,
        root=root,
        to_sentry=to_sentry,
        to_otel=to_otel,
        content=settings.trace_content,
    )


def end_run(trace: RunTrace | None, *, status: str, error: str | None = None) -> None:
    """Close the run's span with its status and have the tree sent to the sinks that sampled
    it, from a background thread (`flush` waits for what is queued).

    Never raises: a sink that fails logs a warning and the run goes on.
    """
    if trace is None:
        return
    now = time.time()
    root = trace.root
    root.end = now
    root.attributes["stalwart.status"] = status
    root.status = "error" if status == "failed" else "ok"
    if error:
        root.attributes["stalwart.error"] = scrub_text(error)[:500]
    for span in trace.spans:  # a span left open by a cancelled step ends with its run
        if span.end is None:
            span.end = now
            span.status = "cancelled"
    # Scrubbing and building each sink's payload take a few milliseconds: off the run's path,
    # in one background thread (`flush` waits for it).
    global _sender
    with _sender_lock:
        if _sender is None:
            _sender = ThreadPoolExecutor(max_workers=1, thread_name_prefix="stalwart-trace")
        sender = _sender
    sender.submit(_send, trace)


_sender_lock = threading.Lock()
_sender: ThreadPoolExecutor | None = None


def _send(trace: RunTrace) -> None:
    for span in trace.all_spans():
        # Scrubbed once here, for every sink: secrets, e-mail addresses, secret-named keys.
        span.attributes = scrub_value(span.attributes)
    if trace.to_sentry:
        try:
            from agents.observe.sentry import send_trace

            send_trace(trace)
        except Exception as exc:
            logger.warning("Could not send a run's trace to Sentry (%s)", type(exc).__name__)
    if trace.to_otel:
        try:
            from agents.observe.otel import export_trace

            export_trace(trace)
        except Exception as exc:
            logger.warning("Could not export a run's trace over OTLP (%s)", type(exc).__name__)


def flush(timeout: float = 5.0) -> None:
    """Send the traces of the runs that ended so far: to Sentry and over OTLP, waiting up to
    about `timeout` seconds for each step. Runs that end later are not waited for.

    Example:
        >>> flush(0.1)
    """
    sender = _sender
    if sender is not None:
        with contextlib.suppress(Exception):
            sender.submit(lambda: None).result(timeout)
    from agents.observe.sentry import flush as flush_sentry

    flush_sentry(timeout)
    if "agents.observe.otel" in sys.modules:
        from agents.observe.otel import flush as flush_otel

        flush_otel(int(timeout * 1000))


# -- steps ----------------------------------------------------------------------------------------


def step_started(trace: RunTrace | None, step: str, layer: str) -> None:
    """Open the span of `step` (before its task run, so its model and tool calls nest in it)."""
    if trace is None or step in trace.steps:
        return
    trace.steps[step] = trace.add(
        OP_STEP,
        f"step {step}",
        trace.root,
        time.time(),
        **{"stalwart.step": step, "stalwart.layer": layer},
    )


def step_ended(
    trace: RunTrace | None,
    step: str,
    layer: str,
    *,
    outcome: str,
    attempts: int = 0,
    cached: bool = False,
    task_run_id: str | None = None,
    error: str | None = None,
) -> None:
    """Close the span of `step` with its outcome (a skipped step's span is opened and closed
    here: a traced run shows every step)."""
    if trace is None:
        return
    step_started(trace, step, layer)
    span = trace.steps[step]
    span.end = time.time()
    span.status = "error" if outcome == "failed" else "ok"
    span.attributes.update(
        {
            "stalwart.outcome": outcome,
            "stalwart.attempts": attempts,
            "stalwart.cached": cached,
        }
    )
    if task_run_id:
        span.attributes["stalwart.task_run_id"] = task_run_id
    if error:
        span.attributes["stalwart.error"] = scrub_text(error)[:500]


# -- the step a hook is in ------------------------------------------------------------------------


@dataclass(frozen=True)
class _Active:
    trace: RunTrace
    step: Span
    rung: str


_active: contextvars.ContextVar[_Active | None] = contextvars.ContextVar(
    "stalwart_trace_step", default=None
)


@contextlib.contextmanager
def in_step(trace: RunTrace | None, step: str, *, rung: str = "model") -> Iterator[None]:
    """Inside a step's task run: model, tool and action hooks record under the step's span.

    `rung` is the ladder rung the step's model calls serve (`model`, or `fallback_model` for the
    fallback model's attempt). Does nothing for an untraced run.
    """
    if trace is None or step not in trace.steps:
        yield
        return
    token = _active.set(_Active(trace, trace.steps[step], rung))
    try:
        yield
    finally:
        _active.reset(token)


def current_ids(trace: RunTrace | None, step: str | None = None) -> tuple[str, str] | None:
    """(trace id, span id) of `step` (else the run) in a traced run, for linking an error."""
    if trace is None:
        return None
    span = trace.steps.get(step, trace.root) if step else trace.root
    return trace.trace_id, span.span_id


def _content(active: _Active, value: Any) -> str | None:
    if not active.trace.content or value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(scrub_value(value), default=str)
    return scrub_text(text)[:CONTENT_MAX_CHARS]


# -- model calls, tool calls, actions -------------------------------------------------------------


def model_call(call: LLMCall, messages: Sequence[Mapping[str, Any]] | None = None) -> None:
    """Record the `gen_ai.chat` span of one finished model call (the hook of `LLM`)."""
    active = _active.get()
    if active is None:
        return
    from agents.pricing import cost_of

    end = time.time()
    active.trace.add(
        OP_CHAT,
        f"chat {call.model}",
        active.step,
        end - call.latency_ms / 1000,
        **{
            "gen_ai.operation.name": "chat",
            "gen_ai.system": PROVIDER,
            "gen_ai.provider.name": PROVIDER,
            "gen_ai.request.model": call.model,
            "gen_ai.response.model": call.model,
            "gen_ai.agent.name": active.trace.root.attributes.get("gen_ai.agent.name"),
            "gen_ai.usage.input_tokens": call.tokens_in,
            "gen_ai.usage.output_tokens": call.tokens_out,
            "gen_ai.usage.total_tokens": call.tokens_in + call.tokens_out,
            "gen_ai.input.messages": _content(active, list(messages or [])),
            "gen_ai.output.messages": _content(active, call.raw_output),
            "stalwart.endpoint": call.endpoint,
            "stalwart.output_type": call.output_type,
            "stalwart.cost_usd": cost_of(call.model, call.tokens_in, call.tokens_out),
            "stalwart.latency_ms": round(call.latency_ms, 3),
            "stalwart.attempts": call.attempts,
            "stalwart.cached": call.cached,
            "stalwart.rung": active.rung,
            "stalwart.path_model": call.path_model,
            "stalwart.error_class": call.error_class,
        },
    ).end = end


def tool_call(
    tool: str,
    *,
    status: str,
    latency_ms: float,
    turn: int,
    arguments: Any = None,
    result: Any = None,
) -> None:
    """Record the `gen_ai.execute_tool` span of one finished tool call of a tool loop."""
    active = _active.get()
    if active is None:
        return
    end = time.time()
    span = active.trace.add(
        OP_TOOL,
        f"execute_tool {tool}",
        active.step,
        end - latency_ms / 1000,
        **{
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": tool,
            "gen_ai.tool.type": "function",
            "gen_ai.agent.name": active.trace.root.attributes.get("gen_ai.agent.name"),
            "gen_ai.tool.call.arguments": _content(active, arguments),
            "gen_ai.tool.call.result": _content(active, result),
            "stalwart.tool_status": status,
            "stalwart.turn": turn,
            "stalwart.latency_ms": round(latency_ms, 3),
        },
    )
    span.end = end
    span.status = "ok" if status == "ok" else "error"


class ActionSpan:
    """The span of one action while it runs: `done(status)` says how it ended."""

    def __init__(self, span: Span | None) -> None:
        self.span = span

    def done(self, status: str) -> None:
        """`completed`, `replayed` (done before), `conflict` (a twin holds it) or `failed`."""
        if self.span is None:
            return
        self.span.attributes["stalwart.action_status"] = status
        statuses: dict[str, SpanStatus] = {"failed": "error", "conflict": "cancelled"}
        self.span.status = statuses.get(status, "ok")


@contextlib.contextmanager
def action(name: str, idempotency_key: str) -> Iterator[ActionSpan]:
    """The `gen_ai.execute_tool` span of an action step (claim, run, store its result)."""
    active = _active.get()
    if active is None:
        yield ActionSpan(None)
        return
    span = active.trace.add(
        OP_TOOL,
        f"execute_tool {name}",
        active.step,
        time.time(),
        **{
            "gen_ai.operation.name": "execute_tool",
            "gen_ai.tool.name": name,
            "gen_ai.tool.type": "action",
            "gen_ai.agent.name": active.trace.root.attributes.get("gen_ai.agent.name"),
            "stalwart.idempotency_key_digest": idempotency_key,
        },
    )
    handle = ActionSpan(span)
    try:
        yield handle
    except BaseException:
        handle.done("failed")
        raise
    finally:
        span.end = time.time()


# -- text -----------------------------------------------------------------------------------------

_SHOWN = (
    "stalwart.layer",
    "stalwart.outcome",
    "stalwart.status",
    "stalwart.rung",
    "stalwart.cached",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "stalwart.cost_usd",
    "stalwart.tool_status",
    "stalwart.action_status",
)


def render_tree(trace: RunTrace) -> str:
    """The run's span tree as indented text: op, name, duration and the telling attributes.

    Example:
        >>> root = Span(span_id="a", parent_id=None, op=OP_RUN, name="invoke_agent x",
        ...             start=0.0, end=0.5, attributes={"stalwart.status": "completed"})
        >>> print(render_tree(RunTrace(trace_id="t", root=root, to_sentry=False,
        ...                            to_otel=False, content=False)))
        invoke_agent x  (gen_ai.invoke_agent, 500.0 ms) stalwart.status=completed
    """
    children: dict[str | None, list[Span]] = {}
    for span in trace.spans:
        children.setdefault(span.parent_id, []).append(span)
    lines: list[str] = []

    def walk(span: Span, depth: int) -> None:
        ms = ((span.end or span.start) - span.start) * 1000
        shown = " ".join(f"{k}={span.attributes[k]}" for k in _SHOWN if k in span.attributes)
        lines.append(f"{'  ' * depth}{span.name}  ({span.op}, {ms:.1f} ms) {shown}".rstrip())
        for child in sorted(children.get(span.span_id, []), key=lambda s: s.start):
            walk(child, depth + 1)

    walk(trace.root, 0)
    return "\n".join(lines)
