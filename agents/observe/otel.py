"""OpenTelemetry export: a traced run's spans sent over OTLP/HTTP with GenAI attributes.

Imported only when `STALWART_OTLP_ENDPOINT` is set (`agents.observe.tracing` asks it, so an
untraced process never loads the SDK). `export_trace` turns the run's internal spans
(`agents.observe.tracing.Span`) into OpenTelemetry SDK `ReadableSpan`s with the run's own trace
and span ids and times, and hands them to a `BatchSpanProcessor` feeding an `OTLPSpanExporter`
(protobuf over HTTP): export happens in the processor's thread, never on the run's path.

The standard variables apply: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (which wins over
`STALWART_OTLP_ENDPOINT`), `OTEL_EXPORTER_OTLP_HEADERS`, `..._TIMEOUT`, `..._COMPRESSION`,
`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`, and
`OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (`always_on`, `always_off`, `traceidratio` and
their `parentbased_` forms: a run has no parent, so they decide on its trace id).
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import TraceIdRatioBased
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agents.settings import get_current_settings

if TYPE_CHECKING:
    from agents.observe.tracing import RunTrace, Span

__all__ = ["export_trace", "flush", "samples", "shutdown"]

_SCOPE = InstrumentationScope("stalwart")
_KIND = {"gen_ai.chat": SpanKind.CLIENT}
_STATUS = {
    "ok": Status(StatusCode.UNSET),
    "cancelled": Status(StatusCode.UNSET),
    "error": Status(StatusCode.ERROR),
}

_lock = threading.Lock()
_processor: BatchSpanProcessor | None = None
_processor_endpoint: str | None = None
_resource: Resource | None = None


def _disabled() -> bool:
    return os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true"


def samples(trace_id: str) -> bool:
    """Whether the configured OpenTelemetry sampler takes the run with `trace_id` (32 hex).

    Example:
        >>> samples("0" * 31 + "1")  # OTEL_TRACES_SAMPLER unset: always_on
        True
    """
    if _disabled():
        return False
    name = os.environ.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    name = name.removeprefix("parentbased_")
    if name == "always_off":
        return False
    if name != "traceidratio":
        return True
    try:
        rate = float(os.environ.get("OTEL_TRACES_SAMPLER_ARG", "1.0"))
    except ValueError:
        rate = 1.0
    decision = TraceIdRatioBased(min(max(rate, 0.0), 1.0)).should_sample(
        None, int(trace_id, 16), "invoke_agent"
    )
    return bool(decision.decision.is_sampled())


def _traces_url(endpoint: str) -> str:
    endpoint = endpoint.rstrip("/")
    return endpoint if endpoint.endswith("/v1/traces") else endpoint + "/v1/traces"


def _sink(endpoint: str) -> tuple[BatchSpanProcessor, Resource]:
    """The processor exporting to `endpoint` (rebuilt when the endpoint changes)."""
    global _processor, _processor_endpoint, _resource
    with _lock:
        if _processor is None or _processor_endpoint != endpoint or _resource is None:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            if _processor is not None:
                _processor.shutdown()
            own = None if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") else endpoint
            exporter = OTLPSpanExporter(endpoint=_traces_url(own) if own else None)
            _processor = BatchSpanProcessor(exporter)
            _processor_endpoint = endpoint
            # OTEL_SERVICE_NAME and OTEL_RESOURCE_ATTRIBUTES win over the default name.
            _resource = Resource.create({"service.name": "stalwart"})
        return _processor, _resource


def _context(trace_id: int, span_id: str) -> SpanContext:
    return SpanContext(
        trace_id=trace_id,
        span_id=int(span_id, 16),
        is_remote=False,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
    )


def _attributes(span: Span) -> dict[str, Any]:
    """OpenTelemetry attribute values: str, bool, int, float (anything else as text)."""
    out: dict[str, Any] = {}
    for name, value in span.attributes.items():
        out[name] = value if isinstance(value, str | bool | int | float) else str(value)
    return out


def export_trace(trace: RunTrace) -> None:
    """Queue a finished run's spans for export to the OTLP endpoint (no-op without one)."""
    endpoint = get_current_settings().otlp_endpoint
    if not endpoint or _disabled():
        return
    processor, resource = _sink(endpoint)
    trace_id = int(trace.trace_id, 16)
    for span in trace.all_spans():
        readable = ReadableSpan(
            name=span.name,
            context=_context(trace_id, span.span_id),
            parent=_context(trace_id, span.parent_id) if span.parent_id else None,
            resource=resource,
            attributes=_attributes(span),
            kind=_KIND.get(span.op, SpanKind.INTERNAL),
            status=_STATUS[span.status],
            start_time=int(span.start * 1e9),
            end_time=int((span.end or span.start) * 1e9),
            instrumentation_scope=_SCOPE,
        )
        processor.on_end(readable)


def flush(timeout_millis: int = 5_000) -> bool:
    """Export what is queued now; True when everything went out in time.

    Example:
        >>> flush()  # nothing configured
        True
    """
    processor = _processor
    return True if processor is None else bool(processor.force_flush(timeout_millis))


def shutdown() -> None:
    """Export what is queued and stop the export thread (at exit, or to reconfigure).

    Example:
        >>> shutdown()
    """
    global _processor, _processor_endpoint
    with _lock:
        processor, _processor, _processor_endpoint = _processor, None, None
    if processor is not None:
        processor.shutdown()


atexit.register(shutdown)
