"""Sentry: failure reporting for Stalwart runs, secrets and PII scrubbed before anything is sent.

This module owns everything Stalwart sends to Sentry:

* `init_sentry` configures `sentry_sdk` once per process from the DSN in settings (`SENTRY_DSN`)
  or the `STALWART_SENTRY_BLOCK` block; without a DSN nothing is reported.
* `scrub_event` is Sentry's `before_send`: it passes the whole event through
  `agents.redact.scrub_value` (secrets and e-mail addresses; the installed DSN counts as a
  secret too).
* `capture_failure` reports one failure exactly once, tagged with agent, step, layer, tenant,
  flow run id and attempt.
* `task_failure_hook` / `flow_failure_hook` build Prefect `on_failure` hooks calling
  `capture_failure`; Prefect runs `on_failure` hooks only once the last retry failed.
* `send_trace` sends a traced run (`agents.observe.tracing`) as one transaction in the shape of
  Sentry's AI Agents insights; `traces_sample_rate` is the share of runs traced
  (`STALWART_SENTRY_TRACES_SAMPLE_RATE` or the block's), 0 while Sentry is off.

Example:
    >>> scrub_event({"extra": {"password": "hunter2", "to": "bob@example.com"}}, {})
    {'extra': {'password': '***', 'to': '[email]'}}
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast

import sentry_sdk
from sentry_sdk.consts import ClientConstructor
from sentry_sdk.integrations.logging import LoggingIntegration

from agents.errors import ConfigurationError
from agents.redact import add_secret_source, scrub_value
from agents.settings import get_current_settings

if TYPE_CHECKING:
    from prefect import Flow, Task
    from prefect.client.schemas.objects import FlowRun, State, TaskRun
    from prefect.flows import FlowStateHook
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

    from agents.observe.tracing import RunTrace

__all__ = [
    "capture_failure",
    "exception_from_state",
    "flow_failure_hook",
    "flush",
    "init_sentry",
    "scrub_event",
    "send_trace",
    "shutdown_sentry",
    "task_failure_hook",
    "traces_sample_rate",
]

logger = logging.getLogger(__name__)

SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""How long the SDK waits, at exit or re-initialisation, for queued events to be sent."""

_MARK = "_stalwart_sentry_event_id"
"""Attribute set on an exception once reported ("" while in flight or when the SDK dropped it)."""

_active_config: tuple[str, str, float, float] | None = None
"""(dsn, environment, sample rate, traces sample rate) of the client `init_sentry` installed."""


# -- scrubbing ------------------------------------------------------------------------------------


def _active_dsn() -> tuple[str, ...]:
    """The DSN of the client `init_sentry` installed: scrubbed like the configured secrets."""
    active = _active_config
    return (active[0],) if active is not None else ()


add_secret_source(_active_dsn)


def scrub_event(event: Event, hint: Hint) -> Event:
    """Redact secrets and PII everywhere in a Sentry event (Sentry's `before_send` contract).

    The whole event is walked: exception values, messages, `extra`, contexts, tags, request,
    breadcrumbs and stack-frame `vars` (`agents.redact.scrub_value`). Strings go through
    `scrub_text`; values under secret-looking keys (`password`, `token`, `api_key`,
    `authorization`, `dsn`, ...) are replaced whole.

    Args:
        event: The event, already serialised by the SDK into JSON-compatible data.
        hint: Sentry's hint (unused; part of the callback signature).

    Returns:
        A scrubbed copy of the event.

    Example:
        >>> scrub_event({"extra": {"api_key": "abc123", "note": "x@y.io"}}, {})
        {'extra': {'api_key': '***', 'note': '[email]'}}
    """
    return cast("Event", scrub_value(event))


def _before_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb:
    return cast("Breadcrumb", scrub_value(crumb))


_own_capture: contextvars.ContextVar[BaseException | None] = contextvars.ContextVar(
    "stalwart_sentry_own_capture", default=None
)


