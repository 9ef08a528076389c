"""A real Prefect server and real process workers on loopback, started and stopped by PID.

For end-to-end tests, benchmarks and the UI screenshot: `PrefectServer` runs `prefect server
start` on 127.0.0.1 with its database on PostgreSQL (a fresh database per server, dropped on
exit) or SQLite; `Worker` runs `prefect worker start` against it. Both are stopped with one
SIGTERM to their process group (they run in their own session: a child started from a script
ignores SIGINT, and Prefect turns SIGTERM into SIGINT), then SIGKILL if they linger.

With `redis=` the server's messaging (events, the cache, causal ordering, concurrency leases) goes
through Redis (`prefect-redis`, the `redis` extra) instead of in-memory queues, whose 10,000-slot
subscription queues drop events under load (`REDIS_MESSAGING_SETTINGS`, docs/deployment.md).
Each server claims a Redis database number of its own (1-15) so parallel servers never read each
other's streams, and flushes it when it stops.

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

__all__ = [
    "DROPPED_EVENT_MARK",
    "REDIS_MESSAGING_SETTINGS",
    "PrefectServer",
    "RedisClaimError",
    "Worker",
    "claim_redis_database",
    "descendants",
    "free_port",
    "redis_database_url",
    "release_redis_database",
]

#: A Prefect server's messaging through Redis (`prefect-redis`) instead of its in-memory default:
#: the events bus, its deduplication cache, the causal ordering of events and the concurrency
#: leases. The Redis server itself is given by `PREFECT_REDIS_MESSAGING_URL` (or `_HOST`, `_PORT`,
#: `_DB`). Server-side settings: workers and flow runs send their events to the API as before.
REDIS_MESSAGING_SETTINGS: dict[str, str] = {
    "PREFECT_MESSAGING_BROKER": "prefect_redis.messaging",
    "PREFECT_MESSAGING_CACHE": "prefect_redis.messaging",
    "PREFECT_SERVER_EVENTS_CAUSAL_ORDERING": "prefect_redis.ordering",
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
    # prefect-redis's own publisher and consumer settings are kept. Tried on W1 (200 runs, two
    # loaded cores): consumers reading 100 events per round trip (`..._READ_BATCH_SIZE=100`,
    # default 1), with or without publishing each event alone
    # (`PREFECT_REDIS_MESSAGING_PUBLISHER_BATCH_SIZE=1`, default 5), left 20-25% of the steps
    # unrecorded 4 minutes after the pass, the stream fully consumed; the defaults recorded all
    # 780, 2.5 min late (400 runs: all 1,560).
}

#: The key a test server writes into the Redis database it claims (value: host:pid:token).
_CLAIM_KEY = "stalwart:prefect-server-claim"
#: Replace a claim only if it is still the stale one read (two servers may find it at once).
_TAKE_OVER = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2])
  return 1
end
return 0
"""
#: Database 0 is left to whatever else uses this Redis; Redis has 16 unless configured otherwise.
_CLAIMABLE_DATABASES = range(1, 16)


#: What Prefect's in-memory messaging logs for each event it drops (a full subscription queue:
#: `Subscription queue is full, dropping message for topic='events' queue_size=10000`).
DROPPED_EVENT_MARK = "dropping message"


class RedisClaimError(RuntimeError):
    """No Redis database number is free for another test server."""


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


def redis_database_url(base: str, database: int) -> str:
    """The URL of database number `database` of the Redis server `base` names.

    Example:
        >>> redis_database_url("redis://127.0.0.1:6379/0", 3)
        'redis://127.0.0.1:6379/3'
    """
    return urlunparse(urlparse(base)._replace(path=f"/{database}"))


def _claim_is_stale(owner: bytes) -> bool:
    """Whether a claim was left by a process of this machine that is gone (crashed, killed)."""
    host, _, rest = owner.decode(errors="replace").partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's: never taken over
    return not Path(f"/proc/{pid}").exists()


