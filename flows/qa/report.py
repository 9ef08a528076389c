"""One report per project and round: shard parts on disk, merged into a JSON file and a Prefect
markdown artifact.

Each shard's run writes its parts (`shard-<i>.classified.json` when its failures are
classified, `shard-<i>.rerun.json` after its suspected flakes were rerun) and then rebuilds the
project's report from every part present, under a file lock: whichever shard finishes last
publishes the complete report, so the CLI (which knows nothing of projects) and the flow give
the same files. Layout, under `reports_dir`:

    <tenant>/<project>/<round>.json              the report
    <tenant>/<project>/<round>.parts/shard-*.json the parts it is built from

Example:
    >>> report = refresh(Path("/tmp/reports"), "default", "billing-api", "r1")  # doctest: +SKIP
    >>> report["status"]  # doctest: +SKIP
    'red'
"""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.qa.models import KINDS

#: Statuses of a failure in the report, from the worst to the most benign.
NEEDS_REVIEW = "needs_review"
"""The classification was below the agent's threshold: nothing was acted on."""


def safe_name(text: str) -> str:
    """A file-name-safe version of a project or round name.

    Example:
        >>> safe_name("2026-11-25T05:00 nightly")
        '2026-11-25T05-00-nightly'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "_"


def artifact_key(tenant: str, project: str) -> str:
    """The Prefect artifact key of a project's report (lowercase letters, digits, dashes).

    Example:
        >>> artifact_key("default", "billing-api")
        'qa-report-default-billing-api'
    """
    return re.sub(r"[^a-z0-9-]+", "-", f"qa-report-{tenant}-{project}".lower()).strip("-")


def report_path(reports_dir: Path, tenant: str, project: str, round: str) -> Path:
    """Where the merged JSON report of a project's round lives."""
    return reports_dir / safe_name(tenant) / safe_name(project) / f"{safe_name(round)}.json"


def _parts_dir(reports_dir: Path, tenant: str, project: str, round: str) -> Path:
    return reports_dir / safe_name(tenant) / safe_name(project) / f"{safe_name(round)}.parts"


def _write_atomic(path: Path, data: Any) -> None:
    # Write-then-rename: a reader (another shard rebuilding the report) never sees half a file.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    tmp.replace(path)


@contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def write_part(
    reports_dir: Path, tenant: str, project: str, round: str, name: str, data: dict[str, Any]
) -> dict[str, Any]:
    """Store one part of a shard, rebuild the project's report and publish it; returns it.

    All under the project's lock, so the newest artifact version is also the fullest.

    Example:
        >>> write_part(Path("/tmp/r"), "default", "geo-utils", "r1", "shard-0.classified",
        ...            {...})["status"]  # doctest: +SKIP
        'green'
    """
    parts = _parts_dir(reports_dir, tenant, project, round)
    with _locked(parts):
        _write_atomic(parts / f"{name}.json", data)
        report = build(reports_dir, tenant, project, round)
        _write_atomic(report_path(reports_dir, tenant, project, round), report)
        publish(report)
    return report


