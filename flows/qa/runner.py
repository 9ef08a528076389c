"""Run (part of) a project's pytest suite in a subprocess and read back every outcome.

The subprocess gets a clean environment (PATH, HOME, locale, temp dir): a client suite never
sees the orchestrator's secrets (`STALWART_API_KEY`, database URLs), and configuration it
lacks shows up as the environment failure it would be on a fresh CI machine.

Example:
    >>> run_pytest(Path("flows/data/qa_projects/geo-utils"), state_dir=Path("/tmp/s"),
    ...            shard=(0, 2)).results[0].outcome  # doctest: +SKIP
    'passed'
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from flows.qa.models import Execution, TestResult

#: The directory holding the `flows` package: on the subprocess's path for the plugin.
REPO_ROOT = Path(__file__).resolve().parents[2]
#: Environment variables a test subprocess inherits; everything else stays behind.
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "SYSTEMROOT", "TZ")


class PytestCrashed(RuntimeError):
    """pytest ended without writing its results (an internal error, a kill, a timeout)."""


def _environment(state_dir: Path, results: Path, shard: tuple[int, int] | None) -> dict[str, str]:
    env = {name: os.environ[name] for name in PASSED_ENV if name in os.environ}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        # No __pycache__ in the project directories (the bundled ones live in the repository).
        PYTHONDONTWRITEBYTECODE="1",
        # Entry-point plugins installed next to Stalwart (Prefect's, pytest-benchmark, ...) cost
        # 0.75 s per process here and mean nothing to a client suite; a suite that needs one
        # names it in its own pytest.ini (`addopts = -p pytest_asyncio`).
        PYTEST_DISABLE_PLUGIN_AUTOLOAD="1",
        QA_STATE_DIR=str(state_dir),
        QA_RESULTS=str(results),
    )
    if shard is not None:
        env["QA_SHARD"] = f"{shard[0]}/{shard[1]}"
    return env


def _pytest(
    project_dir: Path, args: Sequence[str], env: dict[str, str], timeout: float
) -> tuple[int, str]:
    project_dir = project_dir.resolve()
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "flows.qa.shard_plugin",
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=short",
        # The project is its own rootdir: conftest files above it are never loaded.
        f"--rootdir={project_dir}",
        f"--confcutdir={project_dir}",
        *args,
    ]
    try:
        done = subprocess.run(
            command,
            cwd=project_dir,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise PytestCrashed(f"pytest in {project_dir.name} ran over {timeout:.0f}s") from exc
    return done.returncode, (done.stdout + done.stderr)[-1500:]


def collect(project_dir: Path, *, timeout: float = 120.0) -> list[str]:
    """The node ids of a project's suite, sorted (what the shards are cut from).

    Example:
        >>> len(collect(Path("flows/data/qa_projects/geo-utils")))  # doctest: +SKIP
        6
    """
    with tempfile.TemporaryDirectory(prefix="qa-collect-") as tmp:
        results = Path(tmp) / "collected.jsonl"
        env = _environment(Path(tmp), results, None)
        code, output = _pytest(project_dir, ["--collect-only"], env, timeout)
        if not results.exists():
            raise PytestCrashed(f"collecting {project_dir.name} failed (exit {code}): {output}")
        lines = results.read_text(encoding="utf-8").splitlines()
    return sorted(json.loads(line)["nodeid"] for line in lines if line.strip())


def run_pytest(
    project_dir: Path,
    *,
    state_dir: Path,
    shard: tuple[int, int] | None = None,
    nodeids: Sequence[str] = (),
    timeout: float = 600.0,
) -> Execution:
    """Execute a shard (`shard=(i, n)`) or given tests (`nodeids`) of the suite in `project_dir`.

    Args:
        project_dir: The project: its own `pytest.ini`, a `tests/` directory.
        state_dir: Given to the tests as `QA_STATE_DIR` (per round: a rerun sees the first
            execution's state, the next round starts afresh).
        shard: Run only the tests at positions `i`, `i + n`, ... of the sorted node ids.
        nodeids: Run only these tests (a rerun).
        timeout: Seconds before the subprocess is killed and the run counts as crashed.

    Raises:
        PytestCrashed: pytest wrote no results (exit codes 0, 1 and 5 are normal).
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix="qa-results-", suffix=".jsonl")
    os.close(fd)
    results = Path(name)
    results.unlink()
    try:
        env = _environment(state_dir, results, shard)
        started = time.perf_counter()
        code, output = _pytest(project_dir, list(nodeids), env, timeout)
        seconds = time.perf_counter() - started
        if not results.exists():
            raise PytestCrashed(f"pytest in {project_dir.name} exited {code}: {output}")
        parsed = [
            TestResult.model_validate_json(line)
            for line in results.read_text(encoding="utf-8").splitlines()
            if line.strip()
        ]
    finally:
        results.unlink(missing_ok=True)
    return Execution(results=parsed, seconds=round(seconds, 4), exit_code=code)
