"""Scenario 8, zombie execution: the same agent run executing in two OS processes at once.

Two worker processes (bench/faults/s8_zombie.py) run the same batch (same tenant, same inputs,
hence the same run keys); a file barrier makes both executions of each run reach the action
together. Exactly one acts per idempotency key, the other stops with `ActionInProgress`: run
status `conflict`, its action's task run Cancelled, no Sentry event, and the run's outcome
recorded once. And a crashed execution's action is still taken over (in doubt, same key) once
its lease has expired.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import col, select

from agents.store import ActionRecord, AgentRun, StepRun, ledger, session
from agents.testing.sentry import SentryReceiver
from bench.faults import s8_zombie

pytestmark = [pytest.mark.faults, pytest.mark.usefixtures("prefect_api")]


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return str(PREFECT_API_URL.value())


def _task_run_state(task_run_id: str, timeout: float = 10.0) -> Any:
    """The state type of a task run as the Prefect API has it (events arrive a bit later)."""
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            try:
                state = client.read_task_run(uuid.UUID(task_run_id)).state
            except Exception:  # not recorded yet
                state = None
            if (state is not None and state.is_final()) or time.monotonic() > deadline:
                return state
            time.sleep(0.25)


def test_two_live_executions_act_once_and_the_twin_stops_cleanly(
    state_db: str, tmp_path: Path
) -> None:
    count = 3
    tenant = f"zombie-{uuid.uuid4().hex[:8]}"
    with SentryReceiver() as sentry:
        reports = s8_zombie.run_twice(
            tmp_path,
            count=count,
            db_url=state_db,
            tenant=tenant,
            api_url=_api_url(),
            concurrency=count,
            timeout=120,
            env={"STALWART_ZOMBIE_ACTION_SECONDS": "1.5", "SENTRY_DSN": sentry.dsn},
        )
        time.sleep(0.5)  # the workers have exited: anything they sent has arrived
        errors = [e for e in sentry.events() if e.get("level") in ("error", "fatal")]
    assert errors == [], "a conflict must not reach Sentry as an error"

    # Each run completed in exactly one process and stopped with a conflict in the other.
    by_key: dict[str, list[str]] = {}
    for report in reports:
        for run_key, status, error in report["runs"]:
            by_key.setdefault(run_key, []).append(status)
            if status == "conflict":
                assert "ActionInProgress" in error and "another live execution" in error
    assert len(by_key) == count
    assert all(sorted(s) == ["completed", "conflict"] for s in by_key.values()), by_key

    found = s8_zombie.analyse(tmp_path, count=count, db_url=state_db, tenant=tenant)
    assert found["effects"] == count and found["duplicate_actions"] == 0
    assert found["run_keys"] == count and found["outcomes_recorded_twice"] == 0
    assert found["replays"] == 0
    assert found["statuses"] == {"completed": count, "conflict": count}
    assert found["decisions"] == count and found["decisions_twice"] == 0
    assert (found["ledger_rows"], found["ledger_completed"]) == (count, count)
    assert found["memory_count"] == count, "the learning step ran for a conflicted execution"

    with session(state_db) as s:
        rows = s.exec(
            select(StepRun).where(col(StepRun.tenant) == tenant, col(StepRun.status) == "conflict")
        ).all()
        runs = s.exec(select(AgentRun).where(col(AgentRun.tenant) == tenant)).all()
        records = s.exec(select(ActionRecord).where(col(ActionRecord.tenant) == tenant)).all()
    assert sorted(r.step for r in rows) == ["send"] * count
    # The ledger names the winner's execution; the loser never took the lease.
    winners = {r.id for r in runs if r.status == "completed"}
    assert {r.lease_owner for r in records} == winners
    assert all(r.attempts == 1 for r in records)
    # The conflicted action's task run ended Cancelled, with the reason as its message.
    task_run_id = next(r.task_run_id for r in rows if r.task_run_id)
    state = _task_run_state(task_run_id)
    assert state is not None and state.is_cancelled(), state
    assert "ActionInProgress" in (state.message or "")

    # `stalwart runs --history` shows the conflicts with their reason (a plain listing shows each
    # run key once, by its latest execution).
    from typer.testing import CliRunner

    from agents.cli import app

    # (state_db made the test database the one in force for this process.)
    result = CliRunner().invoke(
        app, ["runs", "--tenant", tenant, "--status", "conflict", "--history", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.count('"status": "conflict"') == count


@pytest.mark.postgres
def test_a_crashed_execution_is_taken_over_after_its_lease(
    postgres_url: str, tmp_path: Path
) -> None:
    # PostgreSQL only, to keep CI short: the ledger's take-over is tested on both backends in
    # test_store, and test_durability's kill-and-rerun takes expired leases over on both.
    state_db = postgres_url
    tenant = f"zombie-{uuid.uuid4().hex[:8]}"
    key = ledger.idempotency_key(tenant, "zombie", "s0", _run_key(), "send")
    common: dict[str, Any] = {
        "count": 1,
        "db_url": state_db,
        "tenant": tenant,
        "api_url": _api_url(),
        "concurrency": 1,
    }
    # The first execution claims the action, then dies in the middle of it.
    first = s8_zombie.spawn(
        tmp_path,
        **common,
        env={"STALWART_ZOMBIE_BARRIER": "", "STALWART_ZOMBIE_ACTION_SECONDS": "60"},
    )
    try:
        deadline = time.monotonic() + 60
        while ledger.get(key, url=state_db) is None:
            assert first.poll() is None, first.communicate()[1][-2000:]
            assert time.monotonic() < deadline, "the first execution never claimed its action"
            time.sleep(0.1)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(timeout=10)
    claimed = ledger.get(key, url=state_db)
    assert claimed is not None and claimed.status == "started"

    # Resumed: the lease (3 s) runs out, the action is taken over in doubt with the same key.
    second = s8_zombie.spawn(
        tmp_path,
        **common,
        env={"STALWART_ZOMBIE_BARRIER": "", "STALWART_ZOMBIE_ACTION_SECONDS": "0.1"},
    )
    (report,) = s8_zombie.collect([second], timeout=120)
    assert report["statuses"] == {"completed": 1}
    done = ledger.get(key, url=state_db)
    assert done is not None
    assert (done.status, done.attempts) == ("completed", 2)
    assert done.lease_owner != claimed.lease_owner  # the second execution took the lease
    assert done.agent_run_id == claimed.agent_run_id  # kept from the first claim
    effects = Counter((tmp_path / "effects.log").read_text().split()[::2])
    assert effects == {key: 1}  # the first died before its effect; the second acted once


def _run_key() -> str:
    """The run key of `s8_zombie.inputs(1)[0]` (what the runner derives from its inputs)."""
    from agents.digest import digest

    item = s8_zombie.inputs(1)[0]
    inputs = {k: v for k, v in item.items() if k != "subject"}
    return digest({"inputs": inputs, "subject": item["subject"]})


def test_a_hung_worker_is_reported_with_where_it_hung() -> None:
    # What `collect` does with a worker that outlives its timeout: the stacks, then a kill.
    code = (
        "import faulthandler, signal, time\n"
        "faulthandler.register(signal.SIGUSR1, all_threads=True)\n"
        "def wait_for_twin():\n"
        "    time.sleep(60)\n"
        "wait_for_twin()\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(1)  # the handler is registered
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"still running after 1 s: <string>:4 wait_for_twin"):
        s8_zombie.collect([proc], timeout=1)
    assert proc.poll() is not None
    assert time.monotonic() - started < 20
