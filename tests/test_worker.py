"""`stalwart worker`: Prefect's worker collecting its garbage and giving freed heap back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from agents.worker import _malloc_trim, reclaim_memory, start_memory_reclaimer

ROOT = Path(__file__).resolve().parents[1]

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
        "heavy = [m for m in ('agents.cli._app', 'agents._declare', 'instructor', 'sqlmodel')"
        " if m in sys.modules]\n"
        "print(code, heavy)"
    )
    out = run_python(probe)
    assert out.stdout.strip() == "2 []", out.stdout + out.stderr
    assert "--reclaim-every must be 0 or more" in out.stderr
