"""A pytest plugin, loaded in each test subprocess: pick one shard, record every outcome.

The QA runner starts `python -m pytest -p flows.qa.shard_plugin` with these variables:

- `QA_SHARD=i/n`: keep only the tests whose position in the sorted node ids is `i` modulo `n`
  (round-robin, so shards stay balanced and every process computes the same split);
- `QA_RESULTS=path`: write one JSON object per test there (outcome, phase, exception type,
  crash message and a short traceback); with `--collect-only`, one `{"nodeid": ...}` per test.

It imports nothing beyond pytest, so it adds almost nothing to a test process's start-up.

Example:
    QA_SHARD=0/2 QA_RESULTS=out.jsonl python -m pytest -p flows.qa.shard_plugin
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

#: Longest traceback kept per failure: enough for the failing line and the exception.
MAX_TRACEBACK = 2000

_results: dict[str, dict[str, Any]] = {}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect every test outside this process's shard."""
    spec = os.environ.get("QA_SHARD")
    if not spec:
        return
    index, count = (int(part) for part in spec.split("/"))
    position = {nodeid: i for i, nodeid in enumerate(sorted(item.nodeid for item in items))}
    keep = [item for item in items if position[item.nodeid] % count == index]
    dropped = [item for item in items if position[item.nodeid] % count != index]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = keep


def pytest_collection_finish(session: pytest.Session) -> None:
    """With `--collect-only`, list the node ids (the flow plans shards from them)."""
    target = os.environ.get("QA_RESULTS")
    if target and session.config.option.collectonly:
        with open(target, "w", encoding="utf-8") as handle:
            for item in session.items:
                handle.write(json.dumps({"nodeid": item.nodeid}) + "\n")


def pytest_collectreport(report: pytest.CollectReport) -> None:
    """A module that fails to import (a syntax error, a missing module) is a failure too."""
    if report.failed:
        text = report.longreprtext
        last = text.strip().splitlines()[-1] if text.strip() else "collection failed"
        _results[report.nodeid] = {
            "nodeid": report.nodeid,
            "outcome": "error",
            "phase": "collect",
            "exc_type": last.split(":", 1)[0].removeprefix("E").strip(),
            "message": last.removeprefix("E").strip()[:500],
            "traceback": text[-MAX_TRACEBACK:],
            "duration": 0.0,
        }


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep the first failing phase of each test (setup, call or teardown), else its pass."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    entry = _results.get(report.nodeid)
    if entry is not None and entry["outcome"] in ("failed", "error"):
        return  # a teardown after a failed call does not hide the call's failure
    if report.failed:
        crash = getattr(report.longrepr, "reprcrash", None)
        text = report.longreprtext
        # A setup error (a missing fixture) has no crash line: take pytest's first `E` line.
        e_lines = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
        _results[report.nodeid] = {
            "nodeid": report.nodeid,
            "outcome": "failed" if report.when == "call" else "error",
            "phase": report.when,
            "exc_type": call.excinfo.typename if call.excinfo else "",
            "message": (crash.message if crash else (e_lines or [text])[0])[:500],
            "traceback": text[-MAX_TRACEBACK:],
            "duration": round(report.duration, 4),
        }
    elif report.skipped and entry is None:
        _results[report.nodeid] = {
            "nodeid": report.nodeid,
            "outcome": "skipped",
            "phase": report.when,
            "duration": 0.0,
        }
    elif report.when == "call" and report.passed:
        _results[report.nodeid] = {
            "nodeid": report.nodeid,
            "outcome": "passed",
            "phase": "call",
            "duration": round(report.duration, 4),
        }


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Write the outcomes (a crash mid-run leaves the file missing: the runner notices)."""
    target = os.environ.get("QA_RESULTS")
    if not target or session.config.option.collectonly:
        return
    with open(target, "w", encoding="utf-8") as handle:
        for entry in _results.values():
            handle.write(json.dumps(entry) + "\n")
