"""Durability across processes: cache hits in a new process, and kill -9 then rerun."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("prefect_api")
ROOT = Path(__file__).resolve().parents[2]
AGENT = ROOT / "tests" / "support" / "durable_agent.py"


def _env(out: Path, db_url: str, sleep: float = 0.0) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = dict(os.environ)
    env.update(
        STALWART_DATABASE_URL=db_url,
        STALWART_TEST_OUT=str(out),
        STALWART_TEST_SLEEP=str(sleep),
        # One tenant per test: the PostgreSQL database is shared by the session.
        STALWART_TEST_TENANT=out.name,
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    return env


def _lines(out: Path, name: str) -> list[str]:
    path = out / f"{name}.log"
    return path.read_text().split() if path.exists() else []


def _run(out: Path, db_url: str, count: int, concurrency: int) -> dict[str, int]:
    proc = subprocess.run(
        [sys.executable, str(AGENT), str(count), str(concurrency)],
        env=_env(out, db_url),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return dict(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_cache_hits_in_a_second_process(state_db: str, tmp_path: Path) -> None:
    assert _run(tmp_path, state_db, 12, 4) == {"completed": 12}
    first = {name: len(_lines(tmp_path, name)) for name in ("ticket", "route", "calls", "remember")}
    assert first == {"ticket": 12, "route": 12, "calls": 12, "remember": 12}
    assert _run(tmp_path, state_db, 12, 4) == {"completed": 12}
    second = {
        name: len(_lines(tmp_path, name)) for name in ("ticket", "route", "calls", "remember")
    }
    assert second == first, "a step executed again in the second process"


def test_kill_mid_batch_then_rerun_loses_nothing_and_repeats_no_action(
    state_db: str, tmp_path: Path
) -> None:
    # 100 inputs: the kill lands after 40 actions, so 60 are still to come either way; the
    # checks below are per input and hold at any size that leaves work after the kill.
    count, concurrency = 100, 8
    proc = subprocess.Popen(
        [sys.executable, str(AGENT), str(count), str(concurrency)],
        env=_env(tmp_path, state_db, sleep=0.02),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 180
    while len(_lines(tmp_path, "calls")) < 40:
        assert proc.poll() is None, "the batch finished before it could be killed"
        assert time.monotonic() < deadline, "the batch made no progress"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    before = {name: len(_lines(tmp_path, name)) for name in ("ticket", "route", "calls")}
    assert before["calls"] < count, "killed too late to prove anything"

    assert _run(tmp_path, state_db, count, concurrency) == {"completed": count}

    calls = Counter(_lines(tmp_path, "calls"))
    assert len(calls) == count, "some input never acted"
    repeated = [key for key, n in calls.items() if n > 1]
    # Only an action in flight at the kill may be called again, with the same key.
    assert len(repeated) <= concurrency, repeated
    with sqlite3.connect(tmp_path / "outside.db") as db:
        effects = db.execute("SELECT count(*), count(DISTINCT key) FROM effects").fetchone()
    assert effects == (count, count)
    for step in ("ticket", "route"):
        executed = len(_lines(tmp_path, step))
        assert executed <= count + concurrency, f"{step}: finished steps re-executed ({executed})"
    assert len(_lines(tmp_path, "remember")) <= count + concurrency
    # Every run's decision is logged once, with its outcome, though the kill cut some runs
    # between the cached decision and the run records that log it.
    from agents import decisions

    logged = decisions.query(tenant=tmp_path.name, agent="durable", limit=10 * count, url=state_db)
    assert len(logged) == len({d.run_key for d in logged}) == count
    assert all(d.outcome is not None and d.outcome["sent"] for d in logged)
    # The killed execution's rows ended: none is `running` for ever, each crashed one names
    # the run that finished its work; a listing counts inputs, the history every execution.
    from agents.store import queries

    history = queries.runs(tenant=tmp_path.name, limit=10 * count, url=state_db)
    by_id = {r.id: r for r in history}
    assert not [r for r in history if r.status == "running"]
    crashed = [r for r in history if r.status == "crashed"]
    assert crashed, "the kill left no execution to end"
    for row in crashed:
        finisher = by_id[(row.error or "").split()[3]]  # "superseded by run <id> ..."
        assert (finisher.run_key, finisher.status) == (row.run_key, "completed")
    latest = queries.runs(tenant=tmp_path.name, limit=10 * count, latest=True, url=state_db)
    assert len(latest) == count and {r.status for r in latest} == {"completed"}
