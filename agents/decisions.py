"""Decisions: query the decision log of reasoning steps, export it, summarise it, label outcomes.

Every reasoning step records one `DecisionRecord` per decision: its inputs (redacted), model,
output, confidence, rationale, tokens, cost, latency and the *path* that produced it (a
`LadderPath` value: `direct`, `fallback_model`, `human`, `default`, `held`, `rejected`, or
`shadow`). This module is the public way to read them back, a facade over
`agents.store.decisions`, which owns the SQL and the one query; every call takes a mandatory
`tenant` and never returns another tenant's rows.

Example:
    >>> from agents import decisions
    >>> unsure = decisions.query(tenant="acme", agent="ticket-triage", since="1d", below=0.7,
    ...                          url="sqlite://")
    >>> for d in unsure:
    ...     _ = decisions.set_outcome(d.id, tenant="acme", outcome={"correct": False},
    ...                               url="sqlite://")
    >>> print(decisions.summary_table(unsure).splitlines()[0][:52])
    | step | subject | path | confidence | model | tools
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from agents._text import one_line
from agents.declare.decision import LadderPath
from agents.redact import scrub_text
from agents.store._convert import parse_age, parse_since
from agents.store.decisions import find_decisions, get_decision, set_outcome
from agents.store.tables import DecisionRecord

__all__ = [
    "PATHS",
    "SUMMARY_COLUMNS",
    "DecisionRecord",
    "export_jsonl",
    "get",
    "parse_duration",
    "parse_since",
    "publish_artifact",
    "query",
    "set_outcome",
    "summary_rows",
    "summary_table",
    "to_dict",
]

logger = logging.getLogger(__name__)

PATHS = tuple(path.value for path in LadderPath)
"""How a decision can be reached: the `LadderPath` values (those of `DecisionRecord.path`)."""

SUMMARY_COLUMNS = (
    "step",
    "subject",
    "path",
    "confidence",
    "model",
    "tools",
    "tokens",
    "cost",
    "latency ms",
    "rationale",
)
"""The columns of `summary_table`, `summary_rows` and `publish_artifact`."""

RATIONALE_WIDTH = 80
"""Rationales longer than this are cut (with an ellipsis) in summaries."""

_ARTIFACT_KEY_INVALID = re.compile(r"[^a-z0-9-]+")

query = find_decisions
"""A tenant's decisions, newest first, filtered (the one query, `store.decisions.find_decisions`).