def build(reports_dir: Path, tenant: str, project: str, round: str) -> dict[str, Any]:
    """Merge every part of a project's round into one report (pure: reads, never writes)."""
    parts = _parts_dir(reports_dir, tenant, project, round)
    classified: dict[int, dict[str, Any]] = {}
    reruns: dict[int, dict[str, Any]] = {}
    for path in sorted(parts.glob("shard-*.json")):
        data = json.loads(path.read_text(encoding="utf-8"))
        target = reruns if path.name.endswith(".rerun.json") else classified
        target[int(data["shard"])] = data
    shards = max((int(c["shards"]) for c in classified.values()), default=0)
    failures: list[dict[str, Any]] = []
    totals: Counter[str] = Counter()
    known_flaky: set[str] = set()
    pytest_seconds = 0.0
    for index, part in sorted(classified.items()):
        totals.update(
            tests=part["tests"],
            passed=part["passed"],
            skipped=part["skipped"],
            executions=part["tests"],
        )
        pytest_seconds += float(part["pytest_seconds"])
        known_flaky.update(part.get("known_flaky", []))
        verdicts = {v["nodeid"]: v for v in part["verdicts"]}
        rerun = reruns.get(index)
        if rerun is not None:
            totals.update(executions=len(rerun["nodeids"]), reruns=len(rerun["nodeids"]))
            pytest_seconds += float(rerun["pytest_seconds"])
        for failure in part["failures"]:
            verdict = verdicts.get(failure["nodeid"], {})
            kind = verdict.get("kind", "real_bug")
            if part["held"]:
                status = NEEDS_REVIEW
            elif kind == "flaky":
                if rerun is None:
                    status = "rerun_pending"
                elif failure["nodeid"] in rerun["passed"]:
                    status = "flaky_confirmed"
                else:
                    status = "rerun_failed"
            else:
                status = "open"
            totals["failed"] += 1
            failures.append(
                {
                    "test": failure["nodeid"],
                    "shard": index,
                    "kind": kind,
                    "confidence": verdict.get("confidence", 0.0),
                    "source": verdict.get("source", "model"),
                    "status": status,
                    "rationale": verdict.get("rationale", ""),
                    "error": failure.get("message", "")[:300],
                }
            )
    by_kind = Counter(f["kind"] for f in failures if f["status"] != NEEDS_REVIEW)
    statuses = Counter(f["status"] for f in failures)
    complete = shards > 0 and len(classified) == shards
    if not complete:
        status = "incomplete"
    elif not failures:
        status = "green"
    elif all(f["status"] == "flaky_confirmed" for f in failures):
        status = "flaky"  # every failure passed its rerun: nothing is broken, something wobbles
    else:
        status = "red"
    return {
        "project": project,
        "tenant": tenant,
        "round": round,
        "status": status,
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "shards": {"planned": shards, "reported": len(classified), "rerun": len(reruns)},
        "totals": {
            "tests": totals["tests"],
            "passed": totals["passed"],
            "failed": totals["failed"],
            "skipped": totals["skipped"],
            "executions": totals["executions"],
            "reruns": totals["reruns"],
            "pytest_seconds": float(f"{pytest_seconds:.3f}"),
        },
        "by_kind": {kind: by_kind.get(kind, 0) for kind in KINDS},
        "by_status": dict(sorted(statuses.items())),
        "failures": sorted(failures, key=lambda f: (f["status"], f["test"])),
        "known_flaky": sorted(known_flaky),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as the markdown of a Prefect artifact.

    Example:
        >>> markdown(build(Path("/tmp/none"), "t", "p", "r")).splitlines()[0]
        '# QA report: p (round r)'
    """
    totals = report["totals"]
    shards = report["shards"]
    lines = [
        f"# QA report: {report['project']} (round {report['round']})",
        "",
        f"**Status: {report['status']}** · tenant `{report['tenant']}` · "
        f"{shards['reported']}/{shards['planned']} shards reported",
        "",
        "| tests | passed | failed | skipped | executions | reruns |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {totals['tests']} | {totals['passed']} | {totals['failed']} | {totals['skipped']} "
        f"| {totals['executions']} | {totals['reruns']} |",
        "",
    ]
    if report["failures"]:
        lines += [
            "| test | kind | confidence | status | error |",
            "|---|---|---:|---|---|",
        ]
        for f in report["failures"]:
            error = f["error"].replace("|", "\\|").replace("\n", " ")[:120]
            source = " (memory)" if f["source"] == "memory" else ""
            if f["status"] == NEEDS_REVIEW:
                source = " (unsure guess)"
            lines.append(
                f"| `{f['test']}` | {f['kind']}{source} | {f['confidence']:.2f} | "
                f"{f['status']} | {error} |"
            )
        lines.append("")
    else:
        lines += ["No failures.", ""]
    if report["known_flaky"]:
        known = ", ".join(f"`{t}`" for t in report["known_flaky"])
        lines += [f"Known flaky tests (remembered from earlier rounds): {known}", ""]
    return "\n".join(lines)


def publish(report: dict[str, Any]) -> str:
    """Create (a new version of) the project's markdown artifact; returns its key."""
    from prefect.artifacts import create_markdown_artifact

    key = artifact_key(report["tenant"], report["project"])
    # `_sync=True`: a sync step runs in a worker thread that inherits the flow's async
    # context, where the dispatching function would hand back an un-awaited coroutine.
    create_markdown_artifact(
        markdown=markdown(report),
        key=key,
        description=(
            f"QA report of {report['project']} (tenant {report['tenant']}), "
            f"round {report['round']}: {report['status']}"
        ),
        _sync=True,  # type: ignore[call-arg]
    )
    return key
