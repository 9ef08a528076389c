"""Sentry: failure reporting for Stalwart runs, secrets and PII scrubbed before anything is sent.

This module owns everything Stalwart sends to Sentry:

* `init_sentry` configures `sentry_sdk` once per process from the DSN in settings (`SENTRY_DSN`);
  without a DSN nothing is reported.
* `scrub_event` / `scrub_text` redact secrets (API keys, bearer tokens, URL credentials,
  `password=...` pairs, values under secret-looking keys, the secrets configured in settings) and
  e-mail addresses. The rest of the project reuses `scrub_text` for log lines and artifacts.
* `capture_failure` reports one failure exactly once, tagged with agent, step, layer, tenant,
  flow run id and attempt.
* `task_failure_hook` / `flow_failure_hook` build Prefect `on_failure` hooks calling
  `capture_failure`; Prefect runs `on_failure` hooks only once the last retry failed.

Example:
    >>> from agents.observe.sentry import scrub_text
    >>> scrub_text("password=hunter2 mail bob@example.com")
    'password=*** mail [email]'
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import importlib
import inspect
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

import sentry_sdk
from sentry_sdk.consts import ClientConstructor
from sentry_sdk.integrations.logging import LoggingIntegration

from agents.errors import ConfigurationError
from agents.settings import get_current_settings

if TYPE_CHECKING:
    from prefect import Flow, Task
    from prefect.client.schemas.objects import FlowRun, State, TaskRun
    from prefect.flows import FlowStateHook
    from sentry_sdk.types import Breadcrumb, BreadcrumbHint, Event, Hint

__all__ = [
    "EMAIL_PLACEHOLDER",
    "REDACTED",
    "capture_failure",
    "exception_from_state",
    "flow_failure_hook",
    "flush",
    "init_sentry",
    "is_sensitive_key",
    "scrub_event",
    "scrub_text",
    "shutdown_sentry",
    "task_failure_hook",
]

logger = logging.getLogger(__name__)

REDACTED = "***"
"""What a redacted secret is replaced by."""

EMAIL_PLACEHOLDER = "[email]"
"""What an e-mail address is replaced by."""

SHUTDOWN_TIMEOUT_SECONDS = 2.0
"""How long the SDK waits, at exit or re-initialisation, for queued events to be sent."""

_MIN_LITERAL_SECRET_LENGTH = 4
"""Configured secrets shorter than this are not searched for (they would redact ordinary text)."""

_MARK = "_stalwart_sentry_event_id"
"""Attribute set on an exception once reported ("" while in flight or when the SDK dropped it)."""

_active_config: tuple[str, str, float, float] | None = None
"""(dsn, environment, sample rate, traces sample rate) of the client `init_sentry` installed."""

# -- scrubbing ------------------------------------------------------------------------------------

_SENSITIVE_KEY = re.compile(
    r"passw(?:or)?d|pwd|secret|token|api[_-]?key|apikey|access[_-]?key|private[_-]?key"
    r"|authorization|credential|dsn|cookie",
    re.IGNORECASE,
)
# Token *counts* (model usage) are not secrets: `max_tokens`, `prompt_tokens`, `tokens_used`...
_TOKEN_COUNT_KEY = re.compile(
    r"(?:max|prompt|completion|total|input|output|reasoning|cached|num)[_-]?tokens"
    r"|tokens(?:[_-](?:used|count|total|in|out))?",
    re.IGNORECASE,
)
# Every pattern starts at the beginning of a run of its characters (a negative lookbehind), so
# scrubbing stays linear on long inputs such as `a.a.a.a...` (no scan from every position).
_URL_USERINFO = re.compile(
    r"(?<![A-Za-z0-9+.\-])(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^\s/?#@'\"<>]*@"
)
_BEARER = re.compile(r"\b(?P<scheme>bearer)\s+[A-Za-z0-9._~+/=\-]+", re.IGNORECASE)
_OPENAI_KEY = re.compile(r"(?<![\w\-])sk-[A-Za-z0-9_\-]{16,}")
_JWT = re.compile(r"(?<![\w\-])eyJ[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]{4,}\.[A-Za-z0-9_\-]+")
_KEY_VALUE = re.compile(
    r"(?<![\w.\-])(?P<key>[\w.\-]+)"
    r"(?P<sep>[\"']?[ \t]*[=:][ \t]*)"
    r"(?P<scheme>(?:bearer|basic|digest|token)[ \t]+)?"
    r"(?P<value>\"[^\"]*\"|'[^']*'|[^\s,;&=\'\"}\])]+)",
    re.IGNORECASE,
)
_EMAIL = re.compile(
    r"(?<![A-Za-z0-9._%+\-])[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}\b"
)


def is_sensitive_key(key: str) -> bool:
    """Whether a mapping key names a secret (password, token, api_key, authorization, dsn, ...).

    Token counts such as `max_tokens` or `prompt_tokens` are not secrets.

    Example:
        >>> is_sensitive_key("X-Api-Key"), is_sensitive_key("max_tokens"), is_sensitive_key("name")
        (True, False, False)
    """
    if _TOKEN_COUNT_KEY.fullmatch(key):
        return False
    return _SENSITIVE_KEY.search(key) is not None


def _redact_key_value(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group("key")):
        return match.group(0)
    scheme = match.group("scheme") or ""
    return f"{match.group('key')}{match.group('sep')}{scheme}{REDACTED}"


@functools.lru_cache(maxsize=32)
def _literal_secrets(candidates: tuple[str, ...]) -> tuple[str, ...]:
    unique = {c for c in candidates if len(c) >= _MIN_LITERAL_SECRET_LENGTH}
    return tuple(sorted(unique, key=len, reverse=True))


def _configured_secrets() -> tuple[str, ...]:
    """The literal secret values in force: API key, database password, Sentry DSNs."""
    candidates: list[str] = []
    try:
        settings = get_current_settings()
    except Exception:  # an invalid environment must not break redaction
        settings = None
    if settings is not None:
        if settings.api_key is not None:
            candidates.append(settings.api_key.get_secret_value())
        if settings.sentry_dsn is not None:
            candidates.append(settings.sentry_dsn.get_secret_value())
        try:
            password = urlsplit(settings.resolved_database_url()).password
        except ValueError:
            password = None
        if password:
            candidates.extend((password, unquote(password)))
    active = _active_config
    if active is not None:
        candidates.append(active[0])
    # Secrets of the blocks loaded so far (model key, database password, DSN). Looked up only if
    # `agents.blocks` was imported: no block can be loaded before, and scrubbing must stay cheap.
    blocks = sys.modules.get("agents.blocks")
    if blocks is not None:
        candidates.extend(blocks.loaded_secrets())
    return _literal_secrets(tuple(candidates))


def _scrub_text(text: str, literals: tuple[str, ...]) -> str:
    if not text:
        return text
    for secret in literals:
        if secret in text:
            text = text.replace(secret, REDACTED)
    text = _URL_USERINFO.sub(lambda m: f"{m.group('scheme')}{REDACTED}@", text)
    text = _BEARER.sub(lambda m: f"{m.group('scheme')} {REDACTED}", text)
    text = _OPENAI_KEY.sub(f"sk-{REDACTED}", text)
    text = _JWT.sub(REDACTED, text)
    text = _KEY_VALUE.sub(_redact_key_value, text)
    return _EMAIL.sub(EMAIL_PLACEHOLDER, text)


def scrub_text(text: str) -> str:
    """Redact secrets and e-mail addresses in a string.

    Replaced: the secrets configured in settings (API key, database password, Sentry DSN), URL
    credentials (`scheme://user:pw@host` -> `scheme://***@host`), bearer tokens, OpenAI-style keys
    (`sk-...`, `sk-proj-...`), JWTs, `password=...`-style pairs (`api_key`, `token`, `secret`,
    ...), and e-mail addresses (`[email]`). Runs in linear time: safe on large artifacts.

    Args:
        text: Any text: an exception message, a log line, an artifact.

    Returns:
        The text with every secret replaced by `***`.

    Example:
        >>> scrub_text("postgresql://app:s3cret@db/prod; got Bearer abc.def from x@y.io")
        'postgresql://***@db/prod; got Bearer *** from [email]'
    """
    return _scrub_text(text, _configured_secrets())


_MAX_DEPTH = 64


def _scrub_value(value: Any, literals: tuple[str, ...], depth: int = 0) -> Any:
    if isinstance(value, str):
        return _scrub_text(value, literals)
    if depth > _MAX_DEPTH:
        return value
    if isinstance(value, Mapping):
        scrubbed: dict[Any, Any] = {}
        for key, item in value.items():
            if isinstance(key, str):
                if is_sensitive_key(key) and item is not None and not isinstance(item, bool):
                    scrubbed[_scrub_text(key, literals)] = REDACTED
                    continue
                key = _scrub_text(key, literals)
            scrubbed[key] = _scrub_value(item, literals, depth + 1)
        return scrubbed
    if isinstance(value, list):
        return [_scrub_value(item, literals, depth + 1) for item in value]
    if isinstance(value, tuple):
        return tuple(_scrub_value(item, literals, depth + 1) for item in value)
    if isinstance(value, bytes | bytearray):
        return _scrub_text(bytes(value).decode("utf-8", errors="replace"), literals)
    return value


def scrub_event(event: Event, hint: Hint) -> Event:
    """Redact secrets and PII everywhere in a Sentry event (Sentry's `before_send` contract).

    The whole event is walked: exception values, messages, `extra`, contexts, tags, request,
    breadcrumbs and stack-frame `vars`. Strings go through `scrub_text`; values under
    secret-looking keys (`password`, `token`, `api_key`, `authorization`, `dsn`, ...) are
    replaced whole.

    Args:
        event: The event, already serialised by the SDK into JSON-compatible data.
        hint: Sentry's hint (unused; part of the callback signature).

    Returns:
        A scrubbed copy of the event.

    Example:
        >>> scrub_event({"extra": {"api_key": "abc123", "note": "x@y.io"}}, {})
        {'extra': {'api_key': '***', 'note': '[email]'}}
    """
    return cast("Event", _scrub_value(event, _configured_secrets()))


def _before_breadcrumb(crumb: Breadcrumb, hint: BreadcrumbHint) -> Breadcrumb:
    return cast("Breadcrumb", _scrub_value(crumb, _configured_secrets()))


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
    sample_rate, traces_sample_rate = 1.0, 0.0
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
                traces_sample_rate=config[3],
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
