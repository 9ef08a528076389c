"""`stalwart worker`: Prefect's worker collecting its garbage and giving freed heap back."""

from __future__ import annotations

import asyncio
import http.server
import os
import subprocess
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import anyio
import pytest
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.exceptions import PrefectHTTPStatusError
from prefect.settings import (
    PREFECT_API_URL,
    PREFECT_CLIENT_MAX_RETRIES,
    PREFECT_LOGGING_TO_API_ENABLED,
    temporary_settings,
)
from prefect.workers.process import ProcessWorker

from agents.worker import (
    _malloc_trim,
    reclaim_memory,
    resilient_process_worker,
    start_memory_reclaimer,
)

ROOT = Path(__file__).resolve().parents[2]

glibc = pytest.mark.skipif(_malloc_trim() is None, reason="no malloc_trim (not glibc)")

# The snippets' own RSS (they run in a fresh interpreter, which imports nothing else).
RSS_MB = textwrap.dedent(
    """
    def rss_mb():
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
    """
)

# A heap left fragmented: 60 MB of 2 KB blocks (malloc, not pymalloc, and below the mmap
# threshold), every 64th kept alive so glibc cannot shrink the heap from its top.
FRAGMENT = RSS_MB + textwrap.dedent(
    """
    import sys
    blocks = [bytes(2048) for _ in range(30_000)]
    kept = blocks[::64]
    del blocks
    before = rss_mb()
    from agents.worker import trim_heap
    assert trim_heap()
    print(before, rss_mb())
    """
)

# What Prefect's process worker leaves behind per flow run: clients in reference cycles, each
# holding an SSL context with certifi's CA bundle loaded (OpenSSL memory, about 0.7 MB each),
# not yet found by a full collection (here: automatic collection off).
DEAD_CLIENTS = RSS_MB + textwrap.dedent(
    """
    import gc, ssl, certifi
    gc.disable()
    class Client:
        def __init__(self):
            self.ssl = ssl.create_default_context(cafile=certifi.where())
            self.me = self
    clients = [Client() for _ in range(40)]
    del clients
    from agents.worker import reclaim_memory, trim_heap
    dead = rss_mb()
    trim_heap()
    trimmed = rss_mb()
    collected = reclaim_memory()
    print(dead, trimmed, rss_mb(), collected)
    """
)


def run_python(code: str) -> subprocess.CompletedProcess[str]:
    """Run `code` in a fresh interpreter at the project root; its output as text."""
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


@glibc
def test_trimming_gives_a_fragmented_heap_back() -> None:
    done = run_python(FRAGMENT)
    assert done.returncode == 0, done.stderr
    out = done.stdout.split()
    before, after = float(out[0]), float(out[1])
    assert before - after > 30, (before, after)


@glibc
def test_reclaiming_frees_dead_clients_that_trimming_alone_cannot() -> None:
    done = run_python(DEAD_CLIENTS)
    assert done.returncode == 0, done.stderr
    dead, trimmed, reclaimed, collected = (float(x) for x in done.stdout.split())
    assert dead - trimmed < 5, (dead, trimmed)  # the contexts are still allocated
    assert trimmed - reclaimed > 15, (trimmed, reclaimed)
    assert collected >= 40


def test_the_reclaimer_runs_in_a_daemon_thread_and_can_be_turned_off() -> None:
    assert start_memory_reclaimer(every_s=0) is None
    thread = start_memory_reclaimer(every_s=3600)
    assert thread is not None and thread.daemon and thread.is_alive()
    assert reclaim_memory() >= 0


def test_the_worker_command_loads_neither_the_cli_nor_the_runtime() -> None:
    # What `stalwart worker` imports before handing over to `prefect worker start`.
    probe = (
        "import sys; sys.argv = ['stalwart', 'worker', '--reclaim-every', '-1'];"
        "from agents.cli import main\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    code = exc.code\n"
        "heavy = [m for m in ('agents.cli._app', 'agents.declare.agent', 'instructor', 'sqlmodel')"
        " if m in sys.modules]\n"
        "print(code, heavy)"
    )
    out = run_python(probe)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert "--reclaim-every must be 0 or more" in out.stderr


class _Answers500(http.server.BaseHTTPRequestHandler):
    """A Prefect API short of database connections: every request gets a 500."""

    def do_GET(self) -> None:
        body = b'{"exception_message": "Internal Server Error"}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


async def _submit_against_a_failing_server(worker_cls: type[ProcessWorker]) -> ProcessWorker:
    """What the worker's poll loop does for one Scheduled run, against a server answering 500."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Answers500)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    api = f"http://127.0.0.1:{server.server_address[1]}/api"
    worker = worker_cls(work_pool_name="stalwart", limit=2)
    flow_run = FlowRun(flow_id=uuid.uuid4(), deployment_id=uuid.uuid4(), name="batch-1")
    try:
        quiet = {PREFECT_CLIENT_MAX_RETRIES: 0, PREFECT_LOGGING_TO_API_ENABLED: False}
        with temporary_settings({PREFECT_API_URL: api, **quiet}):
            async with PrefectClient(api) as client:
                worker._client = client
                worker._limiter = anyio.CapacityLimiter(2)
                worker._limiter.acquire_on_behalf_of_nowait(flow_run.id)
                worker._submitting_flow_run_ids.add(flow_run.id)
                await worker._submit_run(flow_run)
    finally:
        server.shutdown()
        server.server_close()
    return worker


def test_a_failed_submission_does_not_end_the_worker() -> None:
    worker = asyncio.run(_submit_against_a_failing_server(resilient_process_worker()))
    # Undone: no longer in flight (the next poll may submit it again), its slot free.
    assert worker._submitting_flow_run_ids == set()
    assert worker._limiter is not None and worker._limiter.borrowed_tokens == 0


def test_prefects_own_process_worker_is_ended_by_that_failure() -> None:
    # Why `stalwart worker` has its own: the same 500 escapes Prefect 3.9's `_submit_run`.
    with pytest.raises(PrefectHTTPStatusError, match="500"):
        asyncio.run(_submit_against_a_failing_server(ProcessWorker))


def test_the_worker_command_runs_the_resilient_worker_for_process_pools() -> None:
    probe = (
        # How `prefect worker start --type process` finds its worker class.
        "from agents.worker import resilient_process_worker\n"
        "from prefect.cli._worker_utils import _load_worker_class\n"
        "before = _load_worker_class('process').__name__\n"
        "resilient_process_worker()\n"
        "print(before, _load_worker_class('process').__name__)"
    )
    out = run_python(probe)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ProcessWorker", "ResilientProcessWorker"]
    assert "overridden" not in out.stderr