def _before_send(event: Event, hint: Hint) -> Event | None:
    """Drop a second report of an exception `capture_failure` already sent, then scrub."""
    exc_info = hint.get("exc_info") if hint else None
    exc = exc_info[1] if isinstance(exc_info, tuple) and len(exc_info) > 1 else None
    if (
        isinstance(exc, BaseException)
        and getattr(exc, _MARK, None) is not None
        and _own_capture.get() is not exc
    ):
        return None
    return scrub_event(event, hint)


# -- initialisation -------------------------------------------------------------------------------

_init_lock = threading.RLock()


@functools.cache
def _sdk_options() -> frozenset[str]:
    """The option names the installed `sentry_sdk.init` accepts."""
    return frozenset(inspect.signature(ClientConstructor.__init__).parameters)


def _disabled_integrations() -> list[Any]:
    found: list[Any] = []
    for module, name in (
        ("sentry_sdk.integrations.openai", "OpenAIIntegration"),
        ("sentry_sdk.integrations.anthropic", "AnthropicIntegration"),
        ("sentry_sdk.integrations.langchain", "LangchainIntegration"),
    ):
        try:
            found.append(getattr(importlib.import_module(module), name)())
        except Exception:  # not in this sentry-sdk, or its library is missing
            continue
    return found


def _version_dependent_options() -> dict[str, Any]:
    options: dict[str, Any] = {}
    supported = _sdk_options()
    # No PII. SDKs with `data_collection` deprecate `send_default_pii` (warning when it is set)
    # and already default to no PII with the event scrubber on; older ones need it explicitly.
    if "data_collection" not in supported:
        options["send_default_pii"] = False
    if "auto_session_tracking" in supported:
        options["auto_session_tracking"] = False
    return options


def _close_client(timeout: float) -> None:
    client = sentry_sdk.get_client()
    if client.is_active():
        client.close(timeout=timeout)


def init_sentry(
    dsn: str | None = None,
    *,
    environment: str | None = None,
    force: bool = False,
) -> bool:
    """Initialise `sentry_sdk` once per process; without a DSN, report nothing.

    The DSN is the argument, else the `STALWART_SENTRY_BLOCK` block's (an
    `agents.blocks.SentryConfig`, which also gives the environment and sample rates), else
    `SENTRY_DSN` from settings. Calling again with the same configuration does nothing; a
    different one (or `force=True`) closes the current client (sending what it queued) and
    installs a new one. The DSN is never logged.

    Args:
        dsn: The Sentry DSN; `None` reads the Sentry block, else `settings.sentry_dsn`.
        environment: The Sentry environment; `None` reads the block's, else
            `settings.sentry_environment`.
        force: Re-initialise even when the same DSN is already in force.

    Returns:
        True when Sentry is on, False when no DSN is configured (then nothing changes).

    Raises:
        ConfigurationError: When the DSN is malformed, or the Sentry block cannot be loaded.

    Example:
        >>> init_sentry(None)  # no SENTRY_DSN in the environment
        False
    """
    global _active_config
    settings = get_current_settings()
    source = "SENTRY_DSN"
    default_environment = settings.sentry_environment
    sample_rate, traces_sample_rate = 1.0, settings.sentry_traces_sample_rate
    if dsn is None and settings.sentry_block:
        from agents.blocks import sentry_block  # Prefect's block machinery: only when named

        block = sentry_block()
        assert block is not None
        options = block.options()
        dsn, default_environment = options.dsn, options.environment
        sample_rate, traces_sample_rate = options.sample_rate, options.traces_sample_rate
        source = f"The Sentry block {settings.sentry_block!r} (STALWART_SENTRY_BLOCK)"
    elif dsn is None and settings.sentry_dsn is not None:
        dsn = settings.sentry_dsn.get_secret_value()
    if not dsn:
        return False
    config = (dsn, environment or default_environment, sample_rate, traces_sample_rate)
    with _init_lock:
        if not force and _active_config == config and sentry_sdk.get_client().is_active():
            return True
        _close_client(SHUTDOWN_TIMEOUT_SECONDS)
        _active_config = None
        try:
            sentry_sdk.init(
                dsn=config[0],
                environment=config[1],
                before_send=_before_send,
                before_breadcrumb=_before_breadcrumb,
                sample_rate=config[2],
                # Stalwart samples whole runs itself (`agents.observe.tracing`) and sends them
                # with the decision made; any other transaction (an in-process web server's) is
                # dropped, so tracing a run never traces anything else.
                traces_sampler=_only_runs if config[3] > 0 else None,
                before_send_transaction=_before_send_transaction,
                default_integrations=True,
                # One failure, one event: log records become breadcrumbs, never events.
                integrations=[LoggingIntegration(event_level=None)],
                # The OpenAI integration reports every provider error on its own (and would send
                # prompts): Stalwart reports each failed step once, after its last retry.
                disabled_integrations=_disabled_integrations(),
                shutdown_timeout=SHUTDOWN_TIMEOUT_SECONDS,
                **_version_dependent_options(),
            )
        except Exception as exc:  # sentry_sdk.utils.BadDsn and friends
            raise ConfigurationError(
                f"{source} is not a valid Sentry DSN ({type(exc).__name__}); "
                "fix or unset it. (The DSN is not shown because it is a secret.)"
            ) from None
        _active_config = config
    logger.debug("Sentry reporting on (environment %r)", config[1])
    return True


