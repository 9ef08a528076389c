"""Take the README's Prefect UI screenshots with headless Chromium, offline, on loopback.

Starts a real `prefect server` (database on the local PostgreSQL, SQLite if it is down),
deploys `prefect.yaml`, starts one process worker, triggers the ticket-triage deployment with
`run_deployment`, then shoots the deployments page, the finished run (its task runs named
`<agent>.<step>[<subject>]`) and its decisions artifact:

    python docs/screenshots.py            # writes docs/img/prefect-*.png

Needs Debian's `chromium` (`apt-get install chromium`). Everything it starts is stopped by PID.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agents.testing.prefect_server import PrefectServer, Worker  # noqa: E402

OUT = ROOT / "docs" / "img"
PG = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--window-size=1440,900",
    "--virtual-time-budget=20000",
]


def _postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=3).close()
    except Exception:
        return False
    return True


def shoot(url: str, target: Path) -> None:
    """One screenshot of `url` into `target` (a fresh browser profile each time)."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={target}", url],
            check=True,
            timeout=120,
            capture_output=True,
        )
    print(f"wrote {target.relative_to(ROOT)}")


async def trigger(name: str) -> Any:
    """Run a deployment and wait for its final state."""
    from prefect.deployments import run_deployment

    return await run_deployment(name, timeout=300, poll_interval=0.5)


async def latest_artifact(key: str) -> str:
    """The id of the latest artifact under `key` (its page renders the table itself)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    return str(next(a.latest_id for a in artifact if a.key == key))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    data = Path(tempfile.mkdtemp(prefix="stalwart-shots-"))
    with PrefectServer(postgres=PG if _postgres_up() else None) as server:
        server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
        server.cli("deploy", "--all", cwd=ROOT, timeout=300)
        env = {
            "STALWART_PROJECT_DIR": str(ROOT),
            "STALWART_DATA_DIR": str(data),
            "PYTHONPATH": str(ROOT),
        }
        with Worker(server, pool="stalwart", cwd=ROOT, env=env, name="docs-worker"):
            os.environ["PREFECT_API_URL"] = server.api_url
            flow_run = asyncio.run(trigger("ticket-triage/ticket-triage"))
            print(f"ticket-triage run {flow_run.id}: {flow_run.state.type.value}")
            shoot(f"{server.ui_url}/deployments", OUT / "prefect-deployments.png")
            shoot(f"{server.ui_url}/runs/flow-run/{flow_run.id}", OUT / "prefect-run.png")
            artifact = asyncio.run(latest_artifact("ticket-triage-decisions"))
            shoot(f"{server.ui_url}/artifacts/artifact/{artifact}", OUT / "prefect-artifact.png")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
