"""The `llm` resource: governed, structured model calls through instructor and the openai client.

`LLM.decide` sends messages to the configured OpenAI-compatible endpoint and asks instructor for
an object of the given Pydantic type (instructor re-asks on validation errors). Around that
call this module applies Stalwart's policy (`agents.policy`), in one layer:

1. **Cache**: a validated answer to the same question (tenant, endpoint, model, messages,
   output schema, parameters) is reused from the `llm_cache` table without a request.
2. **Circuit breaker**: a request goes out only if the breaker of (base URL, model) allows it.
   While it is open the call goes to the fallback model (`Endpoint.fallback_model`, from
   `STALWART_FALLBACK_MODEL`), which has its own breaker, or fails at once with
   `ProviderUnavailable`.
3. **Retries**: transient failures (HTTP 408/409/429/5xx, timeouts, dropped connections) are
   retried with exponential backoff and full jitter, honouring `Retry-After`, up to
   `model_max_attempts` requests; then `ProviderUnavailable`. Fatal refusals (400, 401, 403,
   404, 422, ...) raise `ProviderRejected` (a `UserError`) after exactly one request. Output
   that stays invalid after the re-asks gets `model_output_retries` fresh attempts, then
   `ModelOutputError`. The openai client's own retries are off, and the runner does not retry
   these errors again (`agents.policy.is_retryable_by_step`).
4. **Recording**: each successful call appends an `LLMCall` (tokens, latency, attempts, model
   actually used, raw output, logprobs, prompt digest, whether it was cached) to `LLM.calls`.

No error message names the API key. Without an explicit `Endpoint`, the handle calls the one
`agents.endpoint.resolve_endpoint` picks; with none configured that is the bundled offline model
server, which this module starts in-process on first use (`bundled_model_url`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar, cast

import instructor
import openai
from instructor.core.hooks import Hooks
from pydantic import BaseModel, ValidationError

from agents.declare.tool import Tool
from agents.endpoint import Endpoint, resolve_endpoint, use_offline_server
from agents.errors import ModelOutputError, ProviderRejected, ProviderUnavailable
from agents.observe import tracing
from agents.policy import llm_cache
from agents.policy.breaker import Permit, breaker_key, get_breaker, public_url
from agents.policy.retry import (
    classify,
    retry_after_seconds,
    retry_wait_seconds,
    status_code_of,
    unwrap,
)
from agents.redact import scrub_text
from agents.resources.toolloop import (
    DirectToolRunner,
    ToolRunner,
    Turn,
    run_loop,
    tool_specs,
    turn_of,
)
from agents.settings import Settings, get_current_settings

__all__ = ["LLM", "LLMCall", "bundled_model_url"]

logger = logging.getLogger(__name__)

T = TypeVar("T", bound=BaseModel)
Message = Mapping[str, Any]
PathModel = Literal["primary", "fallback"]

RAW_OUTPUT_MAX_CHARS = 20_000
"""`LLMCall.raw_output` keeps at most this many characters."""

_PROVIDER_MESSAGE_MAX = 300


@dataclass(frozen=True, kw_only=True)
class LLMCall:
    """One successful `decide` call as recorded (failed calls raise instead).

    Attributes:
        endpoint: The endpoint's name (never its key).
        model: The model that answered (the fallback model when `path_model == "fallback"`).
        output_type: Name of the requested Pydantic type.
        tokens_in: Prompt tokens of every request of the call (re-asks included; 0 if cached).
        tokens_out: Completion tokens of every request of the call (0 if cached).
        latency_ms: Wall time of the call, retries and waits included.
        prompt_digest: sha256 of the canonical messages and output schema (64 hex).
        raw_output: Tool-call arguments or content of the answer, at most 20,000 characters.
        attempts: HTTP requests made: retries and re-asks included (0 for a cache hit).
        error_class: Class name of the last error absorbed by retries or re-asks, or None.
        logprobs: `choices[0].logprobs` of the answer as JSON, when the endpoint sent them.
        cached: Whether the answer came from the LLM cache (no request made).
        path_model: "primary", or "fallback" when the primary model's breaker was open.
        tool_calls: The tool calls of a tool loop, on its last turn's record.

    Example:
        >>> LLMCall(endpoint="bundled", model="m", output_type="Routing", tokens_in=10,
        ...         tokens_out=5, latency_ms=12.5).cached
        False
    """

    endpoint: str
    model: str
    output_type: str
    tokens_in: int
    tokens_out: int
    latency_ms: float
    prompt_digest: str = ""
    raw_output: str | None = None
    attempts: int = 1
    error_class: str | None = None
    logprobs: Any = None
    cached: bool = False
    path_model: PathModel = "primary"
    tool_calls: tuple[dict[str, Any], ...] = ()
    """On the last turn of a tool loop: every tool call of the loop (`toolloop.ToolCall`)."""


_bundled_lock = threading.Lock()
_bundled_server: Any = None


def bundled_model_url() -> str:
    """Start the bundled offline model server once per process and return its base URL.

    `resolve_endpoint` calls it when neither `STALWART_MODEL_BLOCK` nor `STALWART_MODEL_URL` is
    set (named with `use_offline_server` below).

    Example:
        >>> bundled_model_url()  # doctest: +SKIP
        'http://127.0.0.1:41234/v1'
    """
    global _bundled_server
    with _bundled_lock:
        if _bundled_server is None:
            # Imported here: the server (uvicorn, starlette) loads only when it is needed.
            from agents.modelserver import ModelServer

            server = ModelServer(port=0)
            server.start()
            _bundled_server = server
        return str(_bundled_server.url)


use_offline_server(bundled_model_url)


_clients_lock = threading.Lock()
_sync_clients: dict[tuple[Any, ...], Any] = {}
# An httpx async client belongs to the event loop it first ran on: one client per loop.
_async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[tuple[Any, ...], Any]] = (
    weakref.WeakKeyDictionary()
)


def _client(endpoint: Endpoint, *, asynchronous: bool) -> Any:
    key_value = endpoint.api_key.get_secret_value() if endpoint.api_key else "stalwart-offline"
    cache_key = (endpoint.base_url, key_value, endpoint.timeout, endpoint.mode)
    mode = instructor.Mode.TOOLS if endpoint.mode == "tools" else instructor.Mode.JSON
    with _clients_lock:
        if asynchronous:
            clients = _async_clients.setdefault(asyncio.get_running_loop(), {})
        else:
            clients = _sync_clients
        client = clients.get(cache_key)
        if client is None:
            raw: openai.OpenAI | openai.AsyncOpenAI
            if asynchronous:
                raw = openai.AsyncOpenAI(
                    base_url=endpoint.base_url,
                    api_key=key_value,
                    max_retries=0,  # retries live in `LLM`, honouring Retry-After
                    timeout=endpoint.timeout,
                )
            else:
                raw = openai.OpenAI(
                    base_url=endpoint.base_url,
                    api_key=key_value,
                    max_retries=0,
                    timeout=endpoint.timeout,
                )
            client = clients[cache_key] = instructor.from_openai(raw, mode=mode)
        return client


def _messages(prompt: str | Sequence[Message], system: str | None) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": system})
    if isinstance(prompt, str):
        messages.append({"role": "user", "content": prompt})
    else:
        messages.extend(dict(m) for m in prompt)
    return messages


def _schema_of(output: type[BaseModel]) -> dict[str, Any]:
    """The output type's JSON schema, built once per type (it costs ~3 ms per call)."""
    try:
        return _schemas[output]
    except KeyError:
        pass
    try:
        schema = output.model_json_schema()
    except Exception:  # an exotic type pydantic cannot describe: its name must do
        schema = {"title": f"{output.__module__}.{output.__qualname__}"}
    _schemas[output] = schema
    return schema


