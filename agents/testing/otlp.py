"""A fake OpenTelemetry collector for tests: receives OTLP/HTTP trace exports and keeps the spans.

This module owns `OTLPReceiver`, a tiny ASGI app on 127.0.0.1 (a `LoopbackServer`: ephemeral
port, background thread) that accepts `POST /v1/traces` with a protobuf
`ExportTraceServiceRequest` (gzip or deflate bodies too), decodes it with `opentelemetry-proto`
and stores every span as a `ReceivedSpan`; it answers with an empty
`ExportTraceServiceResponse`, as a collector does.
Nothing leaves the machine.

Example:
    >>> with OTLPReceiver() as receiver:  # doctest: +SKIP
    ...     receiver.endpoint.startswith("http://127.0.0.1:")
    True
"""

from __future__ import annotations

import gzip
import threading
import time
import zlib
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from agents.testing.loopback import LoopbackServer

__all__ = ["OTLPReceiver", "ReceivedSpan", "decode_request"]


@dataclass(frozen=True)
class ReceivedSpan:
    """One span as it arrived: ids in hex, times in nanoseconds, attributes as Python values."""

    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: int
    start_ns: int
    end_ns: int
    status_code: int
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""


def _value(any_value: Any) -> Any:
    kind = any_value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _value(kv.value) for kv in any_value.kvlist_value.values}
    return getattr(any_value, kind)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs}


def decode_request(body: bytes) -> list[ReceivedSpan]:
    """The spans of one serialized `ExportTraceServiceRequest`.

    Raises:
        google.protobuf.message.DecodeError: When the body is not such a message.

    Example:
        >>> decode_request(ExportTraceServiceRequest().SerializeToString())
        []
    """
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans: list[ReceivedSpan] = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex() or None,
                        name=span.name,
                        kind=span.kind,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                        status_code=span.status.code,
                        attributes=_attributes(span.attributes),
                        resource=resource,
                        scope=scope_spans.scope.name,
                    )
                )
    return spans


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        return zlib.decompress(body)
    raise ValueError(f"unsupported content encoding {encoding!r}")


class OTLPReceiver:
    """An in-process OTLP/HTTP trace endpoint that records every span it receives.

    Served by a `LoopbackServer` (uvicorn in a daemon thread, ephemeral loopback port).

    Attributes:
        spans: Received spans, in arrival order.
        raw_bodies: Decompressed request bodies (search them for leaked secrets).
        headers: The headers of each request, in arrival order.

    Example:
        >>> OTLPReceiver().wait_for(0, timeout=0.1)
        []
    """

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.raw_bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self._cond = threading.Condition()
        self._server = LoopbackServer(self._app, label="The OTLP receiver")

    def _app(self) -> Starlette:
        async def traces(request: Request) -> Response:
            try:
                body = _decompress(
                    await request.body(), request.headers.get("content-encoding", "")
                )
                spans = decode_request(body)
            except (ValueError, OSError, EOFError, zlib.error, DecodeError) as exc:
                return PlainTextResponse(f"bad request: {type(exc).__name__}", status_code=400)
            self._record(body, spans, dict(request.headers.items()))
            response = ExportTraceServiceResponse().SerializeToString()
            return Response(response, media_type="application/x-protobuf")

        return Starlette(routes=[Route("/v1/traces", traces, methods=["POST"])])

    def start(self) -> OTLPReceiver:
        """Serve on 127.0.0.1, an ephemeral port, in a daemon thread (idempotent)."""
        if not self._server.running:
            self._server.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent)."""
        self._server.stop()

    def __enter__(self) -> OTLPReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def endpoint(self) -> str:
        """The base URL to give as `STALWART_OTLP_ENDPOINT` (spans go to `/v1/traces`).

        Raises:
            RuntimeError: When the receiver is not started.
        """
        if not self._server.running:
            raise RuntimeError("OTLPReceiver is not started")
        return self._server.url.rstrip("/")

    def _record(self, body: bytes, spans: list[ReceivedSpan], headers: dict[str, str]) -> None:
        with self._cond:
            self.raw_bodies.append(body)
            self.spans.extend(spans)
            self.headers.append(headers)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = 5.0) -> list[ReceivedSpan]:
        """Wait until at least `n` spans arrived or `timeout` seconds passed; return them all."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                remaining = deadline - time.monotonic()
                if len(self.spans) >= n or remaining <= 0:
                    return list(self.spans)
                self._cond.wait(timeout=min(remaining, 0.05))

    def raw_text(self) -> str:
        """All bodies as text (for `assert secret not in receiver.raw_text()`)."""
        with self._cond:
            return b"\n".join(self.raw_bodies).decode("utf-8", errors="replace")
