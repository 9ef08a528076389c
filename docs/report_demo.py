"""Make the README's `stalwart report` picture from a real run, offline.

Runs ticket-triage over the bundled tickets in three phases against the bundled model server:
healthy, degraded (every answer at confidence 0.45: the fallback model is asked, is no surer,
and the run waits for a person's review), and recovered. Every decision gets its label as
outcome (`{"correct": ...}`), the drift detector checks after each batch, then `stalwart report`
writes the HTML and headless Chromium shoots it:

    python docs/report_demo.py        # writes docs/img/report-confidence.png

Needs Debian's `chromium`. Everything runs in a temporary data directory.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = Path(tempfile.mkdtemp(prefix="stalwart-report-"))
os.environ["STALWART_DATA_DIR"] = str(DATA)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "ERROR")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault(
    "STALWART_MODEL_PRICES",
    '{"stalwart-test": [0.00015, 0.0006], "stalwart-strong": [0.0025, 0.01]}',
)

from agents import decisions  # noqa: E402
from agents.modelserver import ModelServer  # noqa: E402
from agents.observe import drift  # noqa: E402
from flows.ticket_triage import triage  # noqa: E402

TENANT = "acme"
PHASE_SECONDS = 20  # each phase gets its own points on the plot
POINTS = 24  # buckets on the time axis, whatever the phases took on this machine


def run_phase(tickets: list[dict], label: str) -> None:
    started = time.monotonic()
    for chunk in range(0, len(tickets), 10):
        batch = tickets[chunk : chunk + 10]
        items = [{"raw": t["raw"], "subject": t["subject"], "run_key": f"{label}-{t['raw']['id']}"}
                 for t in batch]  # fmt: skip
        results = triage.batch(items, tenant=TENANT)
        by_run = {r.run_id: t for r, t in zip(results, batch, strict=True)}
        for row in decisions.query(tenant=TENANT, agent="ticket-triage", since="10m", limit=500):
            line = by_run.get(row.agent_run_id or "")
            if line is None:
                continue
            want = line["expected"]["route"]
            right = all((row.output or {}).get(k) == v for k, v in want.items())
            # Keep what the learning step recorded; add the verdict the metrics read.
            outcome = dict(row.outcome) if isinstance(row.outcome, dict) else {}
            decisions.set_outcome(row.id, tenant=TENANT, outcome={**outcome, "correct": right})
        opened = drift.check(tenant=TENANT, agent="ticket-triage").opened
        for incident in opened:
            print(f"  {label}: incident {incident.signal} opened")
    time.sleep(max(0.0, PHASE_SECONDS - (time.monotonic() - started)))
    print(f"{label}: {len(tickets)} tickets")


def main() -> None:
    lines = [json.loads(x) for x in (ROOT / "flows/data/tickets.jsonl").read_text().splitlines()]
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with ModelServer(port=0) as server:
        os.environ["STALWART_MODEL_URL"] = server.url
        from agents.settings import reload_settings

        reload_settings()
        run_phase(lines[0:60], "healthy")
        server.faults.update(force_confidence=0.45)
        run_phase(lines[60:100], "degraded")
        server.faults.update(force_confidence=None)
        run_phase(lines[100:160], "recovered")
    html = DATA / "report.html"
    # From the first decision (not the start of this script, which includes Prefect's start-up).
    logged = decisions.query(tenant=TENANT, agent="ticket-triage", limit=500)
    first = min(row.created_at for row in logged)
    window = int((datetime.now(UTC) - first.replace(tzinfo=first.tzinfo or UTC)).total_seconds())
    bucket = max(5, round(window / POINTS))
    window += bucket
    from agents.cli import app

    arguments = ["report", "--tenant", TENANT, "--since", f"{window}s", "--bucket", f"{bucket}s"]
    app([*arguments, "--output", str(html)], standalone_mode=False)
    browser = shutil.which("chromium")
    if browser is None:
        raise SystemExit(f"chromium is not installed; the report is at {html}")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--disable-background-networking", "--no-first-run", f"--user-data-dir={profile}",
             "--window-size=1200,1400", f"--screenshot={out / 'report-confidence.png'}",
             html.as_uri()],
            check=True, capture_output=True, timeout=120,
        )  # fmt: skip
    print(f"wrote {out / 'report-confidence.png'} (report: {html})")


if __name__ == "__main__":
    main()