#: Output types' schemas; weak keys, so a type defined in a test or a notebook can go.
_schemas: weakref.WeakKeyDictionary[type[BaseModel], dict[str, Any]] = weakref.WeakKeyDictionary()


@functools.lru_cache(maxsize=256)
def _response_model_of(output: type[BaseModel]) -> type[BaseModel]:
    """What instructor is asked for: `output` wrapped once per type as instructor's schema model.

    instructor wraps a plain model in a new class on every request (pydantic builds its schema
    afresh, and instructor's own schema cache, keyed by that class, never hits): about 1 ms per
    call. A wrapper it recognises is used as it is. The answer is an instance of the wrapper, a
    subclass of `output` with the same fields, as it was with instructor's per-call wrapper.
    """
    if issubclass(output, instructor.OpenAISchema):
        return output
    return cast(type[BaseModel], instructor.openai_schema(output))


def _raw_output(completion: Any) -> str | None:
    """The tool-call arguments, or else the content, of the first choice (truncated)."""
    try:
        message = completion.choices[0].message
    except (AttributeError, IndexError, TypeError):
        return None
    tool_calls = getattr(message, "tool_calls", None) or []
    text: Any = None
    if tool_calls:
        text = getattr(getattr(tool_calls[0], "function", None), "arguments", None)
    if text is None:
        text = getattr(message, "content", None)
    return text[:RAW_OUTPUT_MAX_CHARS] if isinstance(text, str) else None


