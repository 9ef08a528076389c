"""HTTP surface of the offline model server: a Starlette app speaking the OpenAI chat API.

This module owns the routes and the order in which a request meets its fault:

- `POST /v1/chat/completions` (also `/chat/completions`): count the request, draw a fault, wait
  the configured latency, then answer with an HTTP error (429 with `Retry-After`, any 4xx/5xx),
  drop the connection, stall past the client's timeout, or answer (possibly with malformed or
  schema-invalid JSON, see `agents.modelserver.completions`).
  A tool-loop request (a step's tools plus the `final_result` answer tool) meets its fault the
  same way, whether its answer would be tool calls or the final answer
  (`agents.modelserver.tools`).
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`.
- `GET|POST /_stalwart/faults` (read or partially update the `Faults`; `{"reset": true}` first
  resets them), `GET /_stalwart/stats`, `POST /_stalwart/reset` (faults and counters).

All waiting is `asyncio.sleep` in short steps that end early when the client disconnects or the
server is stopping, so the event loop is never blocked and shutdown stays fast.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from agents.modelserver.completions import complete
from agents.modelserver.faults import Faults, is_status_kind
from agents.modelserver.rules import Rules
from agents.modelserver.stats import Stats
from agents.modelserver.tools import ANSWER_TOOL, tool_loop
from agents.settings import DEFAULT_MODEL

OWNER = "stalwart"
_POLL_S = 0.05
_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("authentication_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("not_found_error", "model_not_found"),
    409: ("conflict_error", None),
    422: ("unprocessable_entity_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", "bad_gateway"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "gateway_timeout"),
}
_dropping: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "stalwart_modelserver_dropping", default=False
)


class _QuietDropFilter(logging.Filter):
    """Silence uvicorn's error about the response a `drop` fault leaves incomplete on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (_dropping.get() and "without completing response" in record.getMessage())


_QUIET_DROP_FILTER = _QuietDropFilter()


@dataclass
class ServerState:
    """What the handlers of one app share with the code that runs it.

    Attributes:
        rules: Steering rules.
        faults: Fault-injection settings (mutable at run time).
        stats: Counters.
        closing: Set when the server is stopping; pending waits end at once.

    Example:
        >>> ServerState(rules=Rules(), faults=Faults(), stats=Stats()).closing.is_set()
        False
    """

    rules: Rules
    faults: Faults
    stats: Stats
    closing: threading.Event = field(default_factory=threading.Event)


