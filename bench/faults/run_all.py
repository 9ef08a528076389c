"""Run every reliability scenario and print one table, with the date and the machine.

    python bench/faults/run_all.py [--short] [--only s1,s3] [--timeout 1800]

Discovers `bench/faults/s[0-9]_*.py` and runs each in a fresh subprocess (`--json` to a temp
file), so one crash or hang cannot take the others down: a scenario that dies or times out gets
a FAIL row naming its exit status and the end of its output. `--short` runs the short versions.
The exit status is 0 only when every scenario passed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))

from bench.faults.report import ScenarioResult, table  # noqa: E402


def discover(only: list[str] | None = None) -> list[Path]:
    """The scenario scripts, in order (`only`: their `sN` prefixes).

    Example:
        >>> [p.name for p in discover(["s1"])]
        ['s1_model_faults.py']
    """
    found = sorted(HERE.glob("s[0-9]_*.py"))
    if only:
        found = [p for p in found if p.name.split("_", 1)[0] in only]
    return found


def run_one(script: Path, *, short: bool, timeout_s: float) -> ScenarioResult:
    """Run one scenario script in its own process; its result, or a FAIL row if it broke.

    Example:
        >>> run_one(HERE / "s1_model_faults.py", short=True, timeout_s=600)  # doctest: +SKIP
    """
    with tempfile.TemporaryDirectory(prefix="stalwart-faults-") as tmp:
        out = Path(tmp) / "result.json"
        args = [sys.executable, str(script), "--json", str(out)]
        if short:
            args.append("--short")
        name = script.stem
        try:
            done = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
            problem = f"exit {done.returncode}"
            tail = (done.stdout + done.stderr)[-600:]
        except subprocess.TimeoutExpired as exc:
            problem = f"timed out after {timeout_s:g} s"
            tail = str(exc.stdout or "")[-600:]
        if out.exists():
            return ScenarioResult(**json.loads(out.read_text()))
    print(f"--- {name}: {problem}\n{tail}", file=sys.stderr)
    return ScenarioResult(
        name, runs=0, completed=0, lost=0, duplicate_actions=0, failures=[f"crashed: {problem}"]
    )


def machine() -> str:
    """One line naming this machine: CPU, cores, RAM, Python, Prefect and PostgreSQL versions.

    Example:
        >>> "Python" in machine()
        True
    """
    cpu = platform.processor() or "unknown CPU"
    ram = "? GB"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                ram = f"{int(line.split()[1]) / 1024 / 1024:.0f} GB"
                break
    except OSError:
        pass
    try:
        import prefect

        prefect_version = prefect.__version__
    except ImportError:
        prefect_version = "?"
    pg = "?"
    try:
        import psycopg

        url = os.environ.get("STALWART_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
        with psycopg.connect(url, connect_timeout=3) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            pg = str(row[0]).split()[0] if row else "?"
    except Exception:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {ram} RAM; Python {platform.python_version()}, "
        f"Prefect {prefect_version}, PostgreSQL {pg}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--short", action="store_true", help="the short versions")
    parser.add_argument("--only", default="", help="comma-separated prefixes, e.g. s1,s3")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per scenario")
    args = parser.parse_args()
    only = [s.strip() for s in args.only.split(",") if s.strip()] or None
    results = []
    started = time.time()
    for script in discover(only):
        t0 = time.time()
        result = run_one(script, short=args.short, timeout_s=args.timeout)
        print(
            f"{script.stem}: {'pass' if result.passed else 'FAIL'} in {time.time() - t0:.0f} s",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    print(
        f"Reliability suite{' (short)' if args.short else ''}, "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {time.time() - started:.0f} s"
    )
    print(f"Machine: {machine()}")
    print()
    print(table(results))
    raise SystemExit(0 if results and all(r.passed for r in results) else 1)


if __name__ == "__main__":
    main()
