"""A real Prefect server and real process workers on loopback, started and stopped by PID.

For end-to-end tests, benchmarks and the UI screenshot: `PrefectServer` runs `prefect server
start` on 127.0.0.1 with its database on PostgreSQL (a fresh database per server, dropped on
exit) or SQLite; `Worker` runs `prefect worker start` against it. Both are stopped with one
SIGTERM to their process group (they run in their own session: a child started from a script
ignores SIGINT, and Prefect turns SIGTERM into SIGINT), then SIGKILL if they linger.

For fault injection: `PrefectServer.restart()` stops the server process (by PID) and starts it
again on the same port and database; `Worker.kill()` SIGKILLs a worker and every process below it
(its flow-run processes run in sessions of their own, so killing the worker's group alone would
leave them running: a lost machine takes them all).

Example:
    >>> with PrefectServer(postgres="postgresql://postgres@127.0.0.1:5432/postgres") as server:
    ...     server.cli("work-pool", "create", "stalwart", "--type", "process")  # doctest: +SKIP
    ...     with Worker(server, pool="stalwart"):
    ...         ...
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlparse, urlunparse

import httpx

from agents.execution.recording import SERVER_SETTINGS

__all__ = ["PrefectServer", "Worker", "descendants", "free_port"]


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (children, grandchildren, ...), read from /proc.

    Example:
        >>> descendants(os.getpid()) == [] or all(p > 0 for p in descendants(os.getpid()))
        True
    """
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = (entry / "stat").read_text()
            # The command name may hold spaces or parentheses: fields start after the last ')'.
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _tail(path: Path, lines: int) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _stop(process: subprocess.Popen[bytes], grace: float) -> None:
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class PrefectServer:
    """`prefect server start` on loopback, its database fresh, stopped by PID.

    Args:
        postgres: Admin URL of a PostgreSQL server (a database named `prefect_<random>` is
            created there and dropped on exit); None puts the server's database in SQLite.
        port: The port; a free one when None.
        env: Extra environment for the server (e.g. `PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT`).
        startup_timeout: Seconds to wait for `/api/health`.
    """

    def __init__(
        self,
        *,
        postgres: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
    ) -> None:
        self.port = port or free_port()
        self.postgres = postgres
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self.home = Path(tempfile.mkdtemp(prefix="stalwart-prefect-server-"))
        self.database = f"prefect_{uuid.uuid4().hex[:10]}"
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.home / "server.log"

    @property
    def api_url(self) -> str:
        """The API URL clients and workers use (`PREFECT_API_URL`)."""
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui_url(self) -> str:
        """The UI's address."""
        return f"http://127.0.0.1:{self.port}"

    def client_env(self, **extra: str) -> dict[str, str]:
        """The environment of a process that talks to this server (CLI, worker, script)."""
        env = dict(os.environ)
        env.update(
            PREFECT_API_URL=self.api_url,
            PREFECT_HOME=str(self.home / "client"),
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_CLI_PROMPT="false",
        )
        env.update(extra)
        return env

    def _database_url(self) -> str:
        if self.postgres is None:
            return f"sqlite+aiosqlite:///{self.home / 'prefect.db'}"
        parts = urlparse(self.postgres)
        return urlunparse(parts._replace(scheme="postgresql+asyncpg", path=f"/{self.database}"))

    def _admin(self, sql: str) -> None:
        import psycopg

        assert self.postgres is not None
        url = urlunparse(urlparse(self.postgres)._replace(scheme="postgresql"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.encode())  # names are generated here, never user input

    def start(self) -> PrefectServer:
        """Create the database, launch the server and wait until it answers."""
        if self.postgres is not None:
            self._admin(f'CREATE DATABASE "{self.database}"')
        return self.start_process()

    def start_process(self) -> PrefectServer:
        """Launch the server on its port and database (created already); wait until it answers.

        Example:
            >>> server.stop_process(); server.start_process()  # doctest: +SKIP
        """
        env = dict(os.environ)
        env.pop("PREFECT_API_URL", None)
        env.update(
            PREFECT_HOME=str(self.home),
            PREFECT_API_DATABASE_CONNECTION_URL=self._database_url(),
            PREFECT_SERVER_API_HOST="127.0.0.1",
            PREFECT_SERVER_API_PORT=str(self.port),  # the UI reads its API port from here
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            PREFECT_SERVER_UI_SHOW_PROMOTIONAL_CONTENT="false",
            PREFECT_LOGGING_LEVEL="WARNING",
        )
        env.update(SERVER_SETTINGS)  # records task runs as fast as batches make them
        env.update(self.extra_env)
        args = [sys.executable, "-m", "prefect", "server", "start"]
        args += ["--host", "127.0.0.1", "--port", str(self.port)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"prefect server exited: {self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.api_url}/health", timeout=2).status_code == 200:
                    return self
            time.sleep(0.3)
        self.stop()
        raise TimeoutError(f"prefect server not healthy in {self.startup_timeout:g} s")

    def stop_process(self) -> None:
        """Stop the server process by PID (SIGTERM, SIGKILL after 15 s); keep its database.

        Example:
            >>> server.stop_process()  # doctest: +SKIP
        """
        if self.process is not None:
            _stop(self.process, grace=15)

    def restart(self, down_s: float = 0.0) -> float:
        """Stop the server process, stay down `down_s` seconds, start it again on the same
        port and database; return the seconds it was unreachable.

        Example:
            >>> server.restart(down_s=5)  # doctest: +SKIP
            9.8
        """
        started = time.monotonic()
        self.stop_process()
        time.sleep(down_s)
        self.start_process()
        return time.monotonic() - started

    def cli(self, *args: str, cwd: str | Path | None = None, timeout: float = 120) -> str:
        """Run `prefect <args>` against this server; return its output, raise on failure."""
        done = subprocess.run(
            [sys.executable, "-m", "prefect", *args],
            env=self.client_env(),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if done.returncode != 0:
            raise RuntimeError(f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the server printed."""
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM the server's process group (SIGKILL after 15 s), then drop its database."""
        self.stop_process()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def __enter__(self) -> PrefectServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


class Worker:
    """`prefect worker start --pool POOL` against a `PrefectServer`, stopped by PID.

    With `reclaim_every_s`, `stalwart worker --reclaim-every S --pool POOL` instead: the same
    worker, collecting its garbage and trimming its heap every S seconds (`agents.worker`).

    Args:
        server: The server to poll.
        pool: The work pool's name.
        cwd: Working directory (the project root, so entrypoints resolve).
        env: Extra environment for the worker and the flow runs it starts.
        name: The worker's name.
        limit: Flow runs the worker runs at once.
        unset: Variables of this process the worker must not inherit.
        reclaim_every_s: Run `stalwart worker` with this reclaim period (None: plain Prefect).
    """

    def __init__(
        self,
        server: PrefectServer,
        *,
        pool: str,
        cwd: str | Path | None = None,
        env: dict[str, str] | None = None,
        name: str | None = None,
        limit: int | None = None,
        unset: tuple[str, ...] = (),
        reclaim_every_s: float | None = None,
    ) -> None:
        self.server = server
        self.reclaim_every_s = reclaim_every_s
        self.unset = unset
        self.pool = pool
        self.cwd = cwd
        self.env = dict(env or {})
        self.name = name or f"worker-{uuid.uuid4().hex[:6]}"
        self.limit = limit
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = server.home / f"{self.name}.log"

    def start(self) -> Worker:
        """Launch the worker process (it polls every second)."""
        env = self.server.client_env(PREFECT_WORKER_QUERY_SECONDS="1", **self.env)
        for name in self.unset:
            env.pop(name, None)
        if self.reclaim_every_s is None:
            args = [sys.executable, "-m", "prefect", "worker", "start"]
        else:
            args = [sys.executable, "-c", "from agents.cli import main; main()", "worker"]
            args += ["--reclaim-every", str(self.reclaim_every_s)]
        args += ["--type", "process"]
        args += ["--pool", self.pool, "--name", self.name]
        if self.limit is not None:
            args += ["--limit", str(self.limit)]
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            args,
            env=env,
            cwd=self.cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        """The worker's process id."""
        assert self.process is not None
        return self.process.pid

    def log_tail(self, lines: int = 40) -> str:
        """The last lines the worker printed."""
        return _tail(self.log_path, lines)

    def stop(self) -> None:
        """SIGTERM the worker's process group (SIGKILL after 10 s)."""
        if self.process is not None:
            _stop(self.process, grace=10)

    @property
    def running(self) -> bool:
        """Whether the worker's process is started and has not exited."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> list[int]:
        """SIGKILL the worker and every process below it at once, as a lost machine would.

        Returns the killed process ids (the worker's first). `start()` launches it again.

        Example:
            >>> worker.kill()  # doctest: +SKIP
            [4242, 4250, 4251]
        """
        if not self.running or self.process is None:
            return []
        victims = [self.process.pid, *descendants(self.process.pid)]
        groups = set()
        for pid in victims:
            with contextlib.suppress(OSError):
                groups.add(os.getpgid(pid))
        for pid in victims:  # first the processes, so none gets to react to a sibling's death
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in groups - {os.getpgrp()}:  # never our own group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(group, signal.SIGKILL)
        self.process.wait(timeout=10)
        return victims

    def __enter__(self) -> Worker:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