def error_body(status: int, message: str) -> dict[str, Any]:
    """An OpenAI-style error body for `status`.

    Example:
        >>> error_body(401, "bad key")["error"]["type"]
        'authentication_error'
    """
    kind, code = _ERROR_TYPES.get(status, ("server_error" if status >= 500 else "api_error", None))
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def error_response(
    status: int, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """A JSON error response in the OpenAI shape.

    Example:
        >>> error_response(400, "no messages").status_code
        400
    """
    return JSONResponse(error_body(status, message), status_code=status, headers=headers)


class DroppedResponse(Response):
    """Starts a response, then returns: the server closes the connection mid-response."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        _dropping.set(True)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", b"1024"),
                ],
            }
        )


def _body_problem(body: Any) -> str | None:
    if not isinstance(body, dict):
        return "The request body must be a JSON object."
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "'model' is required and must be a non-empty string."
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty list."
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in messages):
        return "Every message must be an object with a 'role'."
    if body.get("stream"):
        return "Streaming is not supported by the Stalwart offline model server; send stream=false."
    return None


class _Handlers:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def _wait(self, request: Request, seconds: float) -> Response | None:
        """Sleep `seconds`; an error response instead if the server stops or the client leaves."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return None
            if self.state.closing.is_set():
                return error_response(503, "The offline model server is shutting down.")
            if await request.is_disconnected():
                return error_response(504, "The client disconnected before the answer was ready.")
            await asyncio.sleep(min(remaining, _POLL_S))

    async def chat_completions(self, request: Request) -> Response:
        state = self.state
        try:
            body = await request.json()
        except ValueError:
            return error_response(400, "The request body is not valid JSON.")
        problem = _body_problem(body)
        if problem is not None:
            return error_response(400, problem)
        state.stats.record_request(body["model"])
        port = request.client.port if request.client is not None else None
        state.stats.begin(port)
        try:
            return await self._answer(request, body)
        finally:
            state.stats.end(port)

    async def _answer(self, request: Request, body: dict[str, Any]) -> Response:
        state = self.state
        fault = state.faults.draw()
        if fault is not None:
            state.stats.record_fault(fault)
        interrupted = await self._wait(request, state.faults.latency_s())
        if interrupted is not None:
            return interrupted
        if fault == "drop":
            return DroppedResponse()
        if fault == "429":
            retry_after = max(0.0, state.faults.retry_after_s)
            headers = {
                "Retry-After": str(math.ceil(retry_after)),
                "retry-after-ms": str(round(retry_after * 1000)),
            }
            return error_response(429, "Rate limit reached (injected fault).", headers)
        if fault is not None and is_status_kind(fault):
            return error_response(int(fault), f"Injected fault: HTTP {fault}.")
        if fault == "timeout":
            interrupted = await self._wait(request, state.faults.timeout_sleep_s)
            if interrupted is not None:
                return interrupted
        reply = complete(
            body,
            rules=state.rules,
            force_confidence=state.faults.confidence_by_model.get(
                str(body.get("model")), state.faults.force_confidence
            ),
            fault=fault,
        )
        usage = reply["usage"]
        state.stats.record_tokens(usage["prompt_tokens"], usage["completion_tokens"])
        if tool_loop(body) is not None:
            calls = reply["choices"][0]["message"].get("tool_calls") or []
            served = [c for c in calls if c["function"]["name"] != ANSWER_TOOL]
            if served:
                state.stats.record_tool_calls(len(served))
        if fault is None or fault == "timeout":
            # A usable answer (a timeout fault still answers if the client waited): a second
            # one to the same prompt is a model call paid twice.
            state.stats.record_answer(str(body["model"]), body["messages"])
        return JSONResponse(reply)

    async def list_models(self, request: Request) -> Response:
        names = sorted({DEFAULT_MODEL, *self.state.stats.snapshot()["requests_by_model"]})
        data = [_model_card(name) for name in names]
        return JSONResponse({"object": "list", "data": data})

    async def get_model(self, request: Request) -> Response:
        return JSONResponse(_model_card(str(request.path_params["model_id"])))

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def faults(self, request: Request) -> Response:
        faults = self.state.faults
        if request.method == "POST":
            try:
                changes = await request.json()
            except ValueError:
                return error_response(400, "The request body is not valid JSON.")
            if not isinstance(changes, dict):
                return error_response(400, "The request body must be a JSON object.")
            if changes.pop("reset", False):
                faults.reset()
            try:
                faults.update(**changes)
            except (ValueError, TypeError) as exc:
                return error_response(400, str(exc))
        return JSONResponse(faults.to_dict())

    async def stats(self, request: Request) -> Response:
        return JSONResponse(self.state.stats.snapshot())

    async def reset(self, request: Request) -> Response:
        self.state.faults.reset()
        self.state.stats.reset()
        return JSONResponse({"faults": self.state.faults.to_dict(), **self.state.stats.snapshot()})


def _model_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": OWNER}


def build_app(
    *,
    rules: Rules | None = None,
    faults: Faults | None = None,
    stats: Stats | None = None,
    closing: threading.Event | None = None,
) -> Starlette:
    """The Starlette app of one offline model server.

    Args:
        rules: Steering rules; the bundled triage-demo rules when None (`Rules.none()` for none).
        faults: Fault settings shared with the caller (a fresh `Faults()` when None).
        stats: Counters shared with the caller (fresh when None).
        closing: Event that, once set, ends pending waits (used by `ModelServer.stop`).

    Returns:
        The app; its `state.modelserver` is the `ServerState`.

    Example:
        >>> from starlette.testclient import TestClient  # doctest: +SKIP
        >>> TestClient(build_app()).get("/health").json()  # doctest: +SKIP
        {'status': 'ok'}
    """
    state = ServerState(
        rules=rules if rules is not None else Rules.default(),
        faults=faults if faults is not None else Faults(),
        stats=stats if stats is not None else Stats(),
        closing=closing if closing is not None else threading.Event(),
    )
    handlers = _Handlers(state)
    routes = [
        Route("/v1/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/chat/completions", handlers.chat_completions, methods=["POST"]),
        Route("/v1/models", handlers.list_models, methods=["GET"]),
        Route("/v1/models/{model_id:path}", handlers.get_model, methods=["GET"]),
        Route("/health", handlers.health, methods=["GET"]),
        Route("/_stalwart/faults", handlers.faults, methods=["GET", "POST"]),
        Route("/_stalwart/stats", handlers.stats, methods=["GET"]),
        Route("/_stalwart/reset", handlers.reset, methods=["POST"]),
    ]
    uvicorn_logger = logging.getLogger("uvicorn.error")
    if _QUIET_DROP_FILTER not in uvicorn_logger.filters:
        uvicorn_logger.addFilter(_QUIET_DROP_FILTER)
    app = Starlette(routes=routes)
    app.state.modelserver = state
    return app
