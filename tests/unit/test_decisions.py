"""The decision-log API without a database server or Prefect API: argument checks of query and prune
(SQLite), since/duration parsing, cost from the price table, the scrubbed summary table and
publishing it as an artifact (Prefect's call replaced).

The rest, on SQLite and PostgreSQL: tests/integration/test_decisions.py.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from agents import decisions
from agents.pricing import cost_of
from agents.settings import reload_settings, temporary_settings
from agents.store import (
    DecisionRecord,
    prune,
    record_decisions,
)

SECRET = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8tUv1wXy4zAb7cDe0f"


def _decision(tenant: str, **fields: Any) -> DecisionRecord:
    fields.setdefault("agent", "triage")
    fields.setdefault("step", "route")
    fields.setdefault("input_digest", uuid.uuid4().hex * 2)
    return DecisionRecord(tenant=tenant, **fields)


def test_query_rejects_bad_arguments(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="tenant"):
        decisions.query(tenant="")
    with pytest.raises(ValueError, match="since"):
        decisions.query(tenant="acme", since="yesterday")
    with pytest.raises(ValueError, match="limit"):
        decisions.query(tenant="acme", limit=0)
    with pytest.raises(ValueError, match="tenant"):
        record_decisions([_decision("")])


def test_parse_since_and_duration() -> None:
    now = datetime(2026, 11, 2, 12, tzinfo=UTC)
    assert decisions.parse_since("1d", now=now) == datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert decisions.parse_since("6h", now=now) == datetime(2026, 11, 2, 6, tzinfo=UTC)
    assert decisions.parse_since("30m", now=now) == datetime(2026, 11, 2, 11, 30, tzinfo=UTC)
    assert decisions.parse_since("2026-11-01T08:00:00+01:00") == datetime(
        2026, 11, 1, 7, tzinfo=UTC
    )
    assert decisions.parse_since(None) is None
    assert decisions.parse_duration("90d") == timedelta(days=90)
    assert decisions.parse_duration("12h") == timedelta(hours=12)
    for bad in ("0d", "-1d", "90", "d", "1y", "soon"):
        with pytest.raises(ValueError):
            decisions.parse_duration(bad)


def test_cost_of_uses_the_price_table_from_settings() -> None:
    with temporary_settings(model_prices={"gpt-4o": (2.5, 10.0), "cheap": (0.1, 0.2)}):
        assert math.isclose(cost_of("gpt-4o", 1000, 500), 2.5 + 5.0)
        assert math.isclose(cost_of("cheap", 2500, 0), 0.25)
        assert cost_of("unknown", 1000, 1000) == 0.0
        assert cost_of(None, 1000, 1000) == 0.0
        assert cost_of("gpt-4o", 0, 0) == 0.0
    assert cost_of("gpt-4o", 1000, 500) == 0.0


def test_cost_of_reads_prices_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STALWART_MODEL_PRICES", json.dumps({"m-1": [0.5, 1.5]}))
    try:
        reload_settings()
        assert math.isclose(cost_of("m-1", 2000, 1000), 1.0 + 1.5)
        assert cost_of("m-2", 2000, 1000) == 0.0
    finally:
        monkeypatch.delenv("STALWART_MODEL_PRICES")
        reload_settings()
    assert cost_of("m-1", 2000, 1000) == 0.0


def test_summary_table_scrubs_secrets_and_truncates() -> None:
    long_reason = "refund requested " * 20
    rows = [
        _decision(
            "acme",
            subject="bob@example.com",
            confidence=0.4321,
            model="gpt-4o",
            tokens_in=120,
            tokens_out=30,
            cost=0.0123,
            latency_ms=812.4,
            rationale=f"the key {SECRET} was pasted | in a ticket",
        ),
        _decision("acme", step="classify", rationale=long_reason, path="human"),
        _decision("acme", rationale=f"{'x' * 70} Bearer {SECRET}"),
    ]
    table = decisions.summary_table(rows)
    assert SECRET not in table
    assert SECRET[:16] not in table
    assert "bob@example.com" not in table
    lines = table.splitlines()
    assert lines[0] == (
        "| step | subject | path | confidence | model | tools | tokens | cost | latency ms "
        "| rationale |"
    )
    assert len(lines) == 2 + len(rows)
    first = lines[2]
    for value in ("route", "[email]", "direct", "0.43", "gpt-4o", "120/30", "0.0123", "812"):
        assert value in first
    assert "***" in first and "\\|" in first  # the pipe in the rationale is escaped
    assert first.count(" | ") == len(decisions.SUMMARY_COLUMNS) - 1
    shown = decisions.summary_rows(rows)
    assert len(shown[1]["rationale"]) == 80 and shown[1]["rationale"].endswith("…")
    assert long_reason.strip() not in table
    assert all(SECRET[:12] not in row["rationale"] for row in shown)


def test_publish_artifact_sends_scrubbed_rows_and_swallows_errors(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import prefect.artifacts

    calls: list[dict[str, Any]] = []

    async def fake(**kwargs: Any) -> None:
        calls.append(kwargs)

    monkeypatch.setattr(prefect.artifacts, "acreate_table_artifact", fake)
    rows = [_decision("acme", rationale=f"uses {SECRET}", confidence=0.3)]
    asyncio.run(decisions.publish_artifact(rows, key="Triage Decisions_v2"))
    assert len(calls) == 1
    assert calls[0]["key"] == "triage-decisions-v2"
    assert calls[0]["table"][0]["confidence"] == "0.30"
    assert SECRET not in json.dumps(calls[0])

    async def broken(**kwargs: Any) -> None:
        raise RuntimeError("no Prefect API")

    monkeypatch.setattr(prefect.artifacts, "acreate_table_artifact", broken)
    asyncio.run(decisions.publish_artifact(rows, key="k"))  # no exception


def test_prune_rejects_bad_arguments(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="positive"):
        prune(older_than=timedelta(0))
    with pytest.raises(ValueError, match="batch_size"):
        prune(older_than=timedelta(days=1), batch_size=0)
    with pytest.raises(ValueError, match="tenant"):
        prune(older_than=timedelta(days=1), tenant="")