def claim_redis_database(url: str) -> tuple[int, str]:
    """Claim a Redis database number no other test server uses; its number and the claim's token.

    A database is free when it is empty, or when its claim was left by a dead process of this
    machine (it is flushed first). The claim is one key set with NX, so two servers starting at
    once never get the same number; `PrefectServer.stop()` flushes the database, claim included.

    Example:
        >>> database, token = claim_redis_database("redis://127.0.0.1:6379")  # doctest: +SKIP
        >>> 1 <= database <= 15  # doctest: +SKIP
        True
    """
    import redis

    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex}"
    for database in _CLAIMABLE_DATABASES:
        with redis.Redis.from_url(redis_database_url(url, database), socket_timeout=5) as client:
            owner = client.get(_CLAIM_KEY)
            if owner is None and client.dbsize() > 0:
                continue  # someone else's data, not a test server's
            if owner is None:
                taken = bool(client.set(_CLAIM_KEY, token, nx=True))
            elif _claim_is_stale(owner):
                # Left by a dead process: take it over only if nobody did meanwhile.
                taken = client.eval(_TAKE_OVER, 1, _CLAIM_KEY, owner, token) == 1
            else:
                continue
            if taken:
                # Leftover streams of a crashed server go, the new claim stays.
                for key in client.scan_iter(count=1000):
                    if key != _CLAIM_KEY.encode():
                        client.delete(key)
                return database, token
    raise RedisClaimError(f"every Redis database 1-15 of {url} is in use by another server")


def release_redis_database(url: str, database: int, token: str) -> None:
    """Flush a database claimed with `claim_redis_database`, unless the claim is no longer ours."""
    import redis

    with redis.Redis.from_url(redis_database_url(url, database), socket_timeout=5) as client:
        if client.get(_CLAIM_KEY) == token.encode():
            client.flushdb()


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
        redis: URL of a Redis server (`redis://127.0.0.1:6379`): the server's messaging goes
            through it (`REDIS_MESSAGING_SETTINGS`), in a database number of its own, flushed
            on exit. None keeps Prefect's in-memory messaging.
    """

    def __init__(
        self,
        *,
        postgres: str | None = None,
        port: int | None = None,
        env: dict[str, str] | None = None,
        startup_timeout: float = 90.0,
        redis: str | None = None,
    ) -> None:
        self.port = port or free_port()
        self.redis = redis
        self.redis_database: int | None = None
        self._redis_claim: str | None = None
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

    @property
    def messaging_url(self) -> str | None:
        """The Redis database this server's messaging uses (None: in memory, or not started)."""
        if self.redis is None or self.redis_database is None:
            return None
        return redis_database_url(self.redis, self.redis_database)

    def _admin(self, sql: str) -> None:
        import psycopg

        assert self.postgres is not None
        url = urlunparse(urlparse(self.postgres)._replace(scheme="postgresql"))
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(sql.encode())  # names are generated here, never user input

    def start(self) -> PrefectServer:
        """Create the database (claim the Redis one), launch the server, wait until it answers."""
        if self.redis is not None and self.redis_database is None:
            self.redis_database, self._redis_claim = claim_redis_database(self.redis)
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
        if self.messaging_url is not None:
            env.update(REDIS_MESSAGING_SETTINGS, PREFECT_REDIS_MESSAGING_URL=self.messaging_url)
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

    def dropped_events(self) -> int:
        """Events the server dropped so far: its "Subscription queue is full, dropping message"
        warnings (in-memory messaging only: Redis streams do not drop)."""
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").count(DROPPED_EVENT_MARK)
        return 0

    def stop(self) -> None:
        """SIGTERM the server's process group (SIGKILL after 15 s), then drop its database and
        flush its Redis database."""
        self.stop_process()
        if self.postgres is not None:
            with contextlib.suppress(Exception):
                self._admin(f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')
        if self.redis is not None and self.redis_database is not None:
            assert self._redis_claim is not None
            with contextlib.suppress(Exception):
                release_redis_database(self.redis, self.redis_database, self._redis_claim)
            self.redis_database = self._redis_claim = None

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
