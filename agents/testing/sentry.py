"""A fake Sentry server for tests: receives what `sentry_sdk` sends and keeps it for assertions.

This module owns `SentryReceiver`, a tiny HTTP server on 127.0.0.1 (ephemeral port, background
thread) that accepts envelope POSTs at `/api/<project_id>/envelope/` and legacy event POSTs at
`/api/<project_id>/store/`, decodes gzip, deflate and (when the `brotli` module is installed) br
bodies, parses envelopes, and stores them. Nothing leaves the machine.

Example:
    >>> import sentry_sdk
    >>> with SentryReceiver() as receiver:  # doctest: +SKIP
    ...     sentry_sdk.init(dsn=receiver.dsn)
    ...     sentry_sdk.capture_message("hello")
    ...     sentry_sdk.flush()
    ...     receiver.wait_for(1)[0]["message"]
    'hello'
"""

from __future__ import annotations

import gzip
import json
import re
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

try:  # pragma: no cover - optional dependency
    import brotli as _brotli  # type: ignore[import-not-found, unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _brotli = None

__all__ = ["Envelope", "EnvelopeItem", "SentryReceiver", "parse_envelope"]

_PATH = re.compile(r"^/api/(?P<project>[^/]+)/(?P<kind>envelope|store)/?$")


@dataclass(frozen=True)
class EnvelopeItem:
    """One item of an envelope: its header, raw payload and, if it is JSON, the decoded payload."""

    headers: dict[str, Any]
    payload: bytes
    json: Any = None

    @property
    def type(self) -> str | None:
        """The item type (`event`, `transaction`, `session`, `client_report`, ...)."""
        value = self.headers.get("type")
        return value if isinstance(value, str) else None


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: its header and its items, in order."""

    headers: dict[str, Any]
    items: list[EnvelopeItem] = field(default_factory=list)
    project_id: str = ""


def _decode_json(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None


def parse_envelope(body: bytes, project_id: str = "") -> Envelope:
    """Parse a Sentry envelope: a header line, then item header + payload pairs.

    An item's payload is `length` bytes when its header gives a length, else the rest of the line.

    Args:
        body: The decompressed request body.
        project_id: The project id taken from the request path.

    Returns:
        The parsed envelope; JSON payloads are decoded into `EnvelopeItem.json`.

    Raises:
        ValueError: When the envelope header is not a JSON object.

    Example:
        >>> env = parse_envelope(b'{"event_id":"x"}\\n{"type":"event"}\\n{"message":"hi"}\\n')
        >>> env.items[0].type, env.items[0].json["message"]
        ('event', 'hi')
    """
    newline = body.find(b"\n")
    header_line = body if newline < 0 else body[:newline]
    headers = json.loads(header_line or b"{}")
    if not isinstance(headers, dict):
        raise ValueError("envelope header is not a JSON object")
    items: list[EnvelopeItem] = []
    pos = len(body) if newline < 0 else newline + 1
    while pos < len(body):
        end = body.find(b"\n", pos)
        line = body[pos:] if end < 0 else body[pos:end]
        pos = len(body) if end < 0 else end + 1
        if not line.strip():
            continue
        item_headers = json.loads(line)
        if not isinstance(item_headers, dict):
            raise ValueError("envelope item header is not a JSON object")
        length = item_headers.get("length")
        if isinstance(length, int) and length >= 0:
            payload = body[pos : pos + length]
            pos += length
            if body[pos : pos + 1] == b"\n":
                pos += 1
        else:
            end = body.find(b"\n", pos)
            payload = body[pos:] if end < 0 else body[pos:end]
            pos = len(body) if end < 0 else end + 1
        items.append(EnvelopeItem(item_headers, payload, _decode_json(payload)))
    return Envelope(headers, items, project_id)


def _decompress(body: bytes, encoding: str) -> bytes:
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding in ("gzip", "x-gzip"):
        return gzip.decompress(body)
    if encoding == "deflate":
        try:
            return zlib.decompress(body)
        except zlib.error:
            return zlib.decompress(body, -zlib.MAX_WBITS)
    if encoding == "br" and _brotli is not None:
        return bytes(_brotli.decompress(body))
    raise ValueError(f"unsupported content encoding {encoding!r}")


def _v1_span(span: dict[str, Any]) -> dict[str, Any]:
    """A span of format v2 (a `span` envelope item) in the transaction's span shape."""
    attributes = {
        name: value.get("value") if isinstance(value, dict) else value
        for name, value in (span.get("attributes") or {}).items()
    }
    return {
        "trace_id": span.get("trace_id"),
        "span_id": span.get("span_id"),
        "parent_span_id": span.get("parent_span_id"),
        "op": attributes.pop("sentry.op", None),
        "description": span.get("name"),
        "status": span.get("status"),
        "start_timestamp": span.get("start_timestamp"),
        "timestamp": span.get("end_timestamp"),
        "data": attributes,
    }


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Stay quiet: tests read the receiver's state, not its access log."""

    def _reply(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        match = _PATH.match(self.path.split("?", 1)[0])
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length > 0 else b""
        if match is None:
            self._reply(404, {"detail": "unknown path"})
            return
        try:
            body = _decompress(raw, self.headers.get("Content-Encoding", ""))
            project = match.group("project")
            if match.group("kind") == "envelope":
                envelope = parse_envelope(body, project)
            else:
                event = json.loads(body)
                item = EnvelopeItem({"type": "event"}, body, event)
                event_id = event.get("event_id") if isinstance(event, dict) else None
                envelope = Envelope({"event_id": event_id}, [item], project)
        except (ValueError, OSError, EOFError, zlib.error) as exc:
            self._reply(400, {"detail": f"bad request: {type(exc).__name__}"})
            return
        self.server.receiver._record(body, envelope)
        self._reply(200, {"id": envelope.headers.get("event_id")})


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: SentryReceiver


class SentryReceiver:
    """An in-process Sentry ingestion endpoint that records everything it receives.

    Attributes:
        envelopes: Parsed envelopes, in arrival order.
        raw_bodies: Decompressed request bodies, in arrival order (search them for leaked secrets).

    Example:
        >>> with SentryReceiver() as receiver:
        ...     receiver.dsn.startswith("http://public@127.0.0.1:")
        True
    """

    def __init__(self, project_id: int = 1) -> None:
        self.project_id = project_id
        self.envelopes: list[Envelope] = []
        self.raw_bodies: list[bytes] = []
        self._cond = threading.Condition()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> SentryReceiver:
        """Bind 127.0.0.1 on an ephemeral port and serve in a daemon thread (idempotent).

        Example:
            >>> receiver = SentryReceiver().start()
            >>> receiver.port > 0
            True
            >>> receiver.stop()
        """
        if self._server is not None:
            return self
        server = _Server(("127.0.0.1", 0), _Handler)
        server.receiver = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="sentry-receiver",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release the port (idempotent).

        Example:
            >>> SentryReceiver().start().stop()
        """
        server, thread = self._server, self._thread
        self._server, self._thread = None, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join(timeout=5.0)

    def __enter__(self) -> SentryReceiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the receiver listens on.

        Raises:
            RuntimeError: When the receiver is not started.
        """
        if self._server is None:
            raise RuntimeError("SentryReceiver is not started")
        return int(self._server.server_address[1])

    @property
    def dsn(self) -> str:
        """A DSN pointing `sentry_sdk` at this receiver, e.g. `http://public@127.0.0.1:PORT/1`."""
        return f"http://public@127.0.0.1:{self.port}/{self.project_id}"

    # -- recorded data ---------------------------------------------------------------------------

    def _record(self, body: bytes, envelope: Envelope) -> None:
        with self._cond:
            self.raw_bodies.append(body)
            self.envelopes.append(envelope)
            self._cond.notify_all()

    def _events_locked(self) -> list[dict[str, Any]]:
        return [
            item.json
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event" and isinstance(item.json, dict)
        ]

    def events(self) -> list[dict[str, Any]]:
        """The payloads of every received item of type `event`, in arrival order.

        Example:
            >>> SentryReceiver().events()
            []
        """
        with self._cond:
            return self._events_locked()

    def transactions(self) -> list[dict[str, Any]]:
        """Every received transaction, with all its spans under `spans`, in arrival order.

        Recent SDKs send a transaction's `gen_ai.*` spans in a separate `span` item of the same
        envelope (span format v2: `name`, `attributes` of `{value, type}`, float timestamps);
        they are put back among the transaction's spans in its own shape (`op`, `description`,
        `data`, `status`: `ok` or `error`), so a test reads one list whatever the SDK version.

        Example:
            >>> SentryReceiver().transactions()
            []
        """
        found: list[dict[str, Any]] = []
        with self._cond:
            for envelope in self.envelopes:
                transaction: dict[str, Any] | None = None
                extra: list[dict[str, Any]] = []
                for item in envelope.items:
                    if item.type == "transaction" and isinstance(item.json, dict):
                        transaction = dict(item.json)
                    elif item.type == "span" and isinstance(item.json, dict):
                        extra += [_v1_span(s) for s in item.json.get("items", [])]
                if transaction is not None:
                    transaction["spans"] = [*transaction.get("spans", []), *extra]
                    found.append(transaction)
        return found

    def raw_text(self) -> str:
        """All decompressed bodies joined as text (for `assert secret not in receiver.raw_text()`).

        Example:
            >>> SentryReceiver().raw_text()
            ''
        """
        with self._cond:
            return b"\n".join(self.raw_bodies).decode("utf-8", errors="replace")

    def wait_for(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least `n` events arrived or `timeout` seconds passed; return the events.

        The list may hold fewer than `n` events when the timeout expires: assert on its length.

        Example:
            >>> SentryReceiver().wait_for(0, timeout=0.1)
            []
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                events = self._events_locked()
                remaining = deadline - time.monotonic()
                if len(events) >= n or remaining <= 0:
                    return events
                self._cond.wait(timeout=min(remaining, 0.05))

    def clear(self) -> None:
        """Forget everything received so far.

        Example:
            >>> receiver = SentryReceiver()
            >>> receiver.clear()
            >>> receiver.envelopes
            []
        """
        with self._cond:
            self.envelopes.clear()
            self.raw_bodies.clear()
