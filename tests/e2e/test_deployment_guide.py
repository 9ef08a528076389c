"""docs/deployment.md works as written: its `bash` blocks run, in order, in one bash process at the
repository root, against a real `prefect server` on loopback (its database on the local
PostgreSQL, its messaging through the local Redis) and a `stalwart worker`, both started and
stopped by the guide's own commands.

The test gives the guide's settings (step 2) its own values, a free port and fresh databases,
and a home directory of its own (the guide writes its logs there); everything else is the
guide's text. The machine's `PREFECT_*` and `STALWART_*` variables are not passed on: the guide
must say everything a fresh shell needs.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse, urlunparse

import pytest

from agents.testing.prefect_server import (
    DROPPED_EVENT_MARK,
    claim_redis_database,
    descendants,
    free_port,
    redis_database_url,
    release_redis_database,
)
from tests.support.postgres import PG_ADMIN_URL, create_pg_database, drop_pg_database

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "deployment.md"
REDIS = os.environ.get("STALWART_TEST_REDIS", "redis://127.0.0.1:6379")

#: The guide's settings the test gives values of its own (each must be exported by the guide).
OVERRIDDEN = (
    "PREFECT_SERVER_API_HOST",
    "PREFECT_SERVER_API_PORT",
    "PREFECT_API_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
    "PREFECT_REDIS_MESSAGING_URL",
    "STALWART_DATABASE_URL",
)
_BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)
_EXPORT = re.compile(r"^export (\w+)=\S*$")


def guide_blocks(text: str) -> list[str]:
    """The guide's ```bash blocks, in order."""
    return list(_BASH_BLOCK.findall(text))


def guide_script(text: str, values: dict[str, str]) -> str:
    """The guide's bash blocks as one script, the settings in `values` given those values."""
    lines = ["set -euo pipefail"]
    for block in guide_blocks(text):
        for line in block.splitlines():
            found = _EXPORT.match(line)
            if found and found.group(1) in values:
                line = f"export {found.group(1)}={shlex.quote(values[found.group(1)])}"
            lines.append(line)
    return "\n".join(lines) + "\n"


def test_the_guide_exports_every_setting_the_test_replaces() -> None:
    """The substitution depends on the guide's own settings block: if the guide stops setting
    one of these, the test would silently run with the machine's value instead."""
    exported = {
        m.group(1)
        for block in guide_blocks(GUIDE.read_text())
        for m in map(_EXPORT.match, block.splitlines())
        if m
    }
    assert set(OVERRIDDEN) <= exported, set(OVERRIDDEN) - exported
    assert "STALWART_PROJECT_DIR" in exported


def test_stalwart_worker_warns_at_start_without_the_project_dir(tmp_path: Path) -> None:
    """Named before any run is taken (`--help` keeps the check out of the way: it only prints
    the options, and nothing is started)."""
    env = {k: v for k, v in os.environ.items() if k != "STALWART_PROJECT_DIR"}
    probe = (
        "import sys\n"
        "import agents.worker as w\n"
        "w.run_worker = lambda args, reclaim_every_s: print('started', args)\n"
        "w.main(sys.argv[1:])\n"
    )

    def start(**extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", probe, "--pool", "stalwart"],
            env={**env, **extra},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )

    unset = start()
    assert "warning: STALWART_PROJECT_DIR is not set" in unset.stderr, unset
    assert "started ['--pool', 'stalwart']" in unset.stdout
    missing = start(STALWART_PROJECT_DIR=str(tmp_path / "missing"))
    assert "is not a directory" in missing.stderr and "missing" in missing.stderr
    assert "STALWART_PROJECT_DIR" not in start(STALWART_PROJECT_DIR=str(ROOT)).stderr


def test_the_pull_step_names_the_missing_project_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Before any flow code loads, and whatever Prefect made of the unset template (``)."""
    from agents.worker import ProjectDirError, enter_project_dir

    monkeypatch.delenv("STALWART_PROJECT_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectDirError, match="STALWART_PROJECT_DIR is not set"):
        enter_project_dir("")
    assert Path.cwd() == tmp_path
    assert enter_project_dir(str(ROOT)) == {"directory": str(ROOT)}
    assert Path.cwd() == ROOT


@pytest.fixture
def redis_database() -> Iterator[str]:
    """A Redis database number of this test's own (claimed like a test server's), flushed."""
    database, token = claim_redis_database(REDIS)
    try:
        yield redis_database_url(REDIS, database)
    finally:
        release_redis_database(REDIS, database, token)


def _watch_descendants(root: int, seen: set[int], stop: threading.Event) -> None:
    """Note every process below `root` while it runs: flow-run processes start sessions of
    their own, so ending the script's process group would not reach them."""
    while not stop.wait(0.5):
        seen.update(descendants(root))


def _end(pids: set[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_the_deployment_guide_runs_as_written(redis_database: str, tmp_path: Path) -> None:
    from sqlmodel import Session, select

    from agents.store.engine import get_engine
    from agents.store.tables import AgentRun

    state_name, state_url = create_pg_database()
    prefect_name, _ = create_pg_database()
    port = free_port()
    admin = urlparse(PG_ADMIN_URL)
    values = {
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(port),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_API_DATABASE_CONNECTION_URL": urlunparse(
            admin._replace(scheme="postgresql+asyncpg", path=f"/{prefect_name}")
        ),
        "PREFECT_REDIS_MESSAGING_URL": redis_database,
        "STALWART_DATABASE_URL": state_url,
    }
    script = guide_script(GUIDE.read_text(), values)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PREFECT_", "STALWART_", "SENTRY_")) and k != "PYTHONPATH"
    }
    env.update(
        HOME=str(home),
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        # This machine is offline: Prefect's telemetry would log an error per run.
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    if "PYTHONPATH" in os.environ:  # a worktree whose package is installed from elsewhere
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    seen: set[int] = set()
    stop = threading.Event()
    shell = subprocess.Popen(
        ["bash", "-c", script],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,  # as on a server: no prompt may wait for an answer
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    watcher = threading.Thread(target=_watch_descendants, args=(shell.pid, seen, stop), daemon=True)
    watcher.start()
    try:
        output, _ = shell.communicate(timeout=780)
    except subprocess.TimeoutExpired:
        output = "(timed out)"
    finally:
        stop.set()
        watcher.join(5)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(shell.pid, signal.SIGKILL)
        shell.wait(10)
        _end(seen)

    def logs() -> dict[str, Any]:
        found = {
            name: (home / name).read_text(errors="replace")[-3000:]
            for name in ("prefect-server.log", "stalwart-worker.log")
            if (home / name).exists()
        }
        return {"script": output[-4000:], **found}

    try:
        assert shell.returncode == 0, logs()
        with Session(get_engine(state_url)) as session:
            runs = session.exec(select(AgentRun).where(AgentRun.tenant == "demo")).all()
        assert len(runs) == 3 and {r.status for r in runs} == {"completed"}, logs()
        assert "Flow run finished successfully" in output, logs()
        # The server's events went through Redis (its streams are still there) and none was
        # dropped.
        import redis

        with redis.Redis.from_url(redis_database) as client:
            assert client.dbsize() > 1, "nothing of the server's messaging reached Redis"
        assert (home / "prefect-server.log").read_text().count(DROPPED_EVENT_MARK) == 0
        # The guide's `kill -TERM` stopped the worker: one SIGTERM, no second one needed.
        assert (home / "stalwart-worker.log").read_text().count("Received SIGTERM") == 1
    finally:
        drop_pg_database(state_name)
        drop_pg_database(prefect_name)
