"""What Stalwart asks Prefect to record: the temporary server's batched recorder settings (user
values win) and task-run state lines kept off the API (agents.execution.recording,
agents.observe.logs). The API's view after a real batch: tests/integration/test_recording.py."""

from __future__ import annotations

import logging

import pytest

from agents.execution.recording import (
    SERVER_SETTINGS,
    TEMPORARY_SERVER_SETTINGS,
    prepare_temporary_server,
)
from agents.observe import logs


def test_the_temporary_server_gets_batched_recording_unless_the_user_chose(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in TEMPORARY_SERVER_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE", "7")
    prepare_temporary_server()
    import os

    assert os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_BATCH_SIZE"] == "7"
    assert os.environ["PREFECT_SERVER_SERVICES_EVENT_PERSISTER_BATCH_SIZE"] == "500"
    # A dedicated server keeps the 1 s interval; the temporary one records every half second.
    assert os.environ["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"] == "0.5"
    assert SERVER_SETTINGS["PREFECT_SERVER_SERVICES_TASK_RUN_RECORDER_FLUSH_INTERVAL"] == "1"
    # The names are Prefect's: a renamed setting would silently stop applying.
    from prefect.settings import Settings

    known = Settings().to_environment_variables(exclude_unset=False)
    assert {n for n in TEMPORARY_SERVER_SETTINGS if n.startswith("PREFECT_")} <= set(known)
    # The others are options of `python -m uvicorn`, which starts the temporary server.
    from uvicorn.main import main as uvicorn_cli

    options = {f"UVICORN_{p.name.upper()}" for p in uvicorn_cli.params if p.name}
    assert {n for n in TEMPORARY_SERVER_SETTINGS if not n.startswith("PREFECT_")} <= options


def _record(name: str, level: int, msg: str) -> logging.LogRecord:
    return logging.getLogger(name).makeRecord(name, level, __file__, 1, msg, (), None)


@pytest.mark.parametrize(
    ("name", "level", "msg", "sent"),
    [
        ("prefect.task_runs", logging.INFO, "Finished in state Completed()", False),
        ("prefect.task_runs", logging.ERROR, "Finished in state Failed('boom')", True),
        ("prefect.task_runs", logging.INFO, "a step's own log line", True),
        ("prefect.flow_runs", logging.INFO, "Finished in state Completed()", True),
    ],
)
def test_only_task_run_success_lines_stay_off_the_api(
    name: str, level: int, msg: str, sent: bool
) -> None:
    logs.install_log_scrubbing()
    assert getattr(_record(name, level, msg), "send_to_api", True) is sent
