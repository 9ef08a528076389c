"""Secrets never leak: an API key, a Sentry DSN key and a database password are planted in blocks,
agents run through every path that handles them (a decision, a failing action, a model 401 and
model 500s), and every place Stalwart writes to is searched for them.

Searched: log records (root, `agents`, `prefect`, at DEBUG) and the process's stdout/stderr,
the Prefect API's logs, artifacts, flow runs and task runs of the runs, every row of every table
of the state database, everything the Sentry receiver got, exception messages with their
tracebacks and causes, and `RunResult.error`. The machinery lives in `agents.testing.secrets`
(scenario 6 of the reliability suite, `bench/faults/s6_secrets.py`, runs the same search).
"""

from __future__ import annotations

import logging
import traceback

import pytest

from agents.modelserver import ModelServer
from agents.store import queries
from agents.testing.secrets import CAPTURED_LOGGERS, exercise, find_leaks, sources
from agents.testing.sentry import SentryReceiver

pytestmark = [pytest.mark.usefixtures("prefect_api"), pytest.mark.postgres, pytest.mark.faults]


def test_planted_secrets_appear_nowhere(
    postgres_server_url: str,
    model_server: ModelServer,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    for name in CAPTURED_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name or None)
    with SentryReceiver() as receiver:
        done = exercise(
            model_server=model_server, receiver=receiver, admin_database_url=postgres_server_url
        )
        events = receiver.events()
        captured = capfd.readouterr()
        records = "\n".join(
            f"{r.name} {r.getMessage()} {r.exc_text or ''}"
            + ("".join(traceback.format_exception(*r.exc_info)) if r.exc_info else "")
            for r in caplog.records
        )
        searched = sources(done, receiver, records, captured.out, captured.err)

    # The runs went where the blocks said, through every path.
    results = done.results
    assert [r.status for r in results] == ["completed", "failed", "failed", "failed"]
    assert "ProviderRejected" in (results[2].error or "")
    assert "ProviderUnavailable" in (results[3].error or "")
    assert model_server.stats.requests_by_model.get("secret-model", 0) >= 6
    assert {e["environment"] for e in events} == {"secrets-test"}
    assert len(events) >= 3  # the action's failure, the 401 and the 500s
    assert queries.runs(tenant="acme", agent=done.agent, url=done.database_url)
    assert "decision_record" in done.database and "secret-model" in done.database
    # The blocks were loaded: their secrets are known to the scrubber.
    assert set(done.planted.named().values()) <= done.loaded_secrets

    assert find_leaks(searched, done.planted.named()) == []
    assert records and done.database and searched["Sentry"]  # each source had content
