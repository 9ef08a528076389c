"""What a person sees of `stalwart run` and `stalwart eval`, run as they would run them (a
subprocess, its own data directory, the bundled model server started by the CLI): a progress
bar and a summary, Prefect's per-task-run lines in the printed log file (on the terminal with
`--verbose`), a JSON summary whose counts are the decision log's, and a clean end. The demo over
the whole bundled sample hands its unsure tickets to a person and returns."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from flows.ticket_triage import SAMPLE_INPUTS
from tests.support.triage import refused, sample, unsure

TASK_STATE_LINE = "Finished in state"
#: The README's acceptance: the demo over the bundled tickets prints at most this many lines.
MOST_LINES = 30


@pytest.fixture
def prefect_api_url(prefect_api: None) -> str:
    """The session's temporary Prefect server, for the subprocesses that need not start their
    own (each has its own data directory: nothing else is shared)."""
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def stalwart(
    args: list[str], home: Path, *, api_url: str | None = None, timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """`stalwart ARGS` in a fresh process whose data directory and Prefect home are `home`'s;
    on Prefect's temporary server unless `api_url` names one."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("STALWART_", "PREFECT_"))
    }
    env |= {
        "STALWART_DATA_DIR": str(home / "data"),
        "PREFECT_HOME": str(home / "prefect"),
        # A loaded two-core machine has taken over 60 s to start the temporary server.
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
        "COLUMNS": "100",
    }
    if api_url:
        env["PREFECT_API_URL"] = api_url
    home.mkdir(parents=True, exist_ok=True)
    script = "from agents.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def first_tickets(path: Path, count: int) -> Path:
    path.write_text("\n".join(SAMPLE_INPUTS.read_text().splitlines()[:count]) + "\n")
    return path


def printed_log_file(output: str) -> Path:
    found = re.search(r"^Prefect log\s+(\S+\.log)$", output, re.MULTILINE)
    assert found, output
    return Path(found.group(1))


@pytest.mark.slow
@pytest.mark.timeout(900)  # a loaded two-core machine: minutes to start Prefect's server
def test_the_demo_prints_a_bar_and_a_summary_and_logs_prefect_to_a_file(tmp_path: Path) -> None:
    """The README's first command over the bundled tickets, on Prefect's temporary server: the
    tickets both models are unsure of end `awaiting_review` (nothing waits for the reviewer, so
    the command returns, exit status 0), the injections `held`, and the summary counts them."""
    from agents import reviews
    from agents.store import queries

    lines = sample()
    waits, refusals = unsure(lines), refused(lines)
    assert waits and refusals and not waits & refusals
    decided = len(lines) - len(waits) - len(refusals)

    done = stalwart(["run", "ticket-triage", "--input", str(SAMPLE_INPUTS)], tmp_path)
    shown = done.stdout + done.stderr
    assert done.returncode == 0, shown[-3000:]  # a run awaiting review is not a failure
    assert len(shown.splitlines()) <= MOST_LINES, shown
    assert TASK_STATE_LINE not in shown
    assert "Traceback" not in shown and "ERROR" not in shown, shown
    for heading in ("outcomes", "ladder", "route.category", "latency", "next"):
        assert re.search(rf"^{re.escape(heading)}\s", done.stdout, re.MULTILINE), done.stdout
    assert "stalwart decisions --tenant default --agent ticket-triage" in done.stdout
    log = printed_log_file(done.stdout)
    assert log.parent == tmp_path / "data" / "logs"
    assert log.read_text().count(TASK_STATE_LINE) >= len(lines)

    outcomes = re.search(r"^outcomes\s+(.*)$", done.stdout, re.MULTILINE)
    assert outcomes, done.stdout
    assert outcomes.group(1).strip().split(" · ") == [
        f"{decided} completed",
        f"{len(refusals)} held",
        f"{len(waits)} awaiting review",
        "0 failed",
    ], done.stdout
    ladder = re.search(r"^ladder\s+(.*)$", done.stdout, re.MULTILINE)
    assert ladder and f"{len(waits)} awaiting review" in ladder.group(1).strip().split(" · "), (
        done.stdout
    )
    url = f"sqlite:///{tmp_path / 'data' / 'stalwart.db'}"
    runs = queries.runs(tenant="default", agent="ticket-triage", limit=1000, url=url)
    assert Counter(r.status for r in runs) == {
        "completed": decided,
        "awaiting_review": len(waits),
        "held": len(refusals),
    }
    pending = reviews.pending(tenant="default", agent="ticket-triage", url=url)
    assert sorted(p.inputs["ticket"]["id"] for p in pending) == sorted(waits)


