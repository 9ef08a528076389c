"""The Prefect process worker's RSS over many trivial flow runs: `prefect worker start` beside
`stalwart worker` (the same worker, reclaiming its memory), with no Stalwart code in the flows.

    python bench/faults/prefect_worker_rss.py [--runs 100] [--wave 20] [--reclaim-every 10]

Scenario 9 (soak) saw the two workers of the W1 stack grow by tens of MB per wave. This script
takes Stalwart out of the picture: a `prefect server` on PostgreSQL (loopback, a fresh database;
`--postgres`, as in W1: on SQLite the server answered 503 under this load), two work pools
with one worker each (one plain, one `stalwart worker --reclaim-every S`), and a deployment per
pool of a flow that maps a trivial task over 20 numbers. Waves of `--wave` flow runs go to each
pool at once; after each wave it prints both workers' RSS and glibc `[heap]` RSS (from `/proc`).
The plain worker grows about linearly with flow runs: the growth is Prefect's (dead clients
waiting for a full garbage collection, see `agents.worker`); the other worker shows what
collecting and trimming every S seconds leaves.

The figures of 2026-12-05 are in the README (*9: soak*).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from agents.testing.prefect_server import PrefectServer, Worker
from bench.faults.s9_soak import rss_mb

FLOW = """
from prefect import flow, task


@task
def double(i: int) -> int:
    return i * 2


@flow(log_prints=True)
def trivial(n: int = 20) -> int:
    total = sum(double.map(range(n)).result())
    print("total", total)
    return total
"""


def memory_mb(pid: int) -> tuple[int, int]:
    """(RSS, RSS of the glibc `[heap]` mapping) of a process, in MB.

    Example:
        >>> import os
        >>> memory_mb(os.getpid())[0] > 0
        True
    """
    heap_kb, mapping = 0, ""
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                fields = line.split()
                mapping = fields[5] if len(fields) > 5 else ""
            elif line.startswith("Rss:") and mapping == "[heap]":
                heap_kb += int(line.split()[1])
    return round(rss_mb(pid)), heap_kb // 1024


async def run_wave(deployments: list[str], size: int, timeout_s: float) -> int:
    """Start `size` flow runs of each deployment; wait until all are final; return completed."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        ids = []
        for name in deployments:
            deployment = await client.read_deployment_by_name(name)
            for _ in range(size):
                ids.append((await client.create_flow_run_from_deployment(deployment.id)).id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            runs = [await client.read_flow_run(i) for i in ids]
            if all(r.state is not None and r.state.is_final() for r in runs):
                return sum(1 for r in runs if r.state is not None and r.state.is_completed())
            await asyncio.sleep(3)
    raise TimeoutError(f"a wave of {len(ids)} flow runs did not finish in {timeout_s:g} s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=100, help="flow runs per worker in all")
    parser.add_argument("--wave", type=int, default=20, help="flow runs per worker per wave")
    parser.add_argument(
        "--reclaim-every", type=float, default=10.0, help="stalwart worker's reclaim period"
    )
    parser.add_argument("--wave-timeout", type=float, default=900.0)
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="stalwart-worker-rss-") as project,
        PrefectServer(postgres=args.postgres) as server,
    ):
        Path(project, "trivial.py").write_text(FLOW)
        env = server.client_env()
        for pool in ("plain", "reclaiming"):
            server.cli("work-pool", "create", pool, "--type", "process")
        deploy = (
            "from prefect import flow\n"
            "f = flow.from_source(source='.', entrypoint='trivial.py:trivial')\n"
            "for pool in ('plain', 'reclaiming'):\n"
            "    f.deploy(name=pool, work_pool_name=pool, build=False, push=False,\n"
            "             ignore_warnings=True)\n"
        )
        subprocess.run(
            [sys.executable, "-c", deploy], env=env, cwd=project, check=True, capture_output=True
        )
        os.environ.update(env)  # the client in this process talks to this server
        plain = Worker(server, pool="plain", name="plain", limit=4).start()
        reclaiming = Worker(
            server,
            pool="reclaiming",
            name="reclaiming",
            limit=4,
            reclaim_every_s=args.reclaim_every,
        ).start()
        try:
            time.sleep(20)
            print(f"{'flow runs':>9} | plain RSS / heap MB | reclaiming RSS / heap MB | completed")

            def row(done: int, completed: str) -> tuple[int, int]:
                """Print one line of both workers' memory; return their RSS."""
                p, t = memory_mb(plain.pid), memory_mb(reclaiming.pid)
                print(
                    f"{done:>9} | {p[0]:>8} / {p[1]:<8} | {t[0]:>13} / {t[1]:<8} | {completed}",
                    flush=True,
                )
                return p[0], t[0]

            first = last = row(0, "")
            done = 0
            while done < args.runs:
                completed = asyncio.run(
                    run_wave(["trivial/plain", "trivial/reclaiming"], args.wave, args.wave_timeout)
                )
                done += args.wave
                time.sleep(args.reclaim_every + 2)  # let a reclaim happen before looking
                last = row(done, f"{completed}/{2 * args.wave}")
            per_run = [(b - a) / max(done, 1) for a, b in zip(first, last, strict=True)]
            print(f"growth per flow run: plain {per_run[0]:.2f} MB, reclaiming {per_run[1]:.2f} MB")
        finally:
            plain.stop()
            reclaiming.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
