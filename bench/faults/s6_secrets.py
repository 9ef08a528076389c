"""Scenario 6: secrets. A planted API key, Sentry DSN key and database password are searched for
in logs, stdout/stderr, Prefect's records, the state database, Sentry envelopes, exceptions and
run results: zero hits.

    python bench/faults/s6_secrets.py [--short] [--runs N]

The search is `agents.testing.secrets` (the same as `tests/faults/test_secrets.py`): the secrets
live in blocks, an agent decides through the model, fails an action with the secrets in a local
variable, meets a 401 and 500s, and a caller meets a 403 and 503s. `--runs N` repeats the whole
search N times with fresh secrets (default 1, or 3 for the full version).

runs = places searched (sources times repetitions), completed = places that had content to search,
failures = every secret found anywhere.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import scenario_main
from bench.faults.report import ScenarioResult

NAME = "6 secrets"


@contextmanager
def _captured_fds() -> Iterator[dict[str, str]]:
    """Capture file descriptors 1 and 2 (what any handler or child writes); text on exit."""
    out: dict[str, str] = {}
    with ExitStack() as stack:
        files = {fd: stack.enter_context(tempfile.TemporaryFile(mode="w+b")) for fd in (1, 2)}
        with _redirected(files) as text:
            yield out
        out.update(text)


@contextmanager
def _redirected(files: dict[int, IO[bytes]]) -> Iterator[dict[str, str]]:
    text: dict[str, str] = {}
    saved = {fd: os.dup(fd) for fd in files}
    sys.stdout.flush()
    sys.stderr.flush()
    for fd, handle in files.items():
        os.dup2(handle.fileno(), fd)
    try:
        yield text
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, handle in files.items():
            os.dup2(saved[fd], fd)
            os.close(saved[fd])
            handle.seek(0)
            text["stdout" if fd == 1 else "stderr"] = handle.read().decode("utf-8", "replace")


@contextmanager
def _postgres_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database (dropped after)."""
    import psycopg

    from agents.store import upgrade
    from agents.store.engine import dispose_engines

    admin = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"stalwart_s6_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines()
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def run(short: bool = False, *, runs: int | None = None) -> ScenarioResult:
    """Run the planted-secret search `runs` times (fresh secrets each time).

    Example:
        >>> run(short=True).failures  # doctest: +SKIP
        []
    """
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    from agents.modelserver import ModelServer
    from agents.settings import reload_settings
    from agents.testing.secrets import LogCapture, exercise, find_leaks, sources
    from agents.testing.sentry import SentryReceiver

    repeats = runs or (1 if short else 3)
    places = with_content = 0
    failures: list[str] = []
    started = time.perf_counter()
    with prefect_test_harness(server_startup_timeout=180), _postgres_database() as url:
        for _ in range(repeats):
            with ModelServer(port=0) as model, SentryReceiver() as receiver:
                os.environ["STALWART_MODEL_URL"] = model.url
                reload_settings()
                try:
                    with _captured_fds() as streams, LogCapture() as logs:
                        done = exercise(
                            model_server=model, receiver=receiver, admin_database_url=url
                        )
                    searched = sources(
                        done, receiver, logs.text(), streams["stdout"], streams["stderr"]
                    )
                finally:
                    os.environ.pop("STALWART_MODEL_URL", None)
                    reload_settings()
            statuses = [r.status for r in done.results]
            if statuses != ["completed", "failed", "failed", "failed"]:
                failures.append(f"the runs did not take every path: {statuses}")
            places += len(searched)
            with_content += sum(1 for text in searched.values() if text)
            failures += find_leaks(searched, done.planted.named())
    return ScenarioResult(
        NAME,
        runs=places,
        completed=with_content,
        lost=0,
        duplicate_actions=0,
        notes=(
            f"{repeats} search(es) over {places // max(repeats, 1)} sources "
            f"({with_content} with content); 3 secrets each; hits: {len(failures)}; "
            f"{time.perf_counter() - started:.0f} s"
        ),
        failures=failures[:10],
    )


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
