"""qa-runs accuracy: one round over the ten bundled sample projects, every verdict compared with
`flows/data/qa_projects/ground_truth.json`.

Usage:
    python bench/qa_accuracy.py [--keep]

All offline: the bundled model server answers, the state database is SQLite in a temporary
directory and Prefect runs its ephemeral API. Prints one line per failing test (expected, got,
confidence, tools the model consulted), then the accuracy, the model requests and the tool
calls. A held failure counts as `needs_review`. It is not a test and is not collected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="qa-accuracy-"))
    os.environ["STALWART_DATA_DIR"] = str(work / "data")
    os.environ["STALWART_DATABASE_URL"] = f"sqlite:///{work / 'state.db'}"
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    for name in ("STALWART_MODEL_URL", "STALWART_API_KEY", "SENTRY_DSN"):
        os.environ.pop(name, None)

    from agents.modelserver import ModelServer

    server = ModelServer(port=0).start()
    os.environ["STALWART_MODEL_URL"] = server.url
    from agents import decisions
    from agents.store import upgrade

    upgrade(os.environ["STALWART_DATABASE_URL"])
    from flows.qa import report as reports
    from flows.qa_runs import BUNDLED_PROJECTS, bundled_projects, plan, qa, reports_root

    truth: dict[str, dict[str, str]] = json.loads(
        (BUNDLED_PROJECTS / "ground_truth.json").read_text()
    )["failures"]
    names = bundled_projects()
    results = qa.batch(plan(names, round="accuracy"), tenant="accuracy", concurrency=4)
    consulted: dict[str, list[str]] = {}
    for row in decisions.query(tenant="accuracy", agent="qa-runs", limit=1000):
        for call in row.tool_calls or []:
            test = str(call.get("arguments", {}).get("test_id", ""))
            consulted.setdefault(test, []).append(str(call["tool"]))

    right = total = 0
    lines: list[dict[str, Any]] = []
    for project in names:
        report = json.loads(
            reports.report_path(reports_root(), "accuracy", project, "accuracy").read_text()
        )
        for failure in report["failures"]:
            got = reports.NEEDS_REVIEW if failure["status"] == reports.NEEDS_REVIEW else None
            got = got or str(failure["kind"])
            expected = truth[project].get(failure["test"], "?")
            total += 1
            right += got == expected
            lines.append(
                {
                    "test": f"{project}::{failure['test'].split('::')[-1]}",
                    "expected": expected,
                    "got": got,
                    "confidence": failure.get("confidence"),
                    "tools": sorted(set(consulted.get(failure["test"], []))),
                }
            )
    for line in lines:
        mark = "ok " if line["expected"] == line["got"] else "BAD"
        print(
            f"{mark} {line['test']:<52} expected {line['expected']:<12} got {line['got']:<12} "
            f"conf {line['confidence']}  tools {','.join(line['tools']) or '-'}"
        )
    expected_total = sum(len(v) for v in truth.values())
    print(
        f"accuracy {right}/{total} ({right / max(1, total):.0%}); ground truth lists "
        f"{expected_total}; runs {sorted({r.status for r in results})}; model requests "
        f"{server.stats.requests_total}; tool calls {server.stats.tool_calls_total}"
    )
    result = {
        "right": right,
        "total": total,
        "requests": server.stats.requests_total,
        "tool_calls": server.stats.tool_calls_total,
        "failures": lines,
    }
    print("ACCURACY_RESULT " + json.dumps(result))
    server.stop()
    if args.keep:
        print(f"kept {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