`query(*, tenant, agent=None, step=None, since=None, below=None, path=None, subject=None,
limit=100, url=None)`: `since` takes `"1d"`, `"6h"`, an ISO string, a timedelta or a datetime.
"""

get = get_decision
"""One decision by id, or None when that tenant has no such decision (`get(id, *, tenant)`)."""

parse_duration = parse_age
"""`30s`, `30m`, `12h`, `7d` or `2w` (or a timedelta) → a positive timedelta (`parse_age`)."""


class _TextWriter(Protocol):
    def write(self, text: str, /) -> Any: ...


def export_jsonl(
    rows: Iterable[DecisionRecord], path_or_file: str | os.PathLike[str] | _TextWriter
) -> int:
    """Write decisions as JSON Lines: one object per decision, datetimes in ISO 8601.

    The rows are written as stored (the snapshot of inputs was redacted when recorded). Read a
    line back with `DecisionRecord.model_validate(json.loads(line))`.

    Args:
        rows: the decisions, e.g. from `query`.
        path_or_file: a file path (created or overwritten, UTF-8) or an open text file.

    Returns:
        How many decisions were written.

    Example:
        >>> import io
        >>> buffer = io.StringIO()
        >>> export_jsonl([DecisionRecord(tenant="acme", agent="a", step="s",
        ...                              input_digest="0" * 64)], buffer)
        1
    """
    if isinstance(path_or_file, str | os.PathLike):
        with Path(path_or_file).open("w", encoding="utf-8", newline="\n") as file:
            return _write_jsonl(rows, file)
    return _write_jsonl(rows, path_or_file)


def _write_jsonl(rows: Iterable[DecisionRecord], file: _TextWriter) -> int:
    count = 0
    for row in rows:
        file.write(json.dumps(to_dict(row), ensure_ascii=False) + "\n")
        count += 1
    return count


def to_dict(row: DecisionRecord) -> dict[str, Any]:
    """A decision as a plain JSON object: fields in declaration order, datetimes in ISO 8601.

    Example:
        >>> from datetime import UTC, datetime
        >>> record = DecisionRecord(id="a" * 32, tenant="acme", agent="a", step="s",
        ...                         input_digest="0" * 64,
        ...                         created_at=datetime(2026, 11, 1, tzinfo=UTC))
        >>> d = to_dict(record)
        >>> list(d)[:4], d["created_at"]
        (['id', 'tenant', 'agent', 'step'], '2026-11-01T00:00:00Z')
    """
    dumped = row.model_dump(mode="json")
    return {name: dumped[name] for name in DecisionRecord.model_fields if name in dumped}


def _cell(value: Any) -> str:
    return "" if value is None else scrub_text(str(value))


def summary_rows(rows: Iterable[DecisionRecord]) -> list[dict[str, str]]:
    """Decisions as display rows: one string per `SUMMARY_COLUMNS`, secrets scrubbed.

    Every value goes through `scrub_text` (API keys, tokens, URL credentials, e-mail addresses
    are redacted) before the rationale is cut to 80 characters.

    Example:
        >>> row = summary_rows([DecisionRecord(tenant="acme", agent="a", step="route",
        ...                                    input_digest="0" * 64, confidence=0.5,
        ...                                    rationale="mail bob@example.com")])[0]
        >>> row["confidence"], row["rationale"]
        ('0.50', 'mail [email]')
    """
    result: list[dict[str, str]] = []
    for row in rows:
        result.append(
            {
                "step": _cell(row.step),
                "subject": _cell(row.subject),
                "path": _cell(row.path),
                "confidence": "" if row.confidence is None else f"{row.confidence:.2f}",
                "model": _cell(row.model),
                "tools": str(len(row.tool_calls or ())) if row.tool_calls else "",
                "tokens": f"{row.tokens_in}/{row.tokens_out}",
                "cost": f"{row.cost:.4f}",
                "latency ms": "" if row.latency_ms is None else f"{row.latency_ms:.0f}",
                "rationale": one_line(_cell(row.rationale), RATIONALE_WIDTH),
            }
        )
    return result


def _markdown_cell(text: str) -> str:
    return " ".join(text.split()).replace("\\", "\\\\").replace("|", "\\|")


def summary_table(rows: Iterable[DecisionRecord]) -> str:
    """Decisions as a Markdown table (for a Prefect artifact, a report, a terminal).

    Columns: step, subject, path, confidence, model, tools (calls of a tool loop), tokens
    (in/out), cost (USD), latency ms and the rationale cut to 80 characters. Every value is
    passed through `scrub_text`.

    Example:
        >>> table = summary_table([DecisionRecord(tenant="acme", agent="a", step="route",
        ...                                       input_digest="0" * 64, confidence=0.42,
        ...                                       rationale="refund asked")])
        >>> for line in table.splitlines()[1:]:
        ...     print(line)
        |---|---|---|---|---|---|---|---|---|---|
        | route |  | direct | 0.42 |  |  | 0/0 | 0.0000 |  | refund asked |
    """
    lines = [
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    for row in summary_rows(rows):
        lines.append("| " + " | ".join(_markdown_cell(row[c]) for c in SUMMARY_COLUMNS) + " |")
    return "\n".join(lines)


def _artifact_key(key: str) -> str:
    cleaned = _ARTIFACT_KEY_INVALID.sub("-", key.lower()).strip("-")
    return cleaned or "decisions"


async def publish_artifact(
    rows: Sequence[DecisionRecord], *, key: str, description: str | None = None
) -> None:
    """Publish decisions as a Prefect table artifact (scrubbed, like `summary_table`).

    Artifacts are a courtesy: any failure (no Prefect API, a rejected key...) is logged at debug
    level and swallowed. The key is made Prefect-valid (lowercase letters, digits and dashes).

    Args:
        rows: the decisions to show.
        key: the artifact key, e.g. `"triage-decisions"`; the latest artifact per key is shown
            in the Prefect UI with its history.
        description: Markdown shown above the table; default a count.

    Example:
        >>> import asyncio
        >>> asyncio.run(publish_artifact([], key="triage-decisions"))  # doctest: +SKIP
    """
    try:
        from prefect.artifacts import acreate_table_artifact

        table: list[dict[str, Any]] = [dict(row) for row in summary_rows(rows)]
        await acreate_table_artifact(
            table=table,
            key=_artifact_key(key),
            description=description or f"{len(rows)} decision(s)",
        )
    except Exception as exc:
        logger.debug("Could not publish the decisions artifact %r: %s", key, scrub_text(str(exc)))
