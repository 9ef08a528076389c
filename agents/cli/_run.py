"""`stalwart run`: an agent over a JSONL file, with a progress bar, quarantine and a summary.

While it runs the terminal shows one progress bar (Prefect's per-task-run lines go to a log
file, `--verbose` brings them back); at the end, a summary read from the run and decision logs
(`RunSummary`): outcomes, the fallback ladder, decisions by category, tokens and cost, latency,
the slowest or failed runs, and the commands that look further. `--json` prints it as one object.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import typing
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.cli._utilities import (
    console,
    err_console,
    exit_with_error,
    let_prefect_record,
    load_agent,
    quiet_prefect,
)
from agents.declare.decision import LadderPath
from agents.execution.runner import runner_for
from agents.graph import AgentGraph
from agents.inputs import input_problem
from agents.result import RunResult
from agents.settings import get_current_settings
from agents.store.tables import AgentRun, DecisionRecord

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


#: The outcomes a summary counts, in the order it shows them.
OUTCOMES = ("completed", "held", "awaiting_review", "failed", "conflict", "quarantined")
#: The rungs of the fallback ladder a summary shows even at zero (the others when non-zero).
LADDER_SHOWN: tuple[str, ...] = tuple(
    path.value
    for path in (
        LadderPath.DIRECT,
        LadderPath.FALLBACK_MODEL,
        LadderPath.HUMAN,
        LadderPath.DEFAULT,
        LadderPath.REJECTED,
    )
)
#: The paths whose decision was acted on: a category is counted for these only.
DECIDED = frozenset(
    {LadderPath.DIRECT, LadderPath.FALLBACK_MODEL, LadderPath.HUMAN, LadderPath.DEFAULT}
)


@dataclass(kw_only=True)
class RunSummary:
    """What `stalwart run` reports at the end: read from the runs' results and their rows in
    the run and decision logs (`--json` prints `to_dict()`).

    Example:
        >>> RunSummary(agent="a", tenant="t", input="x.jsonl", runs=0, seconds=1.0).runs_per_s
        0.0
    """

    agent: str
    tenant: str
    input: str
    runs: int
    """Inputs run (quarantined lines excluded)."""
    seconds: float
    """Wall time of the runs."""
    outcomes: dict[str, int] = field(default_factory=dict)
    """Runs per status, and `quarantined`: the input lines that could not run."""
    ladder: dict[str, int] = field(default_factory=dict)
    """This batch's logged decisions per path (`LadderPath`): direct, fallback_model, human,
    awaiting_review, default, held, rejected."""
    categories: dict[str, dict[str, int]] = field(default_factory=dict)
    """`step.field` → value → decisions acted on, for a reasoning step whose decision has a
    category (its first field typed as a `Literal` of strings or an `Enum`)."""
    decisions_logged: int = 0
    model_calls: int = 0
    """Logged decisions a model made (re-asks, retries and a tool loop's turns included in one)."""
    replayed: int = 0
    """Runs whose decisions came from an earlier run of the same input (cached): no new cost."""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    priced: bool = False
    """Whether any model of the logged decisions has a price (`STALWART_MODEL_PRICES`)."""
    run_ms_p50: float | None = None
    run_ms_p95: float | None = None
    worst: list[dict[str, Any]] = field(default_factory=list)
    """The failed runs, then the slowest, three at most: line, subject, status, duration_ms,
    error, run_id."""
    next: list[str] = field(default_factory=list)
    """Commands that look further."""
    prefect_ui: str | None = None
    """The Prefect UI's address when a Prefect server is configured (`PREFECT_API_URL`)."""
    log_file: str | None = None
    """Where Prefect's lines of this command went."""

    @property
    def runs_per_s(self) -> float:
        return self.runs / self.seconds if self.seconds > 0 and self.runs else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "runs_per_s": round(self.runs_per_s, 2)}


