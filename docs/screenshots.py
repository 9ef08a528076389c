"""Take the README's Prefect UI screenshots with headless Chromium, offline, on loopback.

Starts a real `prefect server` (database on the local PostgreSQL, SQLite if it is down),
deploys `prefect.yaml`, starts one process worker, triggers the ticket-triage deployment with
`run_deployment` on its demo tickets plus one vague ticket both models are unsure of, then shoots
the deployments page, the finished run (its task runs named `<agent>.<step>[<subject>]`), its
decisions artifact, and the vague ticket's review: a flow run of the deployment waiting
`Suspended`, its "Resume" form opened (clicked through the DevTools protocol):

    python docs/screenshots.py            # writes docs/img/prefect-*.png

Needs Debian's `chromium` (`apt-get install chromium`). Everything it starts is stopped by PID.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
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
]
#: A `--screenshot` shot lets the page's scripts run this long (virtual time) before shooting.
SHOT_FLAGS = ["--virtual-time-budget=20000"]
#: The review form's modal is taller than the other pages.
FORM_WINDOW = (1440, 1250)
#: A ticket both the primary and the fallback model answer below the threshold (0.4, with the
#: bundled model server's rules): its run ends `awaiting_review` and its review gets a form.
VAGUE_TICKET = {
    "raw": {
        "id": "T0096",
        "subject": "Hmm",
        "body": "Not sure who to ask about this.",
        "customer": "cust-057",
    },
    "subject": "cust-057",
}


def _postgres_up() -> bool:
    try:
        import psycopg

        psycopg.connect(PG, connect_timeout=3).close()
    except Exception:
        return False
    return True


def _browser() -> str:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("chromium is not installed: apt-get install chromium")
    return browser


def shoot(url: str, target: Path) -> None:
    """One screenshot of `url` into `target` (a fresh browser profile each time)."""
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                _browser(),
                *CHROMIUM_FLAGS,
                *SHOT_FLAGS,
                f"--user-data-dir={profile}",
                f"--screenshot={target}",
                url,
            ],
            check=True,
            timeout=120,
            capture_output=True,
        )
    print(f"wrote {target.relative_to(ROOT)}")


@contextlib.contextmanager
def _devtools_page(width: int, height: int) -> Iterator[str]:
    """A headless Chromium on a fresh profile; yields its page's DevTools WebSocket URL.

    `--screenshot` cannot click, and the review form opens only after a click on "Resume".
    Chromium runs in a session of its own and is stopped by its process group's id.
    """
    import httpx

    with tempfile.TemporaryDirectory() as profile:
        flags = [f for f in CHROMIUM_FLAGS if not f.startswith("--window-size=")]
        process = subprocess.Popen(
            [
                _browser(),
                *flags,
                f"--window-size={width},{height}",
                "--remote-debugging-port=0",  # Chromium picks one, written to DevToolsActivePort
                f"--user-data-dir={profile}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            port_file = Path(profile) / "DevToolsActivePort"
            deadline = time.monotonic() + 60
            while not port_file.exists() or not port_file.read_text().strip():
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("chromium did not open its DevTools port")
                time.sleep(0.2)
            port = port_file.read_text().split()[0]
            targets = httpx.get(f"http://127.0.0.1:{port}/json/list", timeout=10).json()
            yield next(t["webSocketDebuggerUrl"] for t in targets if t["type"] == "page")
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


#: Clicks the first button reading exactly `label`; true if there was one.
_CLICK = """(() => {
  const button = [...document.querySelectorAll('button')]
    .find(b => b.innerText.trim() === %s);
  if (!button) return false;
  button.click();
  return true;
})()"""
#: Whether a modal dialog with form fields is open (Prefect's `p-modal`, `role=dialog`).
_FORM_OPEN = "!!document.querySelector('[role=dialog] input, [role=dialog] textarea')"


async def _shoot_after_click(page: str, url: str, label: str, target: Path) -> bool:
    """Open `url`, click the button `label` once it shows, wait for the form it opens, shoot.
    False (and a shot of the page as it is) if the button or the form never showed."""
    import websockets

    ids = itertools.count(1)
    async with websockets.connect(page, max_size=None) as ws:

        async def call(method: str, **params: Any) -> dict[str, Any]:
            sent = next(ids)
            await ws.send(json.dumps({"id": sent, "method": method, "params": params}))
            while True:
                message = json.loads(await ws.recv())
                if message.get("id") == sent:
                    if "error" in message:
                        raise RuntimeError(f"{method}: {message['error']}")
                    result: dict[str, Any] = message["result"]
                    return result

        async def evaluate(expression: str) -> Any:
            answer = await call("Runtime.evaluate", expression=expression, returnByValue=True)
            return answer["result"].get("value")

        async def until(expression: str, timeout: float) -> bool:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if await evaluate(expression):
                    return True
                await asyncio.sleep(0.5)
            return False

        width, height = FORM_WINDOW
        await call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        await call("Page.enable")
        await call("Page.navigate", url=url)
        clicked = await until(_CLICK % json.dumps(label), timeout=60)
        opened = clicked and await until(_FORM_OPEN, timeout=30)
        await asyncio.sleep(2)  # the form's schema fields and Markdown render after it opens
        shot = await call("Page.captureScreenshot", format="png")
    target.write_bytes(base64.b64decode(shot["data"]))
    print(f"wrote {target.relative_to(ROOT)}" + ("" if opened else f" (no {label!r} form)"))
    return opened


def shoot_form(url: str, label: str, target: Path) -> bool:
    """A screenshot of `url` with the form behind its button `label` open."""
    with _devtools_page(*FORM_WINDOW) as page:
        return asyncio.run(_shoot_after_click(page, url, label, target))


def demo_inputs(deployment: str) -> list[dict[str, Any]]:
    """The inputs `prefect.yaml` gives the deployment `deployment`."""
    import yaml

    project = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    spec = next(d for d in project["deployments"] if d["name"] == deployment)
    return list(spec["parameters"]["inputs"])


async def trigger(name: str, inputs: list[dict[str, Any]]) -> Any:
    """Run a deployment on `inputs` and wait for its final state."""
    from prefect.deployments.flow_runs import arun_deployment

    parameters = {"inputs": inputs}
    return await arun_deployment(name, parameters=parameters, timeout=300, poll_interval=0.5)


async def suspended_review(deployment_id: Any, timeout: float = 60) -> Any:
    """The review flow run of the deployment waiting `Suspended` (None if none shows up)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        DeploymentFilter,
        DeploymentFilterId,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateName,
        FlowRunFilterTags,
    )

    deadline = time.monotonic() + timeout
    async with get_client() as client:
        while time.monotonic() < deadline:
            waiting = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment_id])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Suspended"])),
                    tags=FlowRunFilterTags(all_=["review"]),
                ),
            )
            if waiting:
                return waiting[0]
            await asyncio.sleep(1)
    return None


