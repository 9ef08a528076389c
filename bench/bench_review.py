"""Durable review benchmark: does a batch with inputs that need a person cost more than one
without? And what does waiting hold?

Usage:
    python bench/bench_review.py [--runs 200] [--share 0.1] [--rounds 2] [--latency-ms 50]

Each measured batch runs in its own process (a fresh ephemeral Prefect API and SQLite state
database, an untimed warm-up batch of 2 first), alternating "none unsure" and "`share` unsure"
so neither always goes first. The model server (this process) answers "unsure" tickets with
confidence 0.3, the others with 0.95; the agent's reasoning step has `threshold=0.8` and
`review=Review(timeout="3d")`, so unsure tickets stop at the review.

Printed per batch: wall time on the client clock, runs awaiting review, reviews pending at
once, and what is held after the batch returns: child processes of the batch's process and
flow runs of the agent not in a final state (Running or Paused). Then the same process answers
every review (approve) and times `agent.resume`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MARKER = "BENCH_RESULT "
RULES = [
    {"when": {"contains": ["unsure"]}, "set": {"confidence": 0.3}},
    {"set": {"category": "technical", "confidence": 0.95}},
]


def child(runs: int, share: float, concurrency: int) -> dict[str, Any]:
    """One measured batch, its reviews answered, then `resume` (in this process)."""
    import asyncio

    from pydantic import BaseModel

    from agents import LLM, Agent, Decision, Review, reviews
    from agents.testing.prefect_server import descendants

    class Ticket(BaseModel):
        id: int
        text: str

    class Routing(Decision):
        category: str

    agent = Agent("bench-review")

    @agent.perception
    async def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(id=int(raw["id"]), text=str(raw["text"]))

    @agent.reasoning(threshold=0.8, review=Review(timeout="3d"))
    async def route(ticket: Ticket, llm: LLM) -> Routing:
        return await llm.adecide(Routing, f"Route ticket {ticket.id}: {ticket.text}")

    @agent.action
    async def send(route: Routing, ticket: Ticket, idempotency_key: str) -> str:
        return route.category

    @agent.learning
    async def remember(send: str, ticket: Ticket) -> None:
        return None

    every = round(1 / share) if share > 0 else 0

    def items(count: int, prefix: str) -> list[dict[str, Any]]:
        return [
            {
                "raw": {"id": i, "text": "unsure" if every and i % every == every - 1 else "ok"},
                "subject": f"{prefix}-{i}",
            }
            for i in range(count)
        ]

    agent.batch(items(2, "warm"), tenant="warm", concurrency=2)  # start-up, untimed
    started = time.perf_counter()
    results = agent.batch(items(runs, "b"), tenant="bench", concurrency=concurrency)
    wall = time.perf_counter() - started
    pending = reviews.pending(tenant="bench")

    async def unfinished() -> int:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import (
            FlowRunFilter,
            FlowRunFilterState,
            FlowRunFilterStateType,
        )
        from prefect.client.schemas.objects import StateType

        live = [StateType.RUNNING, StateType.PAUSED, StateType.PENDING, StateType.SCHEDULED]
        async with get_client() as client:
            found = await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(type=FlowRunFilterStateType(any_=live))
                )
            )
        return len(found)

    held_runs = asyncio.run(unfinished())
    children = [p for p in descendants(os.getpid()) if _is_worker_like(p)]
    for review in pending:
        reviews.answer(review.id, tenant="bench", verdict="approve", reviewer="bench")
    started = time.perf_counter()
    resumed = agent.resume(tenant="bench", concurrency=concurrency)
    resume_wall = time.perf_counter() - started
    return {
        "share": share,
        "runs": runs,
        "wall_s": wall,
        "runs_per_s": runs / wall,
        "awaiting": sum(r.status == "awaiting_review" for r in results),
        "pending_reviews": len(pending),
        "flow_runs_held": held_runs,
        "processes_held": len(children),
        "resumed": len(resumed),
        "resume_s": resume_wall,
        "resumed_completed": sum(r.status == "completed" for r in resumed),
    }


def _is_worker_like(pid: int) -> bool:
    """A child process other than Prefect's ephemeral API server (which serves every run)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return False
    return "uvicorn" not in cmdline and "prefect.server" not in cmdline


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--share", type=float, default=0.1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--latency-ms", type=float, default=50)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        spec = json.loads(args.child)
        print(MARKER + json.dumps(child(**spec)), flush=True)
        return

    from agents.modelserver import ModelServer
    from agents.modelserver.faults import Faults

    rows: list[dict[str, Any]] = []
    with ModelServer(port=0, rules=RULES, faults=Faults(latency_ms=args.latency_ms)) as server:
        for round_ in range(args.rounds):
            order = [0.0, args.share] if round_ % 2 == 0 else [args.share, 0.0]
            for share in order:
                rows.append(_run_child(server.url, args.runs, share, args.concurrency))
                print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.runs} runs, C={args.concurrency}, model latency {args.latency_ms:g} ms")
    header = "share unsure | wall s (client) | runs/s | awaiting | pending | flow runs held"
    print(header + " | processes held | resume s")
    for r in rows:
        print(
            f"{r['share']:>12.0%} | {r['wall_s']:>15.2f} | {r['runs_per_s']:>6.1f} | "
            f"{r['awaiting']:>8} | {r['pending_reviews']:>7} | {r['flow_runs_held']:>14} | "
            f"{r['processes_held']:>14} | {r['resume_s']:.2f}"
        )
    none = statistics.median(r["wall_s"] for r in rows if r["share"] == 0)
    some = statistics.median(r["wall_s"] for r in rows if r["share"] > 0)
    print(f"\nmedian wall, {args.share:.0%} unsure / none unsure: {some / none:.2f}x")


def _run_child(model_url: str, runs: int, share: float, concurrency: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-review-") as work:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("PREFECT_", "STALWART_")) and k != "SENTRY_DSN"
        }
        env.update(
            STALWART_DATABASE_URL=f"sqlite:///{work}/state.db",
            STALWART_MODEL_URL=model_url,
            STALWART_API_KEY="sk-bench-not-a-real-key-000000000000000000",
            STALWART_DATA_DIR=f"{work}/data",
            STALWART_TENANT_CONCURRENCY=str(concurrency),
            PREFECT_HOME=f"{work}/prefect",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        )
        spec = json.dumps({"runs": runs, "share": share, "concurrency": concurrency})
        done = subprocess.run(
            [sys.executable, __file__, "--child", spec],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
            cwd=Path(__file__).resolve().parents[1],
        )
    for line in done.stdout.splitlines():
        if line.startswith(MARKER):
            return dict(json.loads(line[len(MARKER) :]))
    raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    main()