def category_field(decision_type: Any) -> str | None:
    """The field that categorises a decision: its first field typed as a `Literal` of strings
    or an `Enum`, or None.

    Example:
        >>> from typing import Literal
        >>> from pydantic import create_model
        >>> Routing = create_model(
        ...     "Routing", queue=(str, ...), category=(Literal["billing", "technical"], ...)
        ... )
        >>> category_field(Routing)
        'category'
    """
    from enum import Enum

    fields = getattr(decision_type, "model_fields", None)
    if not isinstance(fields, dict):
        return None
    for name, info in fields.items():
        annotation = info.annotation
        if typing.get_origin(annotation) is typing.Literal and all(
            isinstance(arg, str) for arg in typing.get_args(annotation)
        ):
            return str(name)
        if isinstance(annotation, type) and issubclass(annotation, Enum):
            return str(name)
    return None


def summarise(
    graph: AgentGraph,
    *,
    tenant: str,
    source: Path,
    lines: list[int],
    results: list[RunResult],
    rejected: int,
    seconds: float,
    decisions: list[DecisionRecord],
    runs: list[AgentRun],
) -> RunSummary:
    """A batch's summary from its results and the log rows of its runs (others are ignored)."""
    from agents.observe.metrics import percentile

    ids = {r.run_id for r in results}
    mine = [d for d in decisions if d.agent_run_id in ids and d.path != LadderPath.SHADOW]
    durations = {r.id: r.duration_ms for r in runs if r.id in ids and r.duration_ms is not None}
    statuses: Counter[str] = Counter(r.status for r in results)
    summary = RunSummary(
        agent=graph.name,
        tenant=tenant,
        input=str(source),
        runs=len(results),
        seconds=seconds,
        outcomes={
            **{s: statuses.get(s, 0) for s in OUTCOMES if s != "quarantined"},
            "quarantined": rejected,
        },
    )
    paths = Counter(d.path for d in mine)
    summary.ladder = {p.value: paths.get(p.value, 0) for p in LadderPath.rungs()}
    for node in graph.nodes.values():
        name = category_field(node.returns) if node.step.layer == "reasoning" else None
        if name is None:
            continue
        values = Counter(
            str(d.output[name])
            for d in mine
            if d.step == node.name
            and d.path in DECIDED
            and isinstance(d.output, dict)
            and d.output.get(name) is not None
        )
        summary.categories[f"{node.name}.{name}"] = dict(values.most_common())
    summary.decisions_logged = len(mine)
    summary.model_calls = sum(1 for d in mine if d.model)
    logged = {d.agent_run_id for d in mine}
    summary.replayed = sum(1 for r in results if r.paths and r.run_id not in logged)
    summary.tokens_in = sum(d.tokens_in for d in mine)
    summary.tokens_out = sum(d.tokens_out for d in mine)
    summary.cost_usd = sum(d.cost for d in mine)
    prices = get_current_settings().model_prices
    summary.priced = any(d.model in prices for d in mine)
    summary.run_ms_p50 = percentile(list(durations.values()), 50)
    summary.run_ms_p95 = percentile(list(durations.values()), 95)
    by_line = list(zip(lines, results, strict=True))
    failed = [(n, r) for n, r in by_line if r.status == "failed"]
    slowest = sorted(
        ((n, r) for n, r in by_line if r.status != "failed" and r.run_id in durations),
        key=lambda pair: -durations[pair[1].run_id],
    )
    summary.worst = [
        {
            "line": n,
            "subject": r.subject,
            "status": r.status,
            "duration_ms": durations.get(r.run_id),
            "error": r.error,
            "run_id": r.run_id,
        }
        for n, r in [*failed, *slowest][:3]
    ]
    summary.prefect_ui = prefect_ui_url()
    summary.next = next_commands(summary, graph.name)
    return summary


#: Where `prefect server start` serves the UI by default.
LOCAL_UI = "http://127.0.0.1:4200/runs"


def prefect_ui_url() -> str | None:
    """The Prefect UI's address when a Prefect server is configured, else None."""
    from prefect.settings import PREFECT_API_URL, PREFECT_UI_URL

    if not PREFECT_API_URL.value():
        return None
    return PREFECT_UI_URL.value() or None


def next_commands(summary: RunSummary, agent: str) -> list[str]:
    """The commands that look further into a batch."""
    scope = f"--tenant {summary.tenant} --agent {agent}"
    commands = [f"stalwart decisions {scope}"]
    if summary.ladder.get(LadderPath.FALLBACK_MODEL, 0) or summary.ladder.get(
        LadderPath.DEFAULT, 0
    ):
        commands.append(f"stalwart decisions {scope} --path fallback_model")
    if summary.outcomes.get("awaiting_review"):
        commands.append(f"stalwart reviews --tenant {summary.tenant} --agent {agent}")
        commands.append(f"stalwart resume {agent} --tenant {summary.tenant}")
    if summary.outcomes.get("failed"):
        commands.append(f"stalwart runs {scope} --status failed")
    commands.append(f"stalwart report {scope}")
    return commands