async def latest_artifact(key: str) -> str:
    """The id of the latest artifact under `key` (its page renders the table itself)."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        artifact = await client.read_latest_artifacts()
    return str(next(a.latest_id for a in artifact if a.key == key))


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    # The agents' state (SQLite) lives only as long as the shots, removed even when one fails.
    with (
        tempfile.TemporaryDirectory(prefix="stalwart-shots-", ignore_cleanup_errors=True) as data,
        PrefectServer(postgres=PG if _postgres_up() else None) as server,
    ):
        server.cli("work-pool", "create", "stalwart", "--type", "process", "--overwrite")
        server.cli("deploy", "--all", cwd=ROOT, timeout=300)
        env = {
            "STALWART_PROJECT_DIR": str(ROOT),
            "STALWART_DATA_DIR": data,
            "PYTHONPATH": str(ROOT),
        }
        with Worker(server, pool="stalwart", cwd=ROOT, env=env, name="docs-worker"):
            os.environ["PREFECT_API_URL"] = server.api_url
            inputs = [*demo_inputs("ticket-triage"), VAGUE_TICKET]
            flow_run = asyncio.run(trigger("ticket-triage/ticket-triage", inputs))
            print(f"ticket-triage run {flow_run.id}: {flow_run.state.name}")
            shoot(f"{server.ui_url}/deployments", OUT / "prefect-deployments.png")
            shoot(f"{server.ui_url}/runs/flow-run/{flow_run.id}", OUT / "prefect-run.png")
            artifact = asyncio.run(latest_artifact("ticket-triage-decisions"))
            shoot(f"{server.ui_url}/artifacts/artifact/{artifact}", OUT / "prefect-artifact.png")
            review = asyncio.run(suspended_review(flow_run.deployment_id))
            if review is None:
                raise SystemExit(f"no review waits in the UI:\n{server.log_tail()}")
            print(f"review run {review.name} ({review.id}): {review.state.name}")
            review_page = f"{server.ui_url}/runs/flow-run/{review.id}"
            shoot_form(review_page, "Resume", OUT / "prefect-review.png")


if __name__ == "__main__":
    main()
