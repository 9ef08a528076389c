"""`stalwart run`: an agent over a JSONL file, with a progress bar, quarantine and a summary."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.cli._utilities import console, err_console, exit_with_error, load_agent
from agents.execution.runner import runner_for
from agents.graph import AgentGraph
from agents.inputs import input_problem
from agents.result import RunResult
from agents.settings import get_current_settings

#: The key of a JSONL line holding its labels (`{"route": {"category": "billing"}}`: step →
#: field → expected value). `stalwart eval` scores them; no run ever receives them.
LABELS_KEY = "expected"


def split_labels(
    item: dict[str, Any], graph: AgentGraph
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A line's run inputs and its labels (None when it has none).

    The labels key is only taken when no step reads a run input of that name.

    Example:
        >>> split_labels({"raw": {}, "expected": {"route": {"category": "billing"}}},
        ...              graph)  # doctest: +SKIP
        ({'raw': {}}, {'route': {'category': 'billing'}})
    """
    if LABELS_KEY not in item or LABELS_KEY in graph.input_names:
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
    path: Path, graph: AgentGraph, max_bytes: int
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
            parsed = parse_line(number, raw_line, graph, max_bytes)
            if isinstance(parsed, Rejected):
                rejected.append(parsed)
            else:
                accepted.append((number, parsed))
    return accepted, rejected


def parse_line(
    number: int, raw_line: bytes, graph: AgentGraph, max_bytes: int
) -> dict[str, Any] | Rejected:
    """One line of an input file: the input it holds, or why it is rejected (never raises).

    Example:
        >>> parse_line(3, b"[1]", graph, 1000).error  # doctest: +SKIP
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
    problems = graph.check_inputs(split_labels(item, graph)[0])
    if problems:
        return Rejected(number, "; ".join(problems), shown)
    return item


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
    graph = target.compile()
    if not input.exists():
        exit_with_error(f"input file {str(input)!r} does not exist")
    settings = get_current_settings()
    accepted, rejected = read_inputs(input, graph, settings.max_input_bytes)
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
            # run_batch cuts the inputs into flow runs that fit Prefect's parameter limit.
            results = runner_for(graph).run_batch(
                [split_labels(item, graph)[0] for _, item in accepted],
                tenant=tenant,
                concurrency=concurrency,
                on_result=lambda _index, _result: progress.advance(bar),
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
        _summary(target.name, agent, tenant, accepted, results, rejected)
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
    agent: str,
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
    for status in ("completed", "held", "awaiting_review", "failed"):
        table.add_row(status, str(counts.get(status, 0)))
    table.add_row("quarantined lines", str(len(rejected)))
    table.add_section()
    for status in ("completed", "cached", "held", "awaiting_review", "skipped", "failed"):
        table.add_row(f"steps {status}", str(step_counts.get(status, 0)))
    console.print(table)
    for (line, _), r in zip(accepted, results, strict=True):
        if r.status == "failed":
            console.print(f"[red]line {line} failed:[/red] {r.error}")
    waiting = counts.get("awaiting_review", 0)
    if waiting:
        # The agent as the user named it: `stalwart resume` loads it the same way.
        resume = escape(f"stalwart resume {agent} --tenant {tenant}")
        console.print(
            f"{waiting} run(s) await a person's review: see them with "
            f"[bold]{escape(f'stalwart reviews --tenant {tenant}')}[/bold], answer each with "
            f"`stalwart review`, then continue the runs with [bold]{resume}[/bold]."
        )
