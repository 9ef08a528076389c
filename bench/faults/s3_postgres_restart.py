"""Scenario 3: PostgreSQL, home of both the Prefect server's database and the state database, is
stopped mid-batch, stays down a few seconds and is started again. Nothing lost, nothing done
twice.

    python bench/faults/s3_postgres_restart.py [--short] [--runs N] [--down 5]

`pg_ctlcluster --skip-systemctl-redirect <version> main stop -m fast` (run as root), then
`start`; PostgreSQL is started again in a `finally:` whatever happens. What holds it together:
the store's pool pre-ping and retries on connection loss, Prefect's client retries, the operator
re-submitting the flow runs that died, and the results cache and action ledger on the reruns.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import (
    Fault,
    Stack,
    batches_for,
    pg_admin_url,
    run_w1,
    scenario_main,
    stack_for,
)
from bench.faults.report import ScenarioResult

NAME = "3 PostgreSQL restart"


def _cluster(action: str, *, check: bool = True) -> None:
    version = sorted(p.name for p in Path("/etc/postgresql").iterdir())[-1]
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", version, "main", action]
    if action == "stop":
        args += ["-m", "fast"]
    subprocess.run(args, check=check, capture_output=True, timeout=60)


def ensure_postgres(timeout_s: float = 60.0) -> None:
    """Start the cluster if it is down and wait until it accepts connections.

    Example:
        >>> ensure_postgres()  # doctest: +SKIP
    """
    import psycopg

    deadline = time.monotonic() + timeout_s
    started = False
    while True:
        try:
            with psycopg.connect(pg_admin_url(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            if not started:
                _cluster("start", check=False)  # "already running" is fine: keep waiting
                started = True
            time.sleep(0.5)


class RestartPostgres(Fault):
    """Stop PostgreSQL (fast: sessions are cut), stay down `hold_s`, start it again."""

    name = "PostgreSQL restart"

    def __init__(self, down_s: float = 5.0) -> None:
        super().__init__()
        self.hold_s = down_s

    def inject(self, stack: Stack) -> None:
        _cluster("stop")

    def clear(self, stack: Stack) -> None:
        _cluster("start")
        ensure_postgres()


def run(
    short: bool = False,
    *,
    runs: int | None = None,
    stack: Stack | None = None,
    down_s: float = 5.0,
) -> ScenarioResult:
    """Run W1 (or its short version) and restart PostgreSQL once 30% of it is done.

    Example:
        >>> run(short=True).lost  # doctest: +SKIP
        0
    """
    fault = RestartPostgres(down_s)
    try:
        with stack_for(stack) as s:
            outcome = run_w1(s, fault=fault, at=0.3, short=short, batches=batches_for(short, runs))
    finally:
        ensure_postgres()
    return outcome.result(NAME, extra=f"down {down_s:g} s")


def main() -> None:
    scenario_main(run, __doc__ or NAME)


if __name__ == "__main__":
    main()