def traces_sample_rate() -> float:
    """The share of agent runs traced to Sentry: 0 while Sentry is off or tracing is off.

    Example:
        >>> traces_sample_rate()  # Sentry not initialised
        0.0
    """
    active = _active_config
    return active[3] if active is not None else 0.0


def _only_runs(sampling_context: Mapping[str, Any]) -> float:
    """Sentry's `traces_sampler`: 0 for every transaction Stalwart did not sample itself (its
    own are sent with `sampled=True`, which the SDK takes without asking)."""
    return 0.0


def _before_send_transaction(event: Event, hint: Hint) -> Event:
    return scrub_event(event, hint)


def shutdown_sentry(timeout: float = SHUTDOWN_TIMEOUT_SECONDS) -> None:
    """Send what is queued, then turn Sentry reporting off until `init_sentry` is called again.

    Example:
        >>> shutdown_sentry()
    """
    global _active_config
    with _init_lock:
        _close_client(timeout)
        _active_config = None


def flush(timeout: float = 2.0) -> None:
    """Wait up to `timeout` seconds for queued events to be sent (no-op when Sentry is off).

    `capture_failure` does not flush: call this at the end of a run or before a process exits.

    Example:
        >>> flush(0.1)
    """
    client = sentry_sdk.get_client()
    if client.is_active():
        client.flush(timeout=timeout)


# -- capture --------------------------------------------------------------------------------------

_capture_lock = threading.Lock()


def capture_failure(
    exc: BaseException,
    *,
    agent: str,
    step: str | None = None,
    layer: str | None = None,
    tenant: str | None = None,
    flow_run_id: str | None = None,
    attempt: int | None = None,
    extra: Mapping[str, Any] | None = None,
    trace: tuple[str, str] | None = None,
) -> str | None:
    """Report a failure to Sentry exactly once, tagged with where and for whom it happened.

    The exception object is marked when reported: reporting it again (a task hook, then the flow
    hook it propagated to, then `sys.excepthook`) sends nothing more. The event is captured in an
    isolated scope with tags `agent`, `step`, `layer`, `tenant`, `flow_run_id`, `attempt` (tags
    whose value is None are left out) and `extra` as Sentry extras. Never raises; does not flush.

    Args:
        exc: The exception that ended the step or run.
        agent: The agent's name.
        step: The step's name (None for a whole-flow failure).
        layer: The step's layer (None for a whole-flow failure).
        tenant: The tenant the run was for.
        flow_run_id: The Prefect flow run id.
        attempt: The attempt number (1 for the first run).
        extra: Additional context (scrubbed like the rest of the event).
        trace: (trace id, span id) of the traced run and step it happened in
            (`agents.observe.tracing.current_ids`): the event then links to that trace.

    Returns:
        The Sentry event id; the first event id when the exception was already reported; None
        when Sentry is off or the SDK dropped the event.

    Example:
        >>> capture_failure(ValueError("boom"), agent="triage", step="classify")  # Sentry off
    """
    try:
        if not sentry_sdk.get_client().is_active():
            return None
        with _capture_lock:
            previous = getattr(exc, _MARK, None)
            if previous is not None:
                return str(previous) or None
            _set_mark(exc, "")
        tags: dict[str, str | None] = {
            "agent": agent,
            "step": step,
            "layer": layer,
            "tenant": tenant,
            "flow_run_id": flow_run_id,
            "attempt": None if attempt is None else str(attempt),
        }
        token = _own_capture.set(exc)
        try:
            with sentry_sdk.isolation_scope() as scope:
                for name, value in tags.items():
                    if value is not None:
                        scope.set_tag(name, value)
                for name, value in (extra or {}).items():
                    scope.set_extra(str(name), value)
                if trace is not None:
                    scope.set_context("trace", {"trace_id": trace[0], "span_id": trace[1]})
                event_id = scope.capture_exception(exc)
        finally:
            _own_capture.reset(token)
        _set_mark(exc, event_id or "")
        return event_id
    except Exception as error:
        logger.warning("Could not report a failure to Sentry (%s)", type(error).__name__)
        return None