class LiveTally:
    """Keeps a progress bar's runs/s, model calls and cost current: the decision log of this
    batch is read once a second in a thread of its own (the runs never wait for it)."""

    def __init__(
        self, progress: Progress, bar: Any, *, tenant: str, agent: str, since: datetime
    ) -> None:
        self.progress, self.bar = progress, bar
        self.tenant, self.agent, self.since = tenant, agent, since
        self.started = time.monotonic()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="stalwart-tally", daemon=True)

    def __enter__(self) -> LiveTally:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join(timeout=5)
        self.update()

    def _loop(self) -> None:
        while not self.stopped.wait(1.0):
            self.update()

    def update(self) -> None:
        import sqlalchemy as sa
        from sqlmodel import col, func, select

        from agents.store.engine import session

        done = self.progress.tasks[0].completed if self.progress.tasks else 0
        elapsed = time.monotonic() - self.started
        fields: dict[str, Any] = {"speed": f"{done / elapsed if elapsed > 0 else 0.0:.1f}"}
        query = select(
            func.count(col(DecisionRecord.model)), func.coalesce(func.sum(DecisionRecord.cost), 0)
        ).where(
            col(DecisionRecord.tenant) == self.tenant,
            col(DecisionRecord.agent) == self.agent,
            col(DecisionRecord.created_at) >= self.since,
        )
        try:
            with session() as s:
                calls, cost = s.exec(query).one()
        except sa.exc.SQLAlchemyError:
            pass  # a busy database delays the figures by a second, never the runs
        else:
            fields.update(calls=f"{calls:,}", cost=f"{float(cost):.4f}")
        self.progress.update(self.bar, **fields)