def test_verbose_shows_prefect_task_run_lines_on_the_terminal(
    tmp_path: Path, prefect_api_url: str
) -> None:
    source = first_tickets(tmp_path / "three.jsonl", 3)
    quiet = stalwart(
        ["run", "ticket-triage", "--input", str(source)], tmp_path / "q", api_url=prefect_api_url
    )
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert TASK_STATE_LINE not in quiet.stdout + quiet.stderr
    assert TASK_STATE_LINE in printed_log_file(quiet.stdout).read_text()

    loud = stalwart(
        ["run", "ticket-triage", "--input", str(source), "--verbose"],
        tmp_path / "v",
        api_url=prefect_api_url,
    )
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert loud.stderr.count(TASK_STATE_LINE) >= 3
    assert TASK_STATE_LINE in printed_log_file(loud.stdout).read_text()


def test_json_summary_counts_are_the_decision_logs(tmp_path: Path, prefect_api_url: str) -> None:
    from agents import decisions

    # Three tickets the models decide, one both are unsure of, one whose action is refused.
    lines = sample()
    waits, refusals = unsure(lines), refused(lines)
    picked = [line for line in lines if line["raw"]["id"] not in waits | refusals][:3]
    picked += [
        next(line for line in lines if line["raw"]["id"] in ids) for ids in (waits, refusals)
    ]
    source = tmp_path / "five.jsonl"
    source.write_text("".join(json.dumps(line) + "\n" for line in picked))
    done = stalwart(
        ["run", "ticket-triage", "--input", str(source), "--tenant", "js", "--json"],
        tmp_path,
        api_url=prefect_api_url,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # the whole of stdout is one JSON object

    rows = decisions.query(
        tenant="js", agent="ticket-triage", url=f"sqlite:///{tmp_path / 'data' / 'stalwart.db'}"
    )
    assert summary["runs"] == 5 and sum(summary["outcomes"].values()) == 5
    assert summary["outcomes"]["completed"] == 3 and summary["outcomes"]["failed"] == 0
    assert summary["outcomes"]["awaiting_review"] == summary["ladder"]["awaiting_review"] == 1
    assert summary["outcomes"]["held"] == 1
    assert summary["decisions_logged"] == len(rows) == 5
    assert {p: n for p, n in summary["ladder"].items() if n} == Counter(r.path for r in rows)
    decided = [r for r in rows if r.path in ("direct", "fallback_model", "human", "default")]
    assert summary["categories"]["route.category"] == Counter(r.output["category"] for r in decided)
    assert summary["tokens_in"] == sum(r.tokens_in for r in rows) > 0
    assert summary["run_ms_p50"] is not None and summary["run_ms_p95"] >= summary["run_ms_p50"]
    assert 1 <= len(summary["worst"]) <= 3
    assert Path(summary["log_file"]).exists()


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_ends_cleanly_on_the_temporary_server(tmp_path: Path) -> None:
    """Before the fix the temporary server was stopped while it still recorded the batch's task
    runs and printed an `sqlalchemy.pool` ... `CancelledError` traceback after the tables."""
    source = first_tickets(tmp_path / "labelled.jsonl", 12)
    done = stalwart(["eval", "ticket-triage", "--input", str(source)], tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "accuracy" in done.stdout
    assert "Traceback" not in done.stderr and "ERROR" not in done.stderr, done.stderr
    assert TASK_STATE_LINE not in done.stderr