def _set_mark(exc: BaseException, value: str) -> None:
    # An exception type with __slots__ cannot be marked (nor de-duplicated).
    with contextlib.suppress(AttributeError, TypeError):
        setattr(exc, _MARK, value)


# -- Prefect hooks --------------------------------------------------------------------------------


def exception_from_state(state: State[Any]) -> BaseException:
    """The exception a failed (or crashed) Prefect state holds, read synchronously.

    Works inside hooks of sync and async tasks alike: Prefect's `state.result()` and
    `get_state_exception()` return a coroutine when called from an async task's context, so the
    synchronous implementation is forced with `_sync=True`.

    Args:
        state: A failed or crashed state.

    Returns:
        The original exception, or a `RuntimeError` carrying the state's message when the state
        holds none.

    Example:
        >>> from prefect.states import Failed
        >>> exception_from_state(Failed(data=ValueError("boom")))
        ValueError('boom')
    """
    from prefect.states import get_state_exception

    try:
        exc = cast(Any, get_state_exception)(state, _sync=True)
        if isinstance(exc, BaseException):
            return cast(BaseException, exc)
    except Exception:
        pass
    try:
        result = cast(Any, state).result(raise_on_failure=False, _sync=True)
        if isinstance(result, BaseException):
            return result
    except Exception as exc:
        return exc
    return RuntimeError(f"Prefect state {state.name!r}: {state.message or 'no message'}")


def _tag_value(tags: Iterable[str] | None, name: str) -> str | None:
    prefix = f"{name}:"
    for tag in tags or ():
        if tag.startswith(prefix) and len(tag) > len(prefix):
            return tag[len(prefix) :]
    return None


def task_failure_hook(
    agent: str, step: str, layer: str
) -> Callable[[Task[..., Any], TaskRun, State[Any]], None]:
    """Build a Prefect task `on_failure` hook reporting the failure with `capture_failure`.

    Prefect 3 runs `on_failure` hooks once, after the last retry failed. The hook is synchronous
    and works for sync and async tasks (Prefect calls hooks synchronously from both engines). It
    reads the tenant from the task run's `tenant:<name>` tag, the flow run id from
    `task_run.flow_run_id` and the attempt from `task_run.run_count`. It never raises.

    Args:
        agent: The agent's name.
        step: The step's name.
        layer: The step's layer.

    Returns:
        The hook, for `@task(on_failure=[...])`.

    Example:
        >>> from prefect import task
        >>> @task(retries=2, on_failure=[task_failure_hook("triage", "classify", "action")])
        ... def classify(ticket: str) -> str: ...
    """

    def hook(task: Task[..., Any], task_run: TaskRun, state: State[Any]) -> None:
        try:
            exc = exception_from_state(state)
            capture_failure(
                exc,
                agent=agent,
                step=step,
                layer=layer,
                tenant=_tag_value(task_run.tags, "tenant"),
                flow_run_id=str(task_run.flow_run_id) if task_run.flow_run_id else None,
                attempt=task_run.run_count,
                extra={
                    "task_run_id": str(task_run.id),
                    "task_run_name": task_run.name,
                    "state": state.name,
                },
            )
        except Exception as error:
            logger.warning("Sentry task failure hook failed (%s)", type(error).__name__)

    hook.__name__ = hook.__qualname__ = f"sentry_task_failure_hook[{agent}.{step}]"
    return hook


