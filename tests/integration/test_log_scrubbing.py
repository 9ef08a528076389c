"""A secret in a user's exception text never reaches a log line, local or in Prefect."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import pytest

from agents import Agent, Decision

PLANTED = "Zq9plantedKey4417xyzVV"  # matches no key pattern: only literal scrubbing catches it


class Verdict(Decision):
    label: str


@pytest.mark.usefixtures("prefect_api")
def test_a_secret_in_a_failing_steps_message_is_scrubbed_from_every_log(
    sqlite_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agents.settings import reload_settings

    monkeypatch.setenv("STALWART_API_KEY", PLANTED)
    reload_settings()
    agent = Agent("leaky-step")

    @agent.reasoning
    def decide(raw: dict[str, Any]) -> Verdict:
        # A careless step: the key ends up in the exception text.
        raise ValueError(f"the provider refused key {PLANTED} for {raw['x']}")

    result = agent.run(tenant="acme", raw={"x": 1})
    assert result.status == "failed"
    assert PLANTED not in (result.error or "")

    # Whatever handler prints it (Prefect re-creates its console handlers per configuration),
    # a record made after a run carries the scrubbed text, traceback included.
    try:
        raise ValueError(f"leaked {PLANTED}")
    except ValueError:
        import sys

        record = logging.getLogger("prefect.task_runs").makeRecord(
            "prefect.task_runs", logging.ERROR, __file__, 1, "failed: %s", (PLANTED,),
            sys.exc_info(),
        )  # fmt: skip
    assert PLANTED not in record.getMessage() and PLANTED not in (record.exc_text or "")
    assert "ValueError" in (record.exc_text or "")

    async def prefect_logs() -> str:
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        async with get_client() as client:
            logs = await client.read_logs(
                log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[result.flow_run_id]))
            )
        return "\n".join(log.message for log in logs)

    deadline = time.monotonic() + 15
    text = asyncio.run(prefect_logs())
    while "refused key" not in text and time.monotonic() < deadline:
        time.sleep(0.5)
        text = asyncio.run(prefect_logs())
    assert "refused key" in text, "the task's failure reached the Prefect API"
    assert PLANTED not in text
    monkeypatch.delenv("STALWART_API_KEY")
    reload_settings()
