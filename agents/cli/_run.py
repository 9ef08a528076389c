"""`stalwart run`: an agent over a JSONL file, with a progress bar, quarantine and a summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents._compile import CompiledAgent
from agents._run import RunResult
from agents._settings import get_current_settings
from agents.cli._utilities import console, err_console, exit_with_error, load_agent

#: Deepest nesting of objects and arrays accepted in one input line. Prefect serialises a
#: batch's inputs as flow-run parameters and fails the whole batch somewhere between 200 and 300
#: levels, so one deep line must be rejected alone, not take its neighbours down.
MAX_NESTING = 64
#: Largest serialised input (bytes of compact, ASCII-escaped JSON, as Prefect measures it) and
#: largest batch: Prefect refuses a flow run whose parameters exceed 512 KiB, which would fail
#: every line of the batch. Batches are cut below this; a bigger line is rejected.
BATCH_PARAMETER_BYTES = 400_000
#: Run inputs that become identifiers in the state database (text columns: no NUL there).
_IDENTIFIER_KEYS = ("subject", "run_key")

#: The key of a JSONL line holding its labels (`{"route": {"category": "billing"}}`: step →
#: field → expected value). `stalwart eval` scores them; no run ever receives them.
LABELS_KEY = "expected"


def split_labels(
    item: dict[str, Any], compiled: CompiledAgent
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A line's run inputs and its labels (None when it has none).

    The labels key is only taken when no step reads a run input of that name.

    Example:
        >>> split_labels({"raw": {}, "expected": {"route": {"category": "billing"}}},
        ...              compiled)  # doctest: +SKIP
        ({'raw': {}}, {'route': {'category': 'billing'}})
    """
    if LABELS_KEY not in item or LABELS_KEY in compiled.input_names:
        return item, None
    inputs = {k: v for k, v in item.items() if k != LABELS_KEY}
    labels = item[LABELS_KEY]
    return inputs, labels if isinstance(labels, dict) else None


@dataclass(frozen=True)
class Rejected:
    """A line of the input file that cannot run, and why."""

    line: int
    error: str
    raw: str


def read_inputs(
    path: Path, compiled: CompiledAgent, max_bytes: int
) -> tuple[list[tuple[int, dict[str, Any]]], list[Rejected]]:
    """Parse a JSONL file into (line number, input) pairs; bad lines are rejected, not fatal.

    An accepted input keeps its labels (`LABELS_KEY`); `split_labels` takes them off.
    """
    accepted: list[tuple[int, dict[str, Any]]] = []
    rejected: list[Rejected] = []
    with path.open("rb") as handle:
        for number, raw_line in enumerate(handle, start=1):
            if not raw_line.strip():
                continue
            parsed = parse_line(number, raw_line, compiled, max_bytes)
            if isinstance(parsed, Rejected):
                rejected.append(parsed)
            else:
                accepted.append((number, parsed))
    return accepted, rejected


def parse_line(
    number: int, raw_line: bytes, compiled: CompiledAgent, max_bytes: int
) -> dict[str, Any] | Rejected:
    """One line of an input file: the input it holds, or why it is rejected (never raises).

    Example:
        >>> parse_line(3, b"[1]", compiled, 1000).error  # doctest: +SKIP
        'not a JSON object: got list'
    """
    shown = raw_line.decode("utf-8", errors="replace").rstrip("\n")[:2000]
    if len(raw_line) > max_bytes:
        return Rejected(number, f"line is {len(raw_line)} bytes, over {max_bytes}", shown)
    try:
        text = raw_line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Rejected(number, f"not UTF-8: {exc.reason} at byte {exc.start}", shown)
    try:
        item = json.loads(text)
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and integers over Python's 4300-digit limit.
        return Rejected(number, f"not JSON: {str(exc)[:300]}", shown)
    if not isinstance(item, dict):
        return Rejected(number, f"not a JSON object: got {type(item).__name__}", shown)
    unsafe = input_problem(item)
    if unsafe:
        return Rejected(number, unsafe, shown)
    problems = compiled.check_inputs(split_labels(item, compiled)[0])
    if problems:
        return Rejected(number, "; ".join(problems), shown)
    return item


def input_problem(item: Any) -> str | None:
    """Why a parsed input cannot travel through a batch safely, or None when it can.

    Rejected: nesting deeper than `MAX_NESTING`, text that is not valid Unicode (a lone
    surrogate from a `\\ud800` escape: nothing can encode it, and Prefect fails the whole batch
    on it), a NUL in `subject` or `run_key` (identifiers in text columns), and an input bigger
    than `BATCH_PARAMETER_BYTES` once serialised.

    Example:
        >>> input_problem({"raw": {"body": "fine"}}) is None
        True
        >>> input_problem({"raw": "\\ud800"})
        'text at raw is not valid Unicode (a lone surrogate at character 0)'
    """
    # Iterative walk: a recursive one would itself overflow on the inputs it must reject.
    stack: list[tuple[Any, str, int]] = [(item, "", 0)]
    while stack:
        value, where, depth = stack.pop()
        if depth > MAX_NESTING:
            return f"nested deeper than {MAX_NESTING} levels at {where or 'the top'}"
        if isinstance(value, dict):
            for key, child in value.items():
                stack.append((key, where, depth + 1))
                stack.append((child, f"{where}.{key}" if where else str(key), depth + 1))
        elif isinstance(value, list):
            stack.extend((child, f"{where}[{i}]", depth + 1) for i, child in enumerate(value))
        elif isinstance(value, str):
            bad = _surrogate_at(value)
            if bad is not None:
                return (
                    f"text at {where or 'the top'} is not valid Unicode "
                    f"(a lone surrogate at character {bad})"
                )
    for key in _IDENTIFIER_KEYS:
        if isinstance(item.get(key), str) and "\x00" in item[key]:
            return f"input '{key}' contains a NUL character"
    size = parameter_bytes(item)
    if size > BATCH_PARAMETER_BYTES:
        return (
            f"input is {size} bytes as a flow-run parameter, over {BATCH_PARAMETER_BYTES} "
            "(Prefect refuses flow runs with more than 512 KiB of parameters)"
        )
    return None


