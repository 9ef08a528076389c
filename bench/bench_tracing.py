"""Tracing overhead per step: the same batches with tracing off, then on (Sentry at sample rate
1.0 and OTLP export), in one process, alternating, a few repetitions.

Usage:
    python bench/bench_tracing.py [--runs 100] [--repeat 3]

A 3-step agent (perception, one model call, an action) against the bundled model server at
latency 0, concurrency 1 (as bench_core's S3), each batch on fresh inputs (no cache hits). The
traces go to a local Sentry receiver and a local OTLP receiver on loopback. Prints the median
wall time per step of each mode and their difference: the overhead of tracing per step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

STEPS = 3


def hooks_cost(runs: int) -> None:
    """The tracing work alone, without Prefect or a model: what a run's hooks cost per step,
    off (no sink: `begin_run` returns None) and on (recording, scrubbing, the Sentry
    transaction built and queued, the OTLP spans queued)."""
    from agents.observe import init_sentry, shutdown_sentry, tracing
    from agents.resources.llm import LLMCall
    from agents.settings import temporary_settings
    from agents.testing.otlp import OTLPReceiver
    from agents.testing.sentry import SentryReceiver

    call = LLMCall(
        endpoint="bundled",
        model="stalwart-test",
        output_type="Routing",
        tokens_in=90,
        tokens_out=30,
        latency_ms=1.0,
    )

    def one_run() -> None:
        trace = tracing.begin_run(
            agent="bench", tenant="t", subject="s", run_key="k", run_id="r", flow_run_id="f"
        )
        for step, layer in (("ticket", "perception"), ("route", "reasoning"), ("reply", "action")):
            tracing.step_started(trace, step, layer)
            with tracing.in_step(trace, step):
                if layer == "reasoning":
                    tracing.model_call(call, [{"role": "user", "content": "Route this"}])
                if layer == "action":
                    with tracing.action(step, "0" * 64) as span:
                        span.done("completed")
            tracing.step_ended(trace, step, layer, outcome="completed", attempts=1)
        tracing.end_run(trace, status="completed")

    def per_step_us() -> float:
        started = time.perf_counter()
        for _ in range(runs):
            one_run()
        return (time.perf_counter() - started) * 1e6 / (runs * STEPS)

    with SentryReceiver() as sentry, OTLPReceiver() as collector:
        shutdown_sentry()
        off = per_step_us()
        with temporary_settings(sentry_traces_sample_rate=1.0, otlp_endpoint=collector.endpoint):
            init_sentry(sentry.dsn, force=True)
            started = time.perf_counter()
            on = per_step_us()
            tracing.flush(30)
            total = (time.perf_counter() - started) * 1e6 / (runs * STEPS)
            shutdown_sentry()
    print(
        f"hooks alone, {runs} runs: off {off:.2f} us/step; on {on:.1f} us/step on the run's "
        f"path, {total:.1f} us/step with the sending (background thread) included"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--hooks-only", action="store_true", help="Only the hooks' own cost.")
    args = parser.parse_args()
    hooks_cost(500)
    if args.hooks_only:
        return

    tmp = tempfile.mkdtemp(prefix="bench-tracing-")
    os.environ["STALWART_DATABASE_URL"] = f"sqlite:///{tmp}/state.db"
    os.environ["STALWART_MONITOR"] = "off"
    # A loaded machine can take over a minute to start Prefect's temporary API.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")

    from agents import LLM, Agent
    from agents.modelserver import ModelServer
    from agents.observe import init_sentry, shutdown_sentry, tracing
    from agents.settings import reload_settings
    from agents.testing.otlp import OTLPReceiver
    from agents.testing.sentry import SentryReceiver
    from tests.support.models import Routing, Ticket

    agent = Agent("bench-tracing")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning(threshold=0.5)
    def route(ticket: Ticket, llm: LLM) -> Routing:
        return llm.decide(Routing, f"Route this ticket: {ticket.text}")

    @agent.action
    def reply(route: Routing) -> str:
        return route.category

    def batch(label: str) -> float:
        inputs = [{"raw": f"{label} {uuid.uuid4().hex}: refund"} for _ in range(args.runs)]
        started = time.perf_counter()
        results = agent.batch(inputs, tenant="bench", concurrency=1)
        elapsed = time.perf_counter() - started
        assert {r.status for r in results} == {"completed"}, {r.error for r in results}
        return elapsed * 1000 / (args.runs * STEPS)

    with (
        ModelServer(port=0) as server,
        SentryReceiver() as sentry,
        OTLPReceiver() as collector,
    ):
        os.environ["STALWART_MODEL_URL"] = server.url
        reload_settings()
        batch("warm-up")  # Prefect's temporary API, imports, first connections
        per_step: dict[str, list[float]] = {"off": [], "on": []}
        for _ in range(args.repeat):
            for mode in ("off", "on"):
                if mode == "on":
                    os.environ["SENTRY_DSN"] = sentry.dsn
                    os.environ["STALWART_SENTRY_TRACES_SAMPLE_RATE"] = "1.0"
                    os.environ["STALWART_OTLP_ENDPOINT"] = collector.endpoint
                else:
                    for name in ("SENTRY_DSN", "STALWART_SENTRY_TRACES_SAMPLE_RATE"):
                        os.environ.pop(name, None)
                    os.environ.pop("STALWART_OTLP_ENDPOINT", None)
                reload_settings()
                if mode == "on":
                    init_sentry(None, force=True)
                else:
                    shutdown_sentry()
                per_step[mode].append(batch(mode))
                tracing.flush(5)
        transactions = len(sentry.transactions())
        spans = len(collector.spans)
    off, on = statistics.median(per_step["off"]), statistics.median(per_step["on"])
    print(f"runs per batch: {args.runs}, steps per run: {STEPS}, repetitions: {args.repeat}")
    print(f"off: {[round(x, 2) for x in per_step['off']]} ms/step, median {off:.2f}")
    print(f"on:  {[round(x, 2) for x in per_step['on']]} ms/step, median {on:.2f}")
    print(f"tracing overhead: {on - off:+.2f} ms per step ({(on - off) / off:+.1%})")
    print(f"sent: {transactions} transactions, {spans} OTLP spans")


if __name__ == "__main__":
    main()
