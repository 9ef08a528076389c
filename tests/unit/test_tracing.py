"""Run tracing without a run: the sampling decision, the span tree a run's hooks record, and
what happens with no sink."""

from __future__ import annotations

import pytest

from agents.observe import tracing
from agents.observe.otel import samples
from agents.resources.llm import LLMCall
from agents.settings import temporary_settings

CALL = LLMCall(
    endpoint="bundled", model="m", output_type="Routing", tokens_in=7, tokens_out=3, latency_ms=2
)


def begin() -> tracing.RunTrace | None:
    return tracing.begin_run(
        agent="a", tenant="acme", subject="s", run_key="k", run_id="r", flow_run_id=None
    )


def test_without_a_sink_a_run_records_nothing_and_hooks_do_nothing() -> None:
    assert begin() is None
    tracing.step_started(None, "route", "reasoning")
    with tracing.in_step(None, "route"):
        tracing.model_call(CALL)  # no active step: nothing to record, nothing raised
        with tracing.action("send", "0" * 64) as span:
            span.done("completed")
    assert tracing.current_ids(None, "route") is None


def test_a_traced_run_nests_model_tool_and_action_spans_under_their_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_on")
    with temporary_settings(otlp_endpoint="http://127.0.0.1:9"):
        trace = begin()
    assert trace is not None and trace.to_otel and not trace.to_sentry
    tracing.step_started(trace, "route", "reasoning")
    tracing.step_started(trace, "send", "action")
    with tracing.in_step(trace, "route", rung="fallback_model"):
        tracing.model_call(CALL)
        tracing.tool_call("lookup", status="error", latency_ms=1.0, turn=1)
    with (
        tracing.in_step(trace, "send"),
        pytest.raises(ConnectionError),
        tracing.action("send", "f" * 64),
    ):
        raise ConnectionError("refused")
    tracing.step_ended(trace, "route", "reasoning", outcome="completed", attempts=1)
    tracing.step_ended(trace, "send", "action", outcome="failed", error="ConnectionError")
    tracing.step_ended(trace, "learn", "learning", outcome="skipped")
    route, send = trace.steps["route"], trace.steps["send"]
    chat, tool, action = (s for s in trace.spans if s.parent_id in (route.span_id, send.span_id))
    assert chat.op == "gen_ai.chat" and chat.parent_id == route.span_id
    assert chat.attributes["stalwart.rung"] == "fallback_model"
    assert chat.attributes["gen_ai.usage.input_tokens"] == 7
    assert "gen_ai.input.messages" not in chat.attributes  # content off by default
    assert tool.op == "gen_ai.execute_tool" and tool.status == "error"
    assert action.parent_id == send.span_id and action.status == "error"
    assert action.attributes["stalwart.action_status"] == "failed"
    assert send.status == "error" and trace.steps["learn"].attributes["stalwart.outcome"] == (
        "skipped"
    )
    assert tracing.current_ids(trace, "send") == (trace.trace_id, send.span_id)
    assert tracing.render_tree(trace).splitlines()[0].startswith("invoke_agent a")


def test_the_otel_sampler_decides_on_the_trace_id(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    assert samples("0" * 32) is False
    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "parentbased_traceidratio")
    monkeypatch.setenv("OTEL_TRACES_SAMPLER_ARG", "0.5")
    low, high = "0" * 31 + "1", "f" * 32
    assert samples(low) is True and samples(high) is False
    assert samples(low) is True  # the same trace id, the same decision
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert samples(low) is False
