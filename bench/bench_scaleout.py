"""Scale-out benchmark: agent runs/s through deployments with 1 and with 2 process workers.

Usage:
    python bench/bench_scaleout.py [--flow-runs 8] [--tickets 25] [--latency 0.05]

One real `prefect server` on the local PostgreSQL, the state database on PostgreSQL, one
bundled model server (HTTP, `--latency` seconds per answer) shared by every flow run, and the
ticket-triage deployment from prefect.yaml. For each worker count, `--flow-runs` flow runs of
`--tickets` fresh tickets each are triggered with `run_deployment` at once; the figure is agent
runs completed per second of wall time, from the first trigger to the last final state (worker
start-up excluded, flow-run process start-up included). All on this machine's cores: the ratio
shows what a second worker buys when it shares them, not what a second machine would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.modelserver import ModelServer  # noqa: E402
from agents.testing.prefect_server import PrefectServer, Worker  # noqa: E402

PG = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _tickets(count: int, batch: int, salt: str) -> list[dict[str, Any]]:
    lines = (ROOT / "flows/data/tickets.jsonl").read_text().splitlines()
    items = []
    for i in range(count):
        raw = json.loads(lines[(batch * count + i) % len(lines)])
        ticket = {k: v for k, v in raw.get("raw", raw).items() if k != "expected"}
        ticket["id"] = f"{ticket.get('id', i)}-{salt}-{batch}-{i}"  # fresh: no cache hits
        items.append({"raw": ticket, "subject": ticket.get("customer", f"c{i}")})
    return items


async def _trigger_all(flow_runs: int, tickets: int, salt: str) -> tuple[float, list[Any]]:
    from prefect.deployments import run_deployment

    started = time.perf_counter()
    states = await asyncio.gather(
        *(
            run_deployment(
                "ticket-triage/ticket-triage",
                parameters={
                    "inputs": _tickets(tickets, b, salt),
                    "tenant": f"bench-{salt}",
                    "concurrency": 16,
                },
                timeout=900,
                poll_interval=0.5,
            )
            for b in range(flow_runs)
        )
    )
    return time.perf_counter() - started, list(states)


def _admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG, autocommit=True) as conn:
        conn.execute(sql.encode())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flow-runs", type=int, default=8)
    parser.add_argument("--tickets", type=int, default=25)
    parser.add_argument("--latency", type=float, default=0.05)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()

    state_db = f"stalwart_bench_{uuid.uuid4().hex[:8]}"
    _admin(f'CREATE DATABASE "{state_db}"')
    state_url = PG.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    state_url = f"{state_url}/{state_db}"
    from agents.store import upgrade

    upgrade(state_url)
    results: list[tuple[int, int, float, int]] = []
    try:
        with (
            ModelServer(port=0) as model,
            PrefectServer(postgres=PG) as server,
        ):
            model.faults.update(latency_ms=args.latency * 1000)
            os.environ["PREFECT_API_URL"] = server.api_url
            server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
            server.cli("deploy", "--name", "ticket-triage", cwd=ROOT, timeout=300)
            env = {
                "STALWART_PROJECT_DIR": str(ROOT),
                "STALWART_DATABASE_URL": state_url,
                "STALWART_MODEL_URL": model.url,
                "PYTHONPATH": str(ROOT),
            }
            for count in (int(n) for n in args.workers.split(",")):
                workers = [
                    Worker(server, pool="stalwart", cwd=ROOT, env=env, name=f"bench-{count}-{i}")
                    for i in range(count)
                ]
                for worker in workers:
                    worker.start()
                time.sleep(3)  # let the workers register and start polling
                try:
                    salt = uuid.uuid4().hex[:6]
                    wall, states = asyncio.run(_trigger_all(args.flow_runs, args.tickets, salt))
                finally:
                    for worker in workers:
                        worker.stop()
                completed = sum(1 for s in states if s.state.is_completed())
                for run in states:
                    if not run.state.is_completed():
                        print(f"flow run {run.name}: {run.state.type.value} {run.state.message}")
                        print("\n".join(w.log_tail(15) for w in workers))
                runs = completed * args.tickets
                results.append((count, runs, wall, args.flow_runs - completed))
                print(f"{count} worker(s): {runs} agent runs in {wall:.1f} s", flush=True)
    finally:
        _admin(f'DROP DATABASE IF EXISTS "{state_db}" WITH (FORCE)')

    print()
    print("| workers | agent runs | wall s | runs/s | failed flow runs | vs 1 worker |")
    print("|---|---|---|---|---|---|")
    base = results[0][1] / results[0][2] if results else 0.0
    for count, runs, wall, failed in results:
        rate = runs / wall
        print(f"| {count} | {runs} | {wall:.1f} | {rate:.1f} | {failed} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
