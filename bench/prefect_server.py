"""A real Prefect server on a temporary PostgreSQL database, for `bench_core.py --server postgres`.

`prefect server start --host 127.0.0.1 --port P` with
`PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://postgres@127.0.0.1:5432/<fresh db>`
(PostgreSQL on loopback, trust auth), analytics off; healthy once `GET /api/health` answers
(about 5 s on a fresh database, see PREFECT-NOTES.md). Started in its own session and stopped
by PID with one SIGTERM (a SIGKILL of its process group only if it has not exited 30 s later);
the database is dropped afterwards. Its log is where the dropped-message warnings land.

`messaging="redis"` adds prefect-redis's settings (Redis at 127.0.0.1:6379) if prefect-redis is
installed; otherwise it is ignored with a note (`skipped_messaging`). Each server claims a Redis
database number of its own, as the test servers do (`agents.testing.prefect_server`), and flushes
it when it stops: a stopped server's unconsumed events must not be read by the next mode's server,
whose task-run recorder would fail whole batches on their unknown flow runs.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agents.testing.prefect_server import (
    REDIS_MESSAGING_SETTINGS,
    claim_redis_database,
    free_port,
    redis_database_url,
    release_redis_database,
)

ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ASYNC_BASE = "postgresql+asyncpg://postgres@127.0.0.1:5432"
REDIS_URL = "redis://127.0.0.1:6379"
HEALTH_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0


def redis_settings(url: str) -> dict[str, str]:
    """prefect-redis messaging, ordering, lease storage and docket (PREFECT-NOTES.md), all in
    the Redis database `url` names."""
    return {
        **REDIS_MESSAGING_SETTINGS,
        "PREFECT_SERVER_DOCKET_URL": url,
        "PREFECT_REDIS_MESSAGING_URL": url,
    }


class PrefectServer:
    """One Prefect server process on a fresh PostgreSQL database (a context manager)."""

    def __init__(
        self,
        log_path: Path,
        label: str,
        messaging: str = "memory",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.log_path = log_path
        self.settings = dict(settings or {})
        self.database = f"stalwart_bench_prefect_{uuid.uuid4().hex[:8]}_{label.lower()}"
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.messaging = messaging
        self.skipped_messaging: str | None = None
        self.started_s = 0.0
        self.redis_claim: tuple[int, str] | None = None

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    def child_env(self) -> dict[str, str]:
        """What a benchmark child needs to use this server (and to find its CPU and log)."""
        assert self.proc is not None
        return {
            "PREFECT_API_URL": self.api_url,
            "BENCH_API_PID": str(self.proc.pid),
            "BENCH_SERVER_LOG": str(self.log_path),
        }

    def __enter__(self) -> PrefectServer:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'CREATE DATABASE "{self.database}"')
        try:
            self._start()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _start(self) -> None:
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
        env.update(
            {
                "PREFECT_API_DATABASE_CONNECTION_URL": f"{ASYNC_BASE}/{self.database}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "PREFECT_SERVER_API_PORT": str(self.port),
                "PREFECT_HOME": str(self.log_path.parent / f"prefect-home-{self.database}"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        env.update(self.settings)
        if self.messaging == "redis":
            if importlib.util.find_spec("prefect_redis") is None:
                self.skipped_messaging = "prefect-redis is not installed: in-memory messaging"
            else:
                self.redis_claim = database, _ = claim_redis_database(REDIS_URL)
                env.update(redis_settings(redis_database_url(REDIS_URL, database)))
        prefect = shutil.which("prefect", path=str(Path(sys.executable).parent)) or "prefect"
        command = [prefect, "server", "start", "--host", "127.0.0.1", "--port", str(self.port)]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )
        self._wait_healthy()
        self.started_s = time.perf_counter() - started

    def _wait_healthy(self) -> None:
        import httpx

        assert self.proc is not None
        deadline = time.perf_counter() + HEALTH_TIMEOUT_S
        while time.perf_counter() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"prefect server exited with {self.proc.returncode}; see {self.log_path}"
                )
            try:
                if httpx.get(f"{self.api_url}/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"prefect server not healthy in {HEALTH_TIMEOUT_S:.0f} s")

    def __exit__(self, *_: Any) -> None:
        if self.proc is not None:
            self._stop(self.proc)
            self.proc = None
        if self.redis_claim is not None:
            release_redis_database(REDIS_URL, *self.redis_claim)
            self.redis_claim = None
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=10) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        shutil.rmtree(self.log_path.parent / f"prefect-home-{self.database}", ignore_errors=True)

    @staticmethod
    def _stop(proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # one SIGTERM, by PID
            try:
                proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # its own session: only its processes
                proc.wait(timeout=STOP_TIMEOUT_S)
        else:
            proc.wait()