def flow_failure_hook(agent: str) -> FlowStateHook[..., Any]:
    """Build a Prefect flow `on_failure` hook reporting the failure with `capture_failure`.

    When the failure is an exception a `task_failure_hook` already reported, nothing more is
    sent. The tenant comes from the flow run's `tenant:<name>` tag, the attempt from
    `flow_run.run_count`. It never raises.

    Args:
        agent: The agent's name.

    Returns:
        The hook, for `@flow(on_failure=[...])`.

    Example:
        >>> from prefect import flow
        >>> @flow(on_failure=[flow_failure_hook("triage")])
        ... def triage(ticket: str) -> None: ...
    """

    def hook(flow: Flow[..., Any], flow_run: FlowRun, state: State[Any]) -> None:
        try:
            exc = exception_from_state(state)
            capture_failure(
                exc,
                agent=agent,
                step=None,
                layer=None,
                tenant=_tag_value(flow_run.tags, "tenant"),
                flow_run_id=str(flow_run.id),
                attempt=flow_run.run_count,
                extra={
                    "flow_name": getattr(flow, "name", None),
                    "flow_run_name": flow_run.name,
                    "state": state.name,
                },
            )
        except Exception as error:
            logger.warning("Sentry flow failure hook failed (%s)", type(error).__name__)

    hook.__name__ = hook.__qualname__ = f"sentry_flow_failure_hook[{agent}]"
    return hook


# -- traces ---------------------------------------------------------------------------------------

_SENTRY_STATUS = {"ok": "ok", "error": "internal_error", "cancelled": "cancelled"}

#: Run attributes that also become transaction tags (searchable in Sentry).
_TAGGED = {
    "stalwart.tenant": "tenant",
    "stalwart.subject": "subject",
    "stalwart.status": "status",
    "gen_ai.agent.name": "agent",
}


def send_trace(trace: RunTrace) -> None:
    """Send a finished run's span tree as one Sentry transaction (op `gen_ai.invoke_agent`).

    The trace and span ids, times and attributes are the run's own, so an error event linked
    with `capture_failure(trace=...)` lands in this trace. The transaction carries the sampling
    decision made for the run (`sampled=True`); `before_send_transaction` scrubs it.

    Args:
        trace: A run ended by `agents.observe.tracing.end_run`.
    """
    from sentry_sdk.tracing import Span as SentrySpan
    from sentry_sdk.tracing import Transaction

    client = sentry_sdk.get_client()
    if not client.is_active():
        return
    root = trace.root
    transaction = Transaction(
        trace_id=trace.trace_id,
        span_id=root.span_id,
        op=root.op,
        name=root.name,
        source="custom",
        sampled=True,
        start_timestamp=root.start,
        status=_SENTRY_STATUS[root.status],
    )
    with sentry_sdk.isolation_scope() as scope:
        for key, tag in _TAGGED.items():
            value = root.attributes.get(key)
            if value is not None:
                scope.set_tag(tag, value)
        transaction = cast(Transaction, scope.start_transaction(transaction))
        for name, value in root.attributes.items():
            transaction.set_data(name, value)
        made: dict[str, SentrySpan] = {root.span_id: transaction}
        for span in sorted(trace.spans, key=lambda s: s.start):
            parent = made.get(span.parent_id or "", transaction)
            child = parent.start_child(
                op=span.op,
                name=span.name,
                span_id=span.span_id,
                start_timestamp=span.start,
            )
            child.set_status(_SENTRY_STATUS[span.status])
            for name, value in span.attributes.items():
                child.set_data(name, value)
            made[span.span_id] = child
        for span in trace.spans:
            made[span.span_id].finish(end_timestamp=span.end or span.start)
        transaction.finish(scope=scope, end_timestamp=root.end or root.start)