def _logprobs(completion: Any) -> Any:
    try:
        logprobs = completion.choices[0].logprobs
    except (AttributeError, IndexError, TypeError):
        return None
    if logprobs is None:
        return None
    if isinstance(logprobs, BaseModel):
        return logprobs.model_dump(mode="json")
    return logprobs if isinstance(logprobs, dict | list) else None


def _usage_tokens(usage: Any) -> tuple[int, int]:
    if usage is None:
        return 0, 0
    return (
        int(getattr(usage, "prompt_tokens", 0) or 0),
        int(getattr(usage, "completion_tokens", 0) or 0),
    )


@dataclass
class _Route:
    """Where the next request goes, with the breaker's leave to send it."""

    model: str
    path: PathModel
    permit: Permit


@dataclass(frozen=True)
class _ToCache:
    """An answer to keep in the LLM cache (`llm_cache.store`'s arguments)."""

    key: str
    answer: llm_cache.CachedAnswer
    tenant: str
    endpoint: str
    model: str


@dataclass
class _Hit(Generic[T]):
    """A cached answer: no request needed."""

    result: T


@dataclass
class _Counter:
    """instructor hooks of one `decide` call: HTTP requests and absorbed parse errors."""

    requests: int = 0
    last_error: str | None = None

    def hooks(self) -> Hooks:
        hooks = Hooks()
        hooks.on("completion:kwargs", self._on_request)
        hooks.on("parse:error", self._on_parse_error)
        return hooks

    def _on_request(self, *args: Any, **kwargs: Any) -> None:
        self.requests += 1

    def _on_parse_error(self, error: Exception, **kwargs: Any) -> None:
        self.last_error = type(error).__name__


