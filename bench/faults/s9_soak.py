"""Scenario 9: soak. W1-sized waves repeated for `--minutes` on the W1 stack; then `stalwart prune`.

    python bench/faults/s9_soak.py [--short] [--minutes M] [--runs N]

Each wave is W1 (1,000 tickets over 10 tenants; `--short`: 40 over 4) through the real Prefect
server and two process workers (`bench.faults.harness`). Per wave: runs/s, the peak RSS of the two
workers (long-lived: a leak shows here) and the peak RSS of one flow-run process (a process per
flow run: it shows whether a run's footprint creeps), and the state database's size
(`pg_database_size`) and row counts. A small warm-up wave runs first and is not measured (flow-run
process imports and the first deployment pull make it slower than the rest).

After the last wave, `stalwart prune --older-than 1s --caches --yes --json` runs against the
state database (`--caches`: every W1 prompt is unique, so the model-answer cache grows by one row
per run and would otherwise stay). Deleted rows become reusable space only after VACUUM, and the
files shrink only after VACUUM FULL, so the scenario reports rows (prunable vs deleted), the
pruned tables' size after a plain VACUUM (what autovacuum would leave: space reusable by new
rows) and after VACUUM FULL (bytes given back to the file system).

Pass criteria (computed):
- runs/s: the mean of the last third of the waves within ±20% of the first third's;
- RSS: the workers' peak RSS grows by at most max(10% of the first wave's, 25 MB) over the soak
  (least-squares slope times waves), and so does the flow-run processes';
- database: size grows linearly with runs (R² of size against cumulative runs ≥ 0.9, with at
  least 3 waves);
- prune: deletes ≥ 90% of the prunable rows (rows of the pruned tables older than the cutoff).

`run_inprocess` is the short CI version (`tests/faults/test_soak.py`): the same waves, measures and
criteria with `agent.batch` in this process against PostgreSQL, no Prefect server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bench.faults.harness import scenario_main
from bench.faults.report import ScenarioResult

ROOT = Path(__file__).resolve().parents[2]
NAME = "9 soak + prune"
#: Tables `stalwart prune --caches` deletes old rows of.
PRUNED = (
    "agent_run",
    "step_run",
    "decision_record",
    "step_result",
    "action_record",
    "llm_cache",
    "example_use",
)
#: Tables prune does not touch (memory: one row per subject and key; feedback: labels).
UNPRUNED = ("memory_item", "feedback")
#: Timestamp column deciding whether a pruned table's row is old enough (and its extra condition).
_AGE = {
    "agent_run": ("started_at", ""),
    "step_run": ("started_at", ""),
    "decision_record": ("created_at", ""),
    "step_result": ("created_at", ""),
    "action_record": ("completed_at", " AND status = 'completed'"),
    "llm_cache": ("created_at", ""),
    "example_use": ("created_at", ""),
}


# -- measuring ------------------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident set size of one process in MB (0 when it is gone).

    Example:
        >>> rss_mb(os.getpid()) > 10
        True
    """
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def descendants(pids: Sequence[int]) -> list[int]:
    """Every live descendant of `pids` (one scan of /proc).

    Example:
        >>> descendants([os.getpid()]) == [] or True
        True
    """
    parent: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        parent[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = set(pids)
    while frontier:
        children = {p for p, pp in parent.items() if pp in frontier and p not in found}
        found.extend(sorted(children))
        frontier = children
    return found


class PeakRss:
    """Samples the RSS of some processes (and the largest descendant) every `every_s` seconds.

    Example:
        >>> with PeakRss(lambda: [os.getpid()]) as peak:
        ...     time.sleep(0.05)
        >>> peak.roots_mb > 0
        True
    """

    def __init__(self, roots: Callable[[], list[int]], every_s: float = 0.5) -> None:
        self.roots = roots
        self.every_s = every_s
        self.roots_mb = 0.0
        """Peak of the roots' summed RSS."""
        self.child_mb = 0.0
        """Peak RSS of any single descendant (a flow-run process)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> None:
        roots = self.roots()
        self.roots_mb = max(self.roots_mb, sum(rss_mb(p) for p in roots))
        children = descendants(roots) if roots else []
        self.child_mb = max([self.child_mb, *(rss_mb(p) for p in children)])

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.sample()

    def __enter__(self) -> PeakRss:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()


def _pg(dsn: str, sql: str, *args: Any, autocommit: bool = False) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(dsn, autocommit=autocommit, connect_timeout=5) as conn:
        cur = conn.execute(sql.encode() if not args else sql, args or None)  # type: ignore[arg-type]
        return list(cur.fetchall()) if cur.description else []


def database_bytes(dsn: str) -> int:
    """`pg_database_size` of the database `dsn` points at."""
    return int(_pg(dsn, "SELECT pg_database_size(current_database())")[0][0])


def row_counts(dsn: str, tables: Sequence[str] = PRUNED + UNPRUNED) -> dict[str, int]:
    """Rows per table (tables that do not exist are left out)."""
    out: dict[str, int] = {}
    for name in tables:
        try:
            out[name] = int(_pg(dsn, f'SELECT count(*) FROM "{name}"')[0][0])
        except Exception:  # a table of a newer migration may not exist here
            continue
    return out


def relation_bytes(dsn: str, tables: Sequence[str] = PRUNED) -> int:
    """Total size (heap, indexes, TOAST) of `tables`."""
    return sum(
        int(_pg(dsn, "SELECT pg_total_relation_size(%s::regclass)", name)[0][0]) for name in tables
    )


def psycopg_dsn(url: str) -> str:
    """A SQLAlchemy PostgreSQL URL as a plain libpq one.

    Example:
        >>> psycopg_dsn("postgresql+psycopg://postgres@127.0.0.1:5432/x")
        'postgresql://postgres@127.0.0.1:5432/x'
    """
    return url.replace("postgresql+psycopg://", "postgresql://")


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """A fresh, migrated PostgreSQL state database (SQLAlchemy URL), dropped afterwards."""
    from agents.store import upgrade
    from agents.store.engine import dispose_engines

    admin = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
    name = f"stalwart_s9_{uuid.uuid4().hex[:10]}"
    _pg(admin, f'CREATE DATABASE "{name}"', autocommit=True)
    url = admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + f"/{name}"
    try:
        upgrade(url)
        yield url
    finally:
        dispose_engines()
        _pg(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)', autocommit=True)


# -- the figures ---------------------------------------------------------------------------------


@dataclass
class Wave:
    """One wave's figures."""

    index: int
    runs: int
    completed: int
    duplicates: int
    wall_s: float
    worker_rss_mb: float
    flow_run_rss_mb: float
    db_bytes: int
    rows: dict[str, int] = field(default_factory=dict)
    worker_exits: int = 0
    """Worker processes that exited during the wave (restarted before the next one)."""

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Pruned:
    """What `stalwart prune` and VACUUM did."""

    prunable: int
    deleted: dict[str, int]
    left_prunable: int
    relation_before: int
    relation_after_vacuum: int
    relation_after_full: int
    db_before: int
    db_after_full: int

    @property
    def reclaimed_share(self) -> float:
        return 1.0 - self.left_prunable / self.prunable if self.prunable else 0.0


def slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ys against xs (0 with fewer than two points).

    Example:
        >>> slope([0, 1, 2], [1, 3, 5])
        2.0
    """
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var if var else 0.0


def r_squared(xs: Sequence[float], ys: Sequence[float]) -> float:
    """R² of the least-squares line of ys against xs (1.0 when ys are constant).

    Example:
        >>> round(r_squared([0, 1, 2, 3], [0, 2, 4, 6.1]), 3)
        1.0
    """
    n = len(xs)
    my = sum(ys) / n
    b = slope(xs, ys)
    a = my - b * sum(xs) / n
    total = sum((y - my) ** 2 for y in ys)
    if not total:
        return 1.0
    residual = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1.0 - residual / total


def judge(
    waves: Sequence[Wave], pruned: Pruned, base_db: int, *, rate_tolerance: float = 0.20
) -> tuple[list[str], str]:
    """The failed criteria and a one-line summary of the figures.

    `rate_tolerance` is the allowed drift of runs/s between the first and the last third.

    Example:
        >>> w = [Wave(i, 10, 10, 0, 1.0, 100.0, 50.0, 1000 + 100 * i) for i in range(3)]
        >>> p = Pruned(30, {"agent_run": 30}, 0, 10, 5, 1, 1300, 1000)
        >>> judge(w, p, 1000)[0]
        []
        >>> w[1].worker_exits = 1
        >>> judge(w, p, 1000)[0]
        ['1 worker exit(s) during the soak (waves [1]): worker RSS not comparable across waves']
    """
    failures: list[str] = []
    n = len(waves)
    third = max(1, n // 3)
    first = sum(w.runs_per_s for w in waves[:third]) / third
    last = sum(w.runs_per_s for w in waves[-third:]) / third
    drift = (last - first) / first if first else 0.0
    if abs(drift) > rate_tolerance:
        failures.append(f"runs/s drifted {drift:+.0%} (first third {first:.1f}, last {last:.1f})")
    exits = sum(w.worker_exits for w in waves)
    if exits:
        # The workers' RSS is summed over their processes: a missing or fresh one is not
        # comparable with the waves before it, so the RSS criterion cannot be judged.
        failures.append(
            f"{exits} worker exit(s) during the soak (waves "
            f"{[w.index for w in waves if w.worker_exits]}): worker RSS not comparable across waves"
        )
    idx = [float(w.index) for w in waves]
    growth = {}
    for what, values in (
        ("worker", [w.worker_rss_mb for w in waves]),
        ("flow-run", [w.flow_run_rss_mb for w in waves]),
    ):
        grown = slope(idx, values) * max(0, n - 1)
        growth[what] = grown
        bound = max(0.10 * values[0], 25.0)
        if values[0] > 0 and grown > bound:
            failures.append(f"{what} RSS grew {grown:.0f} MB over the soak (bound {bound:.0f})")
    cumulative = []
    total = 0
    for w in waves:
        total += w.runs
        cumulative.append(float(total))
    sizes = [float(w.db_bytes - base_db) for w in waves]
    r2 = r_squared(cumulative, sizes) if n >= 3 else 1.0
    if n >= 3 and r2 < 0.9:
        failures.append(f"database size not linear in runs (R² {r2:.2f})")
    per_run = slope(cumulative, sizes) if n >= 2 else (sizes[0] / cumulative[0] if n else 0)
    if pruned.reclaimed_share < 0.90:
        failures.append(f"prune deleted {pruned.reclaimed_share:.0%} of prunable rows (< 90%)")
    summary = (
        f"{n} waves, runs/s {first:.1f} → {last:.1f} ({drift:+.0%}); RSS growth workers "
        f"{growth['worker']:+.0f} MB, flow run {growth['flow-run']:+.0f} MB (peak "
        f"{max(w.worker_rss_mb for w in waves):.0f}/{max(w.flow_run_rss_mb for w in waves):.0f}"
        f" MB); DB +{per_run / 1024:.1f} KB/run (R² {r2:.2f}); prune deleted "
        f"{sum(pruned.deleted.values())} of {pruned.prunable} prunable rows "
        f"({pruned.reclaimed_share:.0%}), pruned tables {pruned.relation_before / 2**20:.1f} MB"
        f" → {pruned.relation_after_vacuum / 2**20:.1f} MB after VACUUM → "
        f"{pruned.relation_after_full / 2**20:.1f} MB after VACUUM FULL (DB "
        f"{pruned.db_before / 2**20:.1f} → {pruned.db_after_full / 2**20:.1f} MB)"
    )
    return failures, summary


# -- prune ---------------------------------------------------------------------------------------


def prune_and_measure(url: str) -> Pruned:
    """`stalwart prune --older-than 1s --caches` on `url`, then VACUUM and VACUUM FULL, measured.

    Example:
        >>> prune_and_measure(state_url).reclaimed_share  # doctest: +SKIP
        1.0
    """
    dsn = psycopg_dsn(url)
    time.sleep(1.2)  # every row of the soak is now older than the 1 s cutoff
    cutoff = _pg(dsn, "SELECT now() - interval '1 second'")[0][0]

    def old_rows() -> int:
        return sum(
            int(_pg(dsn, f'SELECT count(*) FROM "{t}" WHERE {col} < %s{extra}', cutoff)[0][0])
            for t, (col, extra) in _AGE.items()
        )

    prunable = old_rows()
    relation_before = relation_bytes(dsn)
    db_before = database_bytes(dsn)
    proc = subprocess.run(
        [
            *(sys.executable, "-c", "from agents.cli import app; app()"),
            *("prune", "--older-than", "1s", "--caches", "--yes", "--json"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "STALWART_DATABASE_URL": url},
        cwd=str(ROOT),
    )
    if proc.returncode != 0:
        raise RuntimeError(f"stalwart prune failed: {proc.stderr[-1500:]}")
    deleted = json.loads(proc.stdout.strip().splitlines()[-1])
    left = old_rows()
    tables = ", ".join(f'"{t}"' for t in PRUNED)
    _pg(dsn, f"VACUUM (ANALYZE) {tables}", autocommit=True)
    after_vacuum = relation_bytes(dsn)
    _pg(dsn, f"VACUUM FULL {tables}", autocommit=True)
    return Pruned(
        prunable=prunable,
        deleted={k: int(v) for k, v in deleted.items()},
        left_prunable=left,
        relation_before=relation_before,
        relation_after_vacuum=after_vacuum,
        relation_after_full=relation_bytes(dsn),
        db_before=db_before,
        db_after_full=database_bytes(dsn),
    )


# -- drivers ------------------------------------------------------------------------------------


def run_harness(
    minutes: float, short: bool, runs: int | None, stack: Any = None
) -> tuple[list[Wave], Pruned, int, list[str]]:
    """W1-sized waves on the W1 stack for `minutes`; then prune. (waves, pruned, base, notes)"""
    from bench.faults.harness import batches_for, run_w1, stack_for, w1

    notes: list[str] = []
    with stack_for(stack) as s:
        dsn = s.state_dsn

        def workers() -> list[int]:
            return [w.process.pid for w in s.workers if w.process is not None]

        # Warm-up, not measured: enough flow runs that both workers have run some (their first
        # flow runs pay imports and the deployment pull; a worker left idle would look like a
        # leak in wave 0 → 1).
        run_w1(s, batches=w1(runs=60, tenants=6, per_flow_run=10))
        base = database_bytes(dsn)
        waves: list[Wave] = []
        deadline = time.monotonic() + minutes * 60
        while time.monotonic() < deadline or len(waves) < 3:
            with PeakRss(workers) as peak:
                outcome = run_w1(s, batches=batches_for(short, runs))
            exited = [w for w in s.workers if not w.running]
            for worker in exited:
                last = " ".join(worker.log_tail(2).split())[-240:]
                notes.append(f"worker {worker.name} exited in wave {len(waves)}: {last}")
            s.ensure_workers()  # what a supervisor (systemd, Kubernetes) does in production
            waves.append(
                Wave(
                    index=len(waves),
                    runs=outcome.runs,
                    completed=outcome.completed,
                    duplicates=outcome.duplicate_actions,
                    wall_s=outcome.wall_s,
                    worker_rss_mb=peak.roots_mb,
                    flow_run_rss_mb=peak.child_mb,
                    db_bytes=database_bytes(dsn),
                    rows=row_counts(dsn),
                    worker_exits=len(exited),
                )
            )
            w = waves[-1]
            print(
                f"wave {w.index}: {w.completed}/{w.runs} in {w.wall_s:.0f} s "
                f"({w.runs_per_s:.1f} runs/s), workers {w.worker_rss_mb:.0f} MB, "
                f"flow run {w.flow_run_rss_mb:.0f} MB, DB {w.db_bytes / 2**20:.1f} MB"
                + (f", {w.worker_exits} worker exit(s)" if w.worker_exits else ""),
                file=sys.stderr,
                flush=True,
            )
        grown = {t: waves[-1].rows.get(t, 0) for t in UNPRUNED if waves[-1].rows.get(t)}
        notes.append(f"rows in tables prune keeps: {grown}")
        pruned = prune_and_measure(s.state_url)
    return waves, pruned, base, notes


def run_inprocess(
    seconds: float, url: str, *, wave_runs: int = 20, tenants: int = 4
) -> tuple[list[Wave], Pruned, int]:
    """The CI version: ticket-triage `agent.batch` waves in this process against `url`.

    Needs a Prefect API and a model endpoint in force, and `url` made the state database in
    force (`STALWART_DATABASE_URL`). RSS is this process's (the only long-lived one here).

    Example:
        >>> waves, pruned, base = run_inprocess(30, url)  # doctest: +SKIP
        >>> judge(waves, pruned, base)[0]  # doctest: +SKIP
        []
    """
    from flows.ticket_triage import triage

    dsn = psycopg_dsn(url)
    lines = (ROOT / "flows/data/tickets.jsonl").read_text().splitlines()
    salt = uuid.uuid4().hex[:6]

    def wave_items(index: int) -> list[dict[str, Any]]:
        items = []
        for n in range(wave_runs):
            # The same tickets every wave (fresh ids), as W1's waves: a different mix of
            # tickets takes different ladder paths and would move runs/s by itself.
            raw = dict(json.loads(lines[n % len(lines)])["raw"])
            raw["id"] = f"{raw['id']}-{salt}-{index}-{n}"
            raw["body"] = f"{raw.get('body', '')} (ref {raw['id']})"
            items.append({"raw": raw, "subject": raw.get("customer"), "run_key": raw["id"]})
        return items

    triage.batch(wave_items(10_000), tenant=f"soak-{salt}-warm")  # warm-up, not measured
    base = database_bytes(dsn)
    waves: list[Wave] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline or len(waves) < 3:
        index = len(waves)
        with PeakRss(lambda: [os.getpid()], every_s=0.25) as peak:
            started = time.perf_counter()
            results = triage.batch(wave_items(index), tenant=f"soak-{salt}-{index % tenants}")
            wall = time.perf_counter() - started
        waves.append(
            Wave(
                index=index,
                runs=len(results),
                # awaiting_review: an unsure ticket stopped for a person, durably (not lost).
                completed=sum(
                    r.status in ("completed", "held", "awaiting_review") for r in results
                ),
                duplicates=0,
                wall_s=wall,
                worker_rss_mb=peak.roots_mb,
                flow_run_rss_mb=0.0,
                db_bytes=database_bytes(dsn),
                rows=row_counts(dsn),
            )
        )
    return waves, prune_and_measure(url), base


def run(
    short: bool = False, *, runs: int | None = None, minutes: float | None = None
) -> ScenarioResult:
    """The soak on the W1 stack (10 minutes, short: 1) and the prune, judged.

    Example:
        >>> run(short=True).passed  # doctest: +SKIP
        True
    """
    minutes = minutes if minutes is not None else (1.0 if short else 10.0)
    started = time.perf_counter()
    waves, pruned, base, notes = run_harness(minutes, short, runs)
    failures, summary = judge(waves, pruned, base)
    total = sum(w.runs for w in waves)
    done = sum(w.completed for w in waves)
    return ScenarioResult(
        NAME,
        runs=total,
        completed=done,
        lost=total - done,
        duplicate_actions=sum(w.duplicates for w in waves),
        notes=f"{summary}; {'; '.join(notes)}; {time.perf_counter() - started:.0f} s",
        failures=failures,
    )


def main() -> None:
    """Print scenario 9's one-row table (and each wave on stderr)."""
    scenario_main(
        run,
        __doc__ or NAME,
        options=lambda parser: parser.add_argument(
            "--minutes", type=float, default=None, help="soak length"
        ),
    )


if __name__ == "__main__":
    main()
