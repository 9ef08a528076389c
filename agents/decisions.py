"""Decisions: query the decision log of reasoning steps, export it, summarise it, label outcomes.

Every reasoning step records one `DecisionRecord` per decision: its inputs (redacted), model,
output, confidence, rationale, tokens, cost, latency and the *path* that produced it (`direct`,
`fallback_model`, `human`, `default` or `rejected`). This module is the public way to read them
back; every call takes a mandatory `tenant` and never returns another tenant's rows.

Example:
    >>> from agents import decisions
    >>> unsure = decisions.query(tenant="acme", agent="ticket-triage", since="1d", below=0.7,
    ...                          url="sqlite://")
    >>> for d in unsure:
    ...     _ = decisions.set_outcome(d.id, tenant="acme", outcome={"correct": False},
    ...                               url="sqlite://")
    >>> print(decisions.summary_table(unsure).splitlines()[0])
    | step | subject | path | confidence | model | tokens | cost | latency ms | rationale |
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Protocol

from agents._text import one_line
from agents.observe.sentry import scrub_text
from agents.store._convert import as_utc
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

PATHS = ("direct", "fallback_model", "human", "default", "rejected", "shadow")
"""How a decision can be reached (the values of `DecisionRecord.path`)."""

SUMMARY_COLUMNS = (
    "step",
    "subject",
    "path",
    "confidence",
    "model",
    "tokens",
    "cost",
    "latency ms",
    "rationale",
)
"""The columns of `summary_table`, `summary_rows` and `publish_artifact`."""

RATIONALE_WIDTH = 80
"""Rationales longer than this are cut (with an ellipsis) in summaries."""

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_ARTIFACT_KEY_INVALID = re.compile(r"[^a-z0-9-]+")


class _TextWriter(Protocol):
    def write(self, text: str, /) -> Any: ...


def parse_duration(value: str | timedelta) -> timedelta:
    """`30s`, `30m`, `12h`, `7d` or `2w` (or a timedelta) → a positive timedelta.

    Raises:
        ValueError: not a duration, or not positive.

    Example:
        >>> parse_duration("90d")
        datetime.timedelta(days=90)
        >>> parse_duration("1.5h")
        datetime.timedelta(seconds=5400)
    """
    if isinstance(value, timedelta):
        duration = value
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value!r} is not a duration: use e.g. 30m, 12h, 7d or 2w")
        duration = timedelta(seconds=float(match[1]) * _UNITS[match[2].lower()])
    if duration <= timedelta(0):
        raise ValueError(f"{value!r} is not a positive duration")
    return duration


def parse_since(
    value: datetime | timedelta | str | None, *, now: datetime | None = None
) -> datetime | None:
    """A `since` bound → an aware UTC datetime (None stays None).

    Accepts a datetime (naive means UTC), a timedelta or a duration string (`30m`, `6h`, `1d`,
    `2w`: that long before now), or an ISO date or datetime string (`2026-11-01`,
    `2026-11-01T08:00:00+01:00`).

    Raises:
        ValueError: a string that is neither a duration nor an ISO date, or a negative age.

    Example:
        >>> parse_since("2026-11-01")
        datetime.datetime(2026, 11, 1, 0, 0, tzinfo=datetime.timezone.utc)
        >>> now = datetime(2026, 11, 2, tzinfo=UTC)
        >>> parse_since("1d", now=now).isoformat()
        '2026-11-01T00:00:00+00:00'
    """
    if value is None:
        return None
    if isinstance(value, datetime):
        return as_utc(value)
    reference = as_utc(now) if now is not None else datetime.now(UTC)
    if isinstance(value, timedelta):
        if value < timedelta(0):
            raise ValueError(f"since={value!r}: a negative age would be in the future")
        return reference - value
    if _DURATION.match(value):
        return reference - parse_duration(value)
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"since={value!r}: use a duration (30m, 6h, 1d, 2w) or an ISO date (2026-11-01)"
        ) from None
    return as_utc(parsed)


def query(
    *,
    tenant: str,
    agent: str | None = None,
    step: str | None = None,
    since: datetime | timedelta | str | None = None,
    below: float | None = None,
    path: str | None = None,
    subject: str | None = None,
    limit: int = 100,
    url: str | None = None,
) -> list[DecisionRecord]:
    """A tenant's decisions, newest first, filtered.

    Args:
        tenant: the tenant (mandatory; another tenant's decisions are never returned).
        agent: only this agent's decisions.
        step: only this reasoning step's decisions.
        since: only decisions made since then: `"1d"`, `"6h"`, `"30m"`, an ISO string, a
            timedelta (that long ago) or a datetime (naive means UTC).
        below: only decisions with a confidence strictly below this (unscored ones excluded).
        path: only decisions reached this way: direct, fallback_model, human, default, rejected.
        subject: only decisions about this subject.
        limit: at most this many (the newest).
        url: database URL; None means the settings' URL.

    Returns:
        `DecisionRecord` rows (detached; their datetimes aware, in UTC).

    Raises:
        ValueError: no tenant, a bad `since`, or a limit below 1.

    Example:
        >>> query(tenant="acme", agent="triage", since="6h", path="human", url="sqlite://")
        []
    """
    return find_decisions(
        tenant=tenant,
        agent=agent,
        step=step,
        since=parse_since(since),
        below=below,
        path=path,
        subject=subject,
        limit=limit,
        url=url,
    )


def get(decision_id: str, *, tenant: str, url: str | None = None) -> DecisionRecord | None:
    """One decision by id, or None when that tenant has no such decision.

    Example:
        >>> get("0" * 32, tenant="acme", url="sqlite://") is None
        True
    """
    return get_decision(decision_id, tenant=tenant, url=url)


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

    Columns: step, subject, path, confidence, model, tokens (in/out), cost (USD), latency ms
    and the rationale cut to 80 characters. Every value is passed through `scrub_text`.

    Example:
        >>> print(summary_table([DecisionRecord(tenant="acme", agent="a", step="route",
        ...                                     input_digest="0" * 64, confidence=0.42,
        ...                                     rationale="refund asked")]))
        | step | subject | path | confidence | model | tokens | cost | latency ms | rationale |
        |---|---|---|---|---|---|---|---|---|
        | route |  | direct | 0.42 |  | 0/0 | 0.0000 |  | refund asked |
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