@dataclass
class _Call(Generic[T]):
    """The policy state of one `decide` call, shared by the sync and async drivers.

    Every method that may touch the database (`lookup`, `route`, `succeeded`, `failed`: cache
    rows and `circuit_state`) is synchronous; the async driver runs them in a worker thread.
    """

    llm: LLM
    endpoint: Endpoint
    settings: Settings
    output: type[T]
    messages: list[dict[str, Any]]
    params: dict[str, Any]
    max_reasks: int
    use_cache: bool
    primary: str
    started: float = field(default_factory=time.perf_counter)
    counter: _Counter = field(default_factory=_Counter)
    schema: dict[str, Any] = field(init=False)
    digest: str = field(init=False)
    fallback: str | None = field(init=False)
    hooks: Hooks = field(init=False)
    transient_failures: int = 0
    output_failures: int = 0
    tokens_in: int = 0
    tokens_out: int = 0
    last_error: BaseException | None = None
    fallback_looked_up: bool = False
    tools: list[dict[str, Any]] | None = None
    """A tool-loop turn: the tools offered (the request goes out without instructor)."""
    answer_type: str | None = None

    def __post_init__(self) -> None:
        self.schema = _schema_of(self.output)
        if self.tools is not None:
            self.schema = {"turn": self.schema, "tools": self.tools}
        self.digest = llm_cache.prompt_digest(self.messages, self.schema)
        fallback = self.endpoint.fallback_model
        self.fallback = fallback if fallback and fallback != self.primary else None
        self.hooks = self.counter.hooks()

    # -- naming ---------------------------------------------------------------------------

    def where(self, model: str) -> str:
        """Endpoint name, host and model, for messages (never the key)."""
        return f"model endpoint {self.endpoint.name!r} ({self.endpoint.host}), model {model!r}"

    def _breaker(self, model: str) -> str:
        return breaker_key(self.endpoint.base_url, model)

    # -- cache ----------------------------------------------------------------------------

    def _cache_key(self, model: str) -> str:
        return llm_cache.cache_key(
            tenant=self.llm.tenant or "",
            base_url=self.endpoint.base_url,
            model=model,
            messages=self.messages,
            schema=self.schema,
            params={"mode": self.endpoint.mode, **self.params},
        )

    def lookup(self, model: str, path: PathModel) -> _Hit[T] | None:
        """A cached answer for `model`, recorded as a cached call; None on a miss."""
        if not self.use_cache:
            return None
        return self._hit(model, path, llm_cache.lookup(self._cache_key(model)))

    async def alookup(self, model: str, path: PathModel) -> _Hit[T] | None:
        """Async `lookup`: shares a query with the lookups made meanwhile."""
        if not self.use_cache:
            return None
        return self._hit(model, path, await llm_cache.alookup(self._cache_key(model)))

    def _hit(
        self, model: str, path: PathModel, answer: llm_cache.CachedAnswer | None
    ) -> _Hit[T] | None:
        if answer is None:
            return None
        try:
            result = self.output.model_validate(answer.output)
        except ValidationError:
            logger.debug("Ignoring a cached answer that no longer validates as %s", self.output)
            return None
        self.record(
            model=model,
            path=path,
            result_tokens=(0, 0),
            raw_output=answer.raw_output,
            logprobs=answer.logprobs,
            cached=True,
        )
        return _Hit(result)

    # -- routing --------------------------------------------------------------------------

    def begin(self) -> _Route | _Hit[T]:
        """A cached answer of the primary model, or else the route of the first request."""
        hit = self.lookup(self.primary, "primary")
        return hit if hit is not None else self.route()

    async def abegin(self) -> _Route | _Hit[T]:
        """Async `begin`: the lookup shared with others; the breaker's row read in a worker
        thread when this call claimed the read; the route there too when finding it writes a
        breaker's row (else here: a hop costs more than it)."""
        hit = await self.alookup(self.primary, "primary")
        if hit is not None:
            return hit
        breaker = get_breaker(self._breaker(self.primary))
        if breaker.claim_sync():  # this call reads the row; the calls meanwhile need not
            await asyncio.to_thread(breaker.sync, force=True)
        if breaker.is_quiet():
            return self.route()
        return await asyncio.to_thread(self.route)

    def route(self) -> _Route | _Hit[T]:
        """The model the next request goes to, or a cached fallback answer.

        Raises:
            ProviderUnavailable: Every breaker on the way is open.
        """
        permit = get_breaker(self._breaker(self.primary)).allow()
        if permit is not None:
            return _Route(self.primary, "primary", permit)
        if self.fallback is not None:
            if not self.fallback_looked_up:
                self.fallback_looked_up = True
                hit = self.lookup(self.fallback, "fallback")
                if hit is not None:
                    return hit
            permit = get_breaker(self._breaker(self.fallback)).allow()
            if permit is not None:
                return _Route(self.fallback, "fallback", permit)
        if self.fallback is not None:
            what = (
                f"the circuit breakers of model {self.primary!r} and of its fallback "
                f"{self.fallback!r} are open"
            )
        else:
            what = f"the circuit breaker of model {self.primary!r} is open"
        last = f" (last error: {self._describe(self.last_error)})" if self.last_error else ""
        sent = "no further request was sent" if self.counter.requests else "no request was sent"
        raise ProviderUnavailable(
            f"The {self.where(self.primary)} is unavailable: {what} after repeated transient "
            f"failures{last}; {sent}. A breaker allows one probe request "
            f"{self.settings.breaker_reset_seconds:g} s after opening "
            "(STALWART_BREAKER_RESET_SECONDS).",
            endpoint=self.endpoint.name,
            model=self.primary,
            attempts=self.counter.requests,
            status_code=status_code_of(self.last_error) if self.last_error else None,
            breaker_open=True,
        )

    def send_kwargs(self, route: _Route) -> dict[str, Any]:
        """Arguments of `create_with_completion` for one instructor call."""
        return {
            **self.params,
            "model": route.model,
            "response_model": _response_model_of(self.output),
            "messages": [dict(m) for m in self.messages],
            "max_retries": self.max_reasks,
            "hooks": self.hooks,
        }

    def turn_kwargs(self, route: _Route) -> dict[str, Any]:
        """Arguments of the plain completion of one tool-loop turn (no instructor: the turn's
        tool calls are parsed by `toolloop.turn_of`)."""
        return {
            **self.params,
            "model": route.model,
            "messages": [dict(m) for m in self.messages],
            "tools": self.tools,
            "tool_choice": "required",
        }

    # -- outcomes -------------------------------------------------------------------------

    def succeeded(self, route: _Route, result: T, completion: Any) -> T:
        """Close the books on an answer: breaker, tokens, record, cache."""
        to_cache = self.settled(route, result, completion)
        if to_cache is not None:
            llm_cache.store(**vars(to_cache))
        return result

    async def asucceeded(self, route: _Route, result: T, completion: Any) -> T:
        """Async `succeeded`: the breaker and record (in a worker thread when the breaker's
        row is written); the answer stored with the other answers stored meanwhile
        (`llm_cache.astore`)."""
        if route.permit.breaker.state == "closed" and not route.permit.probe:
            to_cache = self.settled(route, result, completion)
        else:
            to_cache = await asyncio.to_thread(self.settled, route, result, completion)
        if to_cache is not None:
            await llm_cache.astore(**vars(to_cache))
        return result

    def settled(self, route: _Route, result: T, completion: Any) -> _ToCache | None:
        """An answer's breaker verdict, tokens and record; what to cache (None: nothing)."""
        route.permit.success()
        total = getattr(result, "_total_usage", None)
        tokens = _usage_tokens(total if total is not None else getattr(completion, "usage", None))
        self.tokens_in += tokens[0]
        self.tokens_out += tokens[1]
        raw, logprobs = _raw_output(completion), _logprobs(completion)
        self.record(
            model=route.model,
            path=route.path,
            result_tokens=(self.tokens_in, self.tokens_out),
            raw_output=raw,
            logprobs=logprobs,
            cached=False,
        )
        if not self.use_cache:
            return None
        return _ToCache(
            key=self._cache_key(route.model),
            answer=llm_cache.CachedAnswer(
                output=result.model_dump(mode="json"),
                raw_output=raw,
                usage={"tokens_in": tokens[0], "tokens_out": tokens[1]},
                logprobs=logprobs,
            ),
            tenant=self.llm.tenant or "",
            endpoint=public_url(self.endpoint.base_url),
            model=route.model,
        )

    def failed(self, route: _Route, exc: Exception) -> float:
        """Judge a failed instructor call: the wait before the next try, or raise.

        Raises:
            ProviderRejected: A fatal refusal (after exactly one request).
            ProviderUnavailable: Transient failures used up `model_max_attempts`.
            ModelOutputError: The output stayed invalid after the extra fresh attempts.
            Exception: `exc` itself when it is not a model-call error.
        """
        kind = classify(exc)
        inner = unwrap(exc)
        usage = getattr(exc, "total_usage", None)
        if usage is not None:
            tokens = _usage_tokens(usage)
            self.tokens_in += tokens[0]
            self.tokens_out += tokens[1]
        if kind == "unknown":
            route.permit.release()
            raise exc
        self.last_error = inner
        self.counter.last_error = type(inner).__name__
        if kind == "fatal":
            status = status_code_of(inner)
            if status is None:
                route.permit.release()
            else:
                route.permit.success()  # the endpoint is up; it refuses this request
            raise ProviderRejected(
                self._rejection(route.model, inner, status),
                endpoint=self.endpoint.name,
                model=route.model,
                status_code=status,
            ) from exc
        if kind == "output":
            route.permit.success()
            self.output_failures += 1
            if self.output_failures > self.settings.model_output_retries:
                raise ModelOutputError(
                    f"The {self.where(route.model)} answered {self.counter.requests} time(s) "
                    f"but never with a valid {self.output.__name__} (re-asked "
                    f"{self.max_reasks} time(s) per attempt, {self.output_failures} "
                    f"attempt(s)). Last problem: {self._describe(inner)}",
                    endpoint=self.endpoint.name,
                    model=route.model,
                    attempts=self.counter.requests,
                ) from exc
            logger.warning(
                "%s: output still invalid after re-asks (%s); trying once more afresh",
                self.where(route.model),
                type(inner).__name__,
            )
            return 0.0
        route.permit.failure(self._describe(inner))
        self.transient_failures += 1
        max_attempts = self.settings.model_max_attempts
        if self.transient_failures >= max_attempts:
            raise ProviderUnavailable(
                f"The {self.where(route.model)} is unavailable: {self.transient_failures} "
                f"attempt(s) failed with transient errors, the last: {self._describe(inner)}. "
                f"Retried with backoff up to STALWART_MODEL_MAX_ATTEMPTS={max_attempts}.",
                endpoint=self.endpoint.name,
                model=route.model,
                attempts=self.counter.requests,
                status_code=status_code_of(inner),
            ) from exc
        wait = retry_wait_seconds(
            self.transient_failures,
            base=self.settings.model_retry_base_seconds,
            cap=self.settings.model_retry_max_wait_seconds,
            retry_after=retry_after_seconds(inner),
        )
        logger.warning(
            "%s failed (%s); retry %d of %d in %.2f s",
            self.where(route.model),
            self._describe(inner),
            self.transient_failures,
            max_attempts - 1,
            wait,
        )
        return wait

    def abandoned(self, route: _Route) -> None:
        """The call was cancelled mid-request: free the breaker permit."""
        route.permit.release()

    def record(
        self,
        *,
        model: str,
        path: PathModel,
        result_tokens: tuple[int, int],
        raw_output: str | None,
        logprobs: Any,
        cached: bool,
    ) -> None:
        made = LLMCall(
            endpoint=self.endpoint.name,
            model=model,
            output_type=self.answer_type or self.output.__name__,
            tokens_in=result_tokens[0],
            tokens_out=result_tokens[1],
            latency_ms=(time.perf_counter() - self.started) * 1000,
            prompt_digest=self.digest,
            raw_output=raw_output,
            attempts=0 if cached else self.counter.requests,
            error_class=None if cached else self.counter.last_error,
            logprobs=logprobs,
            cached=cached,
            path_model=path,
        )
        self.llm.calls.append(made)
        tracing.model_call(made, self.messages)

    # -- messages -------------------------------------------------------------------------

    def _describe(self, exc: BaseException) -> str:
        """A short, secret-free description of a failure."""
        status = status_code_of(exc)
        detail = self._provider_message(exc)
        name = type(exc).__name__
        if status is not None:
            return f"HTTP {status} {name}" + (f": {detail}" if detail else "")
        return f"{name}: {detail}" if detail else name

    def _provider_message(self, exc: BaseException) -> str:
        body = getattr(exc, "body", None)
        message: Any = None
        if isinstance(body, Mapping):
            message = body.get("message")
            if message is None and isinstance(body.get("error"), Mapping):
                message = body["error"].get("message")
        if not isinstance(message, str):
            message = getattr(exc, "message", None) if body is None else None
        if not isinstance(message, str):
            message = str(exc) if not isinstance(exc, ValidationError) else _first_line(exc)
        return self._scrub(message)[:_PROVIDER_MESSAGE_MAX].rstrip(". ")

    def _scrub(self, text: str) -> str:
        key = self.endpoint.api_key.get_secret_value() if self.endpoint.api_key else ""
        if key:
            text = text.replace(key, "***")
        return scrub_text(" ".join(text.split()))

    def _rejection(self, model: str, exc: BaseException, status: int | None) -> str:
        if status is None:
            return (
                f"The {self.where(model)} cannot be called: {self._describe(exc)}. "
                "Check STALWART_MODEL_URL, STALWART_MODEL and STALWART_API_KEY."
            )
        hint = {
            401: "the API key was refused: check STALWART_API_KEY",
            403: "the API key may not use this model: check its permissions",
            404: "the model or URL does not exist: check STALWART_MODEL and STALWART_MODEL_URL",
        }.get(status, "the request is invalid for this endpoint: fix it, retrying cannot help")
        return f"The {self.where(model)} rejected the request with {self._describe(exc)}; {hint}."


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return " ".join(text.splitlines()[:3])