def _surrogate_at(text: str) -> int | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def parameter_bytes(item: Any) -> int:
    """The size Prefect gives `item` as a flow-run parameter (compact JSON, ASCII-escaped).

    Example:
        >>> parameter_bytes({"a": "é"})
        14
    """
    return len(json.dumps(item, separators=(",", ":")))


def batches(
    items: list[dict[str, Any]], budget: int = BATCH_PARAMETER_BYTES
) -> list[list[dict[str, Any]]]:
    """Cut `items` into consecutive batches whose parameters stay within `budget` bytes.

    Order is kept; an item bigger than the budget gets a batch of its own (the loader has
    already rejected those).

    Example:
        >>> [len(b) for b in batches([{"a": "x" * 40}] * 5, budget=100)]
        [2, 2, 1]
    """
    out: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    used = 0
    for item in items:
        size = parameter_bytes(item) + 1  # the comma between list items
        if current and used + size > budget:
            out.append(current)
            current, used = [], 0
        current.append(item)
        used += size
    if current:
        out.append(current)
    return out


def quarantine_path(path: Path) -> Path:
    """Where rejected lines go: next to the input, `<name>.quarantine.jsonl`."""
    return path.with_name(f"{path.stem}.quarantine.jsonl")


def write_quarantine(path: Path, rejected: list[Rejected]) -> Path:
    target = quarantine_path(path)
    with target.open("w", encoding="utf-8") as handle:
        for r in rejected:
            handle.write(json.dumps({"line": r.line, "error": r.error, "raw": r.raw}) + "\n")
    return target


def run_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    input: Path = typer.Option(..., "--input", "-i", help="A JSONL file, one input per line."),
    tenant: str = typer.Option("default", "--tenant", "-t", help="The tenant of every run."),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1, help="Runs in flight."),
    output: str = typer.Option("table", "--output", "-o", help="table or json (one per line)."),
) -> None:
    """Run AGENT over every line of --input; bad lines are quarantined, the rest still run."""
    target = load_agent(agent)
    compiled = target.compile()
    if not input.exists():
        exit_with_error(f"input file {str(input)!r} does not exist")
    settings = get_current_settings()
    accepted, rejected = read_inputs(input, compiled, settings.max_input_bytes)
    if rejected:
        where = write_quarantine(input, rejected)
        for r in rejected:
            err_console.print(f"[yellow]line {r.line}:[/yellow] {r.error}")
        err_console.print(f"{len(rejected)} bad line(s) quarantined in {where}")

    results: list[RunResult] = []
    if accepted:
        with Progress(
            TextColumn(f"[bold]{target.name}[/bold]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=err_console,
            transient=output == "json",
        ) as progress:
            bar = progress.add_task("runs", total=len(accepted))
            # One flow run per batch of at most BATCH_PARAMETER_BYTES: a file bigger than
            # Prefect's parameter limit would otherwise fail as a whole.
            for chunk in batches([split_labels(item, compiled)[0] for _, item in accepted]):
                results.extend(
                    compiled.run_batch(
                        chunk,
                        tenant=tenant,
                        concurrency=concurrency,
                        on_result=lambda _index, _result: progress.advance(bar),
                    )
                )
    if results:
        _let_prefect_settle()
    if output == "json":
        for (line, _), result in zip(accepted, results, strict=True):
            console.print_json(
                json.dumps(
                    {
                        "line": line,
                        "status": result.status,
                        "run_id": result.run_id,
                        "subject": result.subject,
                        "error": result.error,
                    }
                )
            )
    else:
        _summary(target.name, tenant, accepted, results, rejected)
    failed = sum(1 for r in results if r.status == "failed")
    if failed or rejected:
        raise typer.Exit(1)


def _let_prefect_settle() -> None:
    """Let the ephemeral Prefect server record the last task runs before the process exits.

    Without a wait it is stopped mid-flush and prints `Error flushing ... events` tracebacks.
    """
    import time

    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if PREFECT_API_URL.value():
        return  # a real server keeps running; nothing to wait for
    EventsWorker.drain_all(timeout=10)
    time.sleep(1.5)


def _summary(
    name: str,
    tenant: str,
    accepted: list[tuple[int, dict[str, Any]]],
    results: list[RunResult],
    rejected: list[Rejected],
) -> None:
    counts = Counter(r.status for r in results)
    step_counts: Counter[str] = Counter()
    for r in results:
        step_counts.update(r.steps.values())
    table = Table(title=f"{name} · tenant {tenant}")
    table.add_column("outcome")
    table.add_column("runs", justify="right")
    for status in ("completed", "held", "failed"):
        table.add_row(status, str(counts.get(status, 0)))
    table.add_row("quarantined lines", str(len(rejected)))
    table.add_section()
    for status in ("completed", "cached", "held", "skipped", "failed"):
        table.add_row(f"steps {status}", str(step_counts.get(status, 0)))
    console.print(table)
    for (line, _), r in zip(accepted, results, strict=True):
        if r.status == "failed":
            console.print(f"[red]line {line} failed:[/red] {r.error}")