def run_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    input: Path = typer.Option(..., "--input", "-i", help="A JSONL file, one input per line."),
    tenant: str = typer.Option("default", "--tenant", "-t", help="The tenant of every run."),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1, help="Runs in flight."),
    output: str = typer.Option(
        "table", "--output", "-o", help="table (the summary) or json (one line per run)."
    ),
    as_json: bool = typer.Option(
        False, "--json", help="Print the summary as one JSON object, nothing else on stdout."
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show Prefect's lines (one per task run) on the terminal."
    ),
) -> None:
    """Run AGENT over every line of --input; bad lines are quarantined, the rest still run.

    The terminal shows a progress bar, then a summary; Prefect's lines go to a log file in the
    data directory (printed at the end) unless --verbose.
    """
    target = load_agent(agent)
    graph = target.compile()
    if not input.exists():
        exit_with_error(f"input file {str(input)!r} does not exist")
    log_file = quiet_prefect("run", verbose)
    settings = get_current_settings()
    accepted, rejected = read_inputs(input, graph, settings.max_input_bytes)
    if rejected:
        where = write_quarantine(input, rejected)
        for r in rejected[:5]:
            err_console.print(f"[yellow]line {r.line}:[/yellow] {escape(r.error)}")
        more = f" ({len(rejected) - 5} more not shown)" if len(rejected) > 5 else ""
        err_console.print(f"{len(rejected)} bad line(s) quarantined in {where}{more}")

    results: list[RunResult] = []
    since = datetime.now(UTC) - timedelta(seconds=5)  # the log's clock may differ a little
    started = time.monotonic()
    if accepted:
        with Progress(
            TextColumn(f"[bold]{escape(target.name)}[/bold]"),
            BarColumn(bar_width=24),
            MofNCompleteColumn(),
            TextColumn("{task.fields[speed]} runs/s · {task.fields[calls]} model calls"),
            TextColumn("· ${task.fields[cost]}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=as_json or output == "json",
        ) as progress:
            bar = progress.add_task("runs", total=len(accepted), speed="0.0", calls="0", cost="0")
            with LiveTally(progress, bar, tenant=tenant, agent=graph.name, since=since):
                # run_batch cuts the inputs into flow runs that fit Prefect's parameter limit.
                results = runner_for(graph).run_batch(
                    [split_labels(item, graph)[0] for _, item in accepted],
                    tenant=tenant,
                    concurrency=concurrency,
                    on_result=lambda _index, _result: progress.advance(bar),
                )
    seconds = time.monotonic() - started
    if results:
        let_prefect_record(r.flow_run_id for r in results)
    if output == "json" and not as_json:
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
        decisions, runs = read_batch_log(tenant, graph.name, since, len(results))
        summary = summarise(
            graph,
            tenant=tenant,
            source=input,
            lines=[line for line, _ in accepted],
            results=results,
            rejected=len(rejected),
            seconds=seconds,
            decisions=decisions,
            runs=runs,
        )
        summary.log_file = str(log_file)
        if as_json:
            sys.stdout.write(json.dumps(summary.to_dict(), default=str) + "\n")
        else:
            print_summary(summary)
    failed = sum(1 for r in results if r.status == "failed")
    if failed or rejected:
        raise typer.Exit(1)


def read_batch_log(
    tenant: str, agent: str, since: datetime, expected: int
) -> tuple[list[DecisionRecord], list[AgentRun]]:
    """The decision-log and run-log rows of an agent since a batch started (the batch's among
    them: `summarise` keeps those of its runs)."""
    from agents import decisions
    from agents.store import queries

    limit = max(100, expected * 4)
    rows = decisions.query(tenant=tenant, agent=agent, since=since, limit=limit)
    runs = queries.runs(tenant=tenant, agent=agent, since=since, limit=limit)
    return rows, runs


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def _counts(counts: dict[str, int], shown: tuple[str, ...] = ()) -> str:
    """`12 billing · 3 other`: every count in `shown`, the others when non-zero."""
    return " · ".join(
        f"{n} {name.replace('_', ' ')}" for name, n in counts.items() if n or name in shown
    )


def print_summary(summary: RunSummary) -> None:
    """Print a batch's summary: one line per measure, then what to look at next."""
    s = summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row("outcomes", escape(_counts(s.outcomes, ("completed", "failed"))))
    if s.decisions_logged:
        grid.add_row("ladder", escape(_counts(s.ladder, LADDER_SHOWN)))
    for name, values in s.categories.items():
        grid.add_row(escape(name), escape(_counts(values)) or "—")
    if s.replayed:
        grid.add_row("replayed", f"{s.replayed} run(s) from cache: no new model call or cost")
    cost = f"${s.cost_usd:.4f}" if s.priced else "$0 (no prices: STALWART_MODEL_PRICES)"
    grid.add_row(
        "model", f"{s.model_calls:,} calls · {s.tokens_in:,} in / {s.tokens_out:,} out tokens"
    )
    grid.add_row("cost", cost)
    grid.add_row("latency", f"run p50 {_ms(s.run_ms_p50)} · p95 {_ms(s.run_ms_p95)}")
    for index, worst in enumerate(s.worst):
        what = "failed" if worst["status"] == "failed" else "slowest"
        error = f": {worst['error']}" if worst["error"] else ""
        grid.add_row(
            what if index == 0 or s.worst[index - 1]["status"] != worst["status"] else "",
            escape(
                f"line {worst['line']} {worst['status']} ({worst['subject'] or 'no subject'}) "
                f"in {_ms(worst['duration_ms'])}{error}"
            ),
        )
    for index, command in enumerate(s.next):
        grid.add_row("next" if index == 0 else "", escape(command))
    if s.prefect_ui:
        grid.add_row("Prefect UI", escape(s.prefect_ui))
    else:
        # The temporary server kept its runs in Prefect's database: a server started on it
        # shows them.
        grid.add_row("Prefect UI", f"prefect server start, then {LOCAL_UI}")
    console.print(
        f"[bold]{escape(s.agent)}[/bold] · tenant {escape(s.tenant)} · {s.runs} runs in "
        f"{s.seconds:.1f} s ({s.runs_per_s:.1f} runs/s)"
    )
    console.print(grid)
    if s.log_file:
        # Unwrapped: a path cut in two cannot be copied.
        console.print(f"[bold]Prefect log[/bold]  {escape(s.log_file)}", soft_wrap=True)
