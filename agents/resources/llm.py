"""The `llm` resource: structured model calls through instructor and the openai client.

`LLM.decide` sends messages to the configured OpenAI-compatible endpoint, asks instructor for an
object of the given Pydantic type, re-asks on validation errors, and records tokens and latency.
The openai client's own retries are off: retrying a step is Prefect's job. With no endpoint
configured (`STALWART_MODEL_URL` unset) the bundled offline model server is started in-process.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import instructor
import openai
from pydantic import BaseModel, SecretStr

from agents._settings import get_current_settings

T = TypeVar("T", bound=BaseModel)
Message = Mapping[str, Any]


@dataclass(frozen=True, kw_only=True)
class Endpoint:
    """Where and how to call a model. The key is a secret and never appears in reprs."""

    base_url: str
    model: str
    api_key: SecretStr | None = None
    mode: Literal["tools", "json"] = "tools"
    timeout: float = 60.0
    max_reasks: int = 2
    name: str = "default"

    def __repr__(self) -> str:
        return f"Endpoint(name={self.name!r}, base_url={self.base_url!r}, model={self.model!r})"


@dataclass(frozen=True, kw_only=True)
class LLMCall:
    """One `decide` call as recorded: model, tokens, latency."""

    endpoint: str
    model: str
    output_type: str
    tokens_in: int
    tokens_out: int
    latency_ms: float


_bundled_lock = threading.Lock()
_bundled_server: Any = None


def bundled_model_url() -> str:
    """Start the bundled offline model server once per process and return its base URL."""
    global _bundled_server
    with _bundled_lock:
        if _bundled_server is None:
            from agents.modelserver import ModelServer

            server = ModelServer(port=0)
            server.start()
            _bundled_server = server
        return str(_bundled_server.url)


def resolve_endpoint(model: str | None = None) -> Endpoint:
    """The endpoint in force: `STALWART_MODEL_URL`, or the bundled offline server.

    Example:
        >>> resolve_endpoint().model  # doctest: +SKIP
        'stalwart-test'
    """
    settings = get_current_settings()
    base_url = settings.model_url or bundled_model_url()
    return Endpoint(
        base_url=base_url,
        model=model or settings.model,
        api_key=settings.api_key,
        mode=settings.model_mode,
        timeout=settings.model_timeout_seconds,
        max_reasks=settings.model_max_reasks,
        name="configured" if settings.model_url else "bundled",
    )


_clients_lock = threading.Lock()
_clients: dict[tuple[Any, ...], Any] = {}


def _client(endpoint: Endpoint, *, asynchronous: bool) -> Any:
    key_value = endpoint.api_key.get_secret_value() if endpoint.api_key else "stalwart-offline"
    cache_key = (endpoint.base_url, key_value, endpoint.timeout, endpoint.mode, asynchronous)
    with _clients_lock:
        client = _clients.get(cache_key)
        if client is None:
            mode = instructor.Mode.TOOLS if endpoint.mode == "tools" else instructor.Mode.JSON
            raw: openai.OpenAI | openai.AsyncOpenAI
            if asynchronous:
                raw = openai.AsyncOpenAI(
                    base_url=endpoint.base_url,
                    api_key=key_value,
                    max_retries=0,
                    timeout=endpoint.timeout,
                )
                client = instructor.from_openai(raw, mode=mode)
            else:
                raw = openai.OpenAI(
                    base_url=endpoint.base_url,
                    api_key=key_value,
                    max_retries=0,
                    timeout=endpoint.timeout,
                )
                client = instructor.from_openai(raw, mode=mode)
            _clients[cache_key] = client
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


@dataclass
class LLM:
    """The model handle injected into steps that declare `llm: LLM`.

    Example:
        >>> @triage.reasoning(threshold=0.7)  # doctest: +SKIP
        ... def route(ticket: Ticket, llm: LLM) -> Routing:
        ...     return llm.decide(Routing, f"Route this ticket: {ticket.text}")
    """

    endpoint: Endpoint | None = None
    calls: list[LLMCall] = field(default_factory=list)

    def _resolved(self) -> Endpoint:
        if self.endpoint is None:
            self.endpoint = resolve_endpoint()
        return self.endpoint

    def decide(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int | None = None,
        **params: Any,
    ) -> T:
        """Ask the model for an `output` object; validate, re-ask on errors, record usage.

        Args:
            output: The Pydantic type to fill in (usually a `Decision` subclass).
            prompt: A user prompt, or a list of chat messages.
            system: An optional system message put first.
            model: Override the endpoint's model for this call.
            max_reasks: Re-asks after a validation failure (default from settings).
            **params: Passed to the chat completion (`temperature`, `max_tokens`, ...).
        """
        endpoint = self._resolved()
        client = _client(endpoint, asynchronous=False)
        started = time.perf_counter()
        result, completion = client.chat.completions.create_with_completion(
            model=model or endpoint.model,
            response_model=output,
            messages=_messages(prompt, system),
            max_retries=endpoint.max_reasks if max_reasks is None else max_reasks,
            **params,
        )
        self._record(endpoint, model, output, completion, started)
        return result

    async def adecide(
        self,
        output: type[T],
        prompt: str | Sequence[Message],
        *,
        system: str | None = None,
        model: str | None = None,
        max_reasks: int | None = None,
        **params: Any,
    ) -> T:
        """Async twin of `decide`."""
        endpoint = self._resolved()
        client = _client(endpoint, asynchronous=True)
        started = time.perf_counter()
        result, completion = await client.chat.completions.create_with_completion(
            model=model or endpoint.model,
            response_model=output,
            messages=_messages(prompt, system),
            max_retries=endpoint.max_reasks if max_reasks is None else max_reasks,
            **params,
        )
        self._record(endpoint, model, output, completion, started)
        return result

    def _record(
        self,
        endpoint: Endpoint,
        model: str | None,
        output: type[BaseModel],
        completion: Any,
        started: float,
    ) -> None:
        usage = getattr(completion, "usage", None)
        self.calls.append(
            LLMCall(
                endpoint=endpoint.name,
                model=model or endpoint.model,
                output_type=output.__name__,
                tokens_in=int(getattr(usage, "prompt_tokens", 0) or 0),
                tokens_out=int(getattr(usage, "completion_tokens", 0) or 0),
                latency_ms=(time.perf_counter() - started) * 1000,
            )
        )

    @property
    def tokens(self) -> tuple[int, int]:
        """Total (input, output) tokens of the calls made through this handle."""
        return sum(c.tokens_in for c in self.calls), sum(c.tokens_out for c in self.calls)