@dataclass
class LLM:
    """The model handle injected into steps that declare `llm: LLM`.

    Attributes:
        endpoint: The endpoint to call (default: `resolve_endpoint()` on first use).
        calls: Where successful calls are recorded (the runner passes a shared list).
        tenant: The tenant asking; scopes the answer cache (None: "").
        cache: Use the LLM answer cache (None: `STALWART_LLM_CACHE_ENABLED`, on by default).
        tools: The step's tools (`@agent.reasoning(tools=[...])`); `decide` loops with them.
        max_turns: Model turns a tool loop may take.
        tool_runner: How tool calls run (in a run: one durable Prefect task run each).

    Example:
        >>> @triage.reasoning(threshold=0.7)  # doctest: +SKIP
        ... def route(ticket: Ticket, llm: LLM) -> Routing:
        ...     return llm.decide(Routing, f"Route this ticket: {ticket.text}")
    """

    endpoint: Endpoint | None = None
    calls: list[LLMCall] = field(default_factory=list)
    tenant: str | None = None
    cache: bool | None = None
    tools: tuple[Tool, ...] = ()
    """The step's tools: `decide` runs the tool loop when there are any."""
    max_turns: int = 6
    tool_runner: ToolRunner | None = None
    """How tools run (the runtime makes each call a Prefect task run); None: called directly."""

    def _resolved(self) -> Endpoint:
        if self.endpoint is None:
            self.endpoint = resolve_endpoint()
        return self.endpoint

    def _call(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        system: str | None,
        model: str | None,
        max_reasks: int | None,
        cache: bool | None,
        params: dict[str, Any],
        tools: list[dict[str, Any]] | None = None,
    ) -> _Call[T]:
        endpoint = self._resolved()
        settings = get_current_settings()
        if cache is None:
            cache = self.cache if self.cache is not None else settings.llm_cache_enabled
        return _Call(
            llm=self,
            endpoint=endpoint,
            settings=settings,
            output=output,
            messages=_messages(prompt, system),
            params=params,
            max_reasks=endpoint.max_reasks if max_reasks is None else max_reasks,
            use_cache=cache,
            primary=model or endpoint.model,
            tools=tools,
        )

    def decide(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int | None = None,
        cache: bool | None = None,
        tools: Sequence[Any] | None = None,
        max_turns: int | None = None,
        **params: Any,
    ) -> T:
        """Ask the model for an `output` object: cached, guarded, retried, recorded.

        Args:
            output: The Pydantic type to fill in (usually a `Decision` subclass).
            prompt: A user prompt, or a list of chat messages.
            system: An optional system message put first.
            model: Override the endpoint's model for this call.
            max_reasks: Re-asks after a validation failure (default from settings).
            cache: Use the answer cache for this call (default: the handle's `cache`).
            tools: Read-only functions the model may call first (default: the step's tools);
                `[]` for none. With tools, the call is a loop (`agents.resources.toolloop`).
            max_turns: Model turns the loop may take (default: the step's `max_turns`).
            **params: Passed to the chat completion (`temperature`, `max_tokens`, ...).

        Returns:
            A validated `output` instance.

        Raises:
            ProviderRejected: The endpoint refused the request for good (HTTP 400, 401, ...).
            ProviderUnavailable: Transient failures outlasted the retries, or the breaker is
                open and no fallback model could answer.
            ModelOutputError: The answer never validated as `output`.
            ToolLoopExhausted: The tool loop ended without an answer (`max_turns`).

        Example:
            >>> llm = LLM(tenant="acme")  # doctest: +SKIP
            >>> llm.decide(Routing, "Route this ticket: refund please").category  # doctest: +SKIP
            'billing'
        """
        loop_tools = self._tools(tools)
        if loop_tools:
            from prefect.utilities.asyncutils import run_coro_as_sync

            # Turns go through the sync client (kept per process) in a worker thread; only the
            # loop itself, and the tools, run on an event loop.
            loop = self._loop(
                output,
                prompt,
                system,
                model,
                max_reasks,
                cache,
                params,
                loop_tools,
                max_turns,
                synchronous=True,
            )
            return run_coro_as_sync(loop)
        call = self._call(output, prompt, system, model, max_reasks, cache, params)
        return self._drive(call)

    def _drive(self, call: _Call[T]) -> T:
        """One policy-governed call, synchronously: cache, breaker, retries, recording."""
        route = call.begin()
        while True:
            if isinstance(route, _Hit):
                return route.result
            client = _client(call.endpoint, asynchronous=False)
            try:
                if call.tools is not None:  # a tool-loop turn: a plain completion, parsed here
                    turn = call.turn_kwargs(route)
                    completion = client.client.chat.completions.create(**turn)
                    call.counter.requests += 1
                    result = cast(T, turn_of(completion))
                else:
                    result, completion = client.chat.completions.create_with_completion(
                        **call.send_kwargs(route)
                    )
            except Exception as exc:
                wait = call.failed(route, exc)
                if wait > 0:
                    time.sleep(wait)
                route = call.route()
                continue
            except BaseException:
                call.abandoned(route)
                raise
            return call.succeeded(route, result, completion)

    async def adecide(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int | None = None,
        cache: bool | None = None,
        tools: Sequence[Any] | None = None,
        max_turns: int | None = None,
        **params: Any,
    ) -> T:
        """Async twin of `decide` (database work runs in a worker thread).

        Example:
            >>> await LLM().adecide(Routing, "Route: my parcel is late")  # doctest: +SKIP
            Routing(category='shipping', ...)
        """
        loop_tools = self._tools(tools)
        if loop_tools:
            return await self._loop(
                output, prompt, system, model, max_reasks, cache, params, loop_tools, max_turns
            )
        call = self._call(output, prompt, system, model, max_reasks, cache, params)
        return await self._adrive(call)

    async def _adrive(self, call: _Call[T]) -> T:
        """One policy-governed call: cache, breaker, retries, recording.

        The cache lookup and store share round trips with the other calls of the event loop;
        the breaker's row is read in a worker thread by one call a second (`claim_sync`), and
        its bookkeeping stays on the loop while it is closed."""
        route = await call.abegin()
        while True:
            if isinstance(route, _Hit):
                return route.result
            client = _client(call.endpoint, asynchronous=True)
            try:
                if call.tools is not None:  # a tool-loop turn: a plain completion, parsed here
                    completion = await client.client.chat.completions.create(
                        **call.turn_kwargs(route)
                    )
                    call.counter.requests += 1
                    result = cast(T, turn_of(completion))
                else:
                    result, completion = await client.chat.completions.create_with_completion(
                        **call.send_kwargs(route)
                    )
            except Exception as exc:
                wait = await asyncio.to_thread(call.failed, route, exc)
                if wait > 0:
                    await asyncio.sleep(wait)
                route = await asyncio.to_thread(call.route)
                continue
            except BaseException:  # cancelled: free the breaker permit
                call.abandoned(route)
                raise
            return await call.asucceeded(route, result, completion)

    def _tools(self, tools: Sequence[Any] | None) -> tuple[Tool, ...]:
        if tools is None:
            return self.tools
        return tuple(Tool.of(t) for t in tools)

    async def _loop(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        system: str | None,
        model: str | None,
        max_reasks: int | None,
        cache: bool | None,
        params: dict[str, Any],
        tools: tuple[Tool, ...],
        max_turns: int | None,
        *,
        synchronous: bool = False,
    ) -> T:
        """`decide` with tools: turns until the model answers (`toolloop.run_loop`); each turn
        through the sync driver in a thread (`synchronous`, from `decide`) or the async one."""
        specs = tool_specs(tools, output)
        messages = _messages(prompt, system)
        endpoint = self._resolved()
        reasks = endpoint.max_reasks if max_reasks is None else max_reasks

        async def ask(current: list[dict[str, Any]]) -> Turn:
            call = self._call(Turn, current, None, model, max_reasks, cache, params, specs)
            call.answer_type = output.__name__
            if synchronous:
                return await asyncio.to_thread(self._drive, call)
            return await self._adrive(call)

        return await run_loop(
            self,
            messages,
            output,
            tools,
            max_turns=self.max_turns if max_turns is None else max_turns,
            budget=reasks + 1,
            runner=self.tool_runner or DirectToolRunner(),
            ask=ask,
        )

    @property
    def tokens(self) -> tuple[int, int]:
        """Total (input, output) tokens of the calls made through this handle."""
        return sum(c.tokens_in for c in self.calls), sum(c.tokens_out for c in self.calls)
