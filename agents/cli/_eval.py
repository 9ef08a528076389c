"""`stalwart eval`: run an agent over labelled inputs and score it.

This module owns scoring: accuracy per labelled field and overall, the share of decisions made
at each rung of the fallback ladder, the runs still awaiting a person's review, cost and
latency, and, for an agent whose reasoning steps use tools, what the tools are worth: the same
agent run again with every reasoning step's tools removed (`--no-tools` alone, or
`--compare-tools` for both runs and the difference). Reading the input file is
`agents.cli._run`'s job (a line's labels sit under
`LABELS_KEY`, step → field → value, and are never passed to a run); running is the agent
runner's (`agents.execution.runner`).

Example:
    ```
    stalwart eval ticket-triage                      # the bundled 200 labelled tickets
    stalwart eval ticket-triage --input mine.jsonl --json
    stalwart eval ticket-triage --compare-tools      # with the tools, then without them
    ```
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from agents.cli._run import read_inputs, split_labels, write_quarantine
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
from agents.graph import AgentGraph, without_tools
from agents.result import RunResult
from agents.settings import get_current_settings
from agents.store.tables import AgentRun, DecisionRecord

#: The rung each ladder path is shown as: its value, but for these two.
_RUNG_NAMES = {LadderPath.DIRECT: "primary", LadderPath.FALLBACK_MODEL: "fallback"}
_RUNG_OF_PATH = {path.value: _RUNG_NAMES.get(path, path.value) for path in LadderPath.rungs()}
#: The rungs of the fallback ladder, in the order a decision walks them; `no decision` is a
#: run that failed before its reasoning step decided.
RUNGS = (*_RUNG_OF_PATH.values(), "no decision")
#: An agent's module may name its bundled labelled sample under this attribute.
SAMPLE_ATTRIBUTE = "SAMPLE_INPUTS"


@dataclass(frozen=True, kw_only=True)
class FieldScore:
    """How often one labelled field of one step was right."""

    step: str
    """The step whose output holds the field."""
    field: str
    """The field's name."""
    correct: int
    """Inputs whose output had the labelled value."""
    total: int
    """Inputs with a label for this field."""

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


@dataclass(kw_only=True)
class Evaluation:
    """The scores of one eval: what `stalwart eval` prints.

    Example:
        >>> Evaluation(agent="triage", tenant="t", runs=0).overall_accuracy
        0.0
    """

    agent: str
    tenant: str
    runs: int
    """Inputs run."""
    tools: bool = True
    """False when the agent ran with its reasoning steps' tools removed (`--no-tools`)."""
    statuses: dict[str, int] = field(default_factory=dict)
    """Runs per status: completed, held, awaiting_review, failed."""
    awaiting_review: int = 0
    """Runs stopped at a human review: their decision is the reviewer's, still to come."""
    labelled: int = 0
    """Labelled inputs scored as a whole: every input that carried labels, but for a run
    awaiting review whose labelled step has no decision yet (see `score`)."""
    fields: list[FieldScore] = field(default_factory=list)
    """Accuracy per labelled (step, field)."""
    overall_correct: int = 0
    """Labelled inputs whose every labelled field was right."""
    ladder: dict[str, dict[str, int]] = field(default_factory=dict)
    """Per reasoning step: decisions per rung (see `RUNGS`)."""
    replayed: int = 0
    """Runs whose decisions were replayed from an earlier run (cached): no new cost."""
    decisions_logged: int = 0
    """Decision-log rows written by this eval."""
    tool_calls: int = 0
    """Tool calls the logged decisions made (reasoning steps with tools)."""
    tokens_in: int = 0
    tokens_out: int = 0
    cost_usd: float = 0.0
    """Sum of the logged decisions' cost (priced from `STALWART_MODEL_PRICES`)."""
    priced: bool = False
    """Whether any model of the logged decisions has a price."""
    run_ms_p50: float | None = None
    run_ms_p95: float | None = None
    flow_run_ids: list[str] = field(default_factory=list)
    """The Prefect flow runs the inputs ran in."""
    model_ms_p50: float | None = None
    model_ms_p95: float | None = None

    @property
    def overall_accuracy(self) -> float:
        return self.overall_correct / self.labelled if self.labelled else 0.0

    def shares(self, step: str) -> dict[str, float]:
        """Each rung's share of one reasoning step's decisions (they sum to 1).

        Example:
            >>> e = Evaluation(agent="a", tenant="t", runs=2,
            ...                ladder={"route": {"primary": 1, "default": 1}})
            >>> e.shares("route")["default"]
            0.5
        """
        counts = self.ladder.get(step, {})
        total = sum(counts.values())
        return {rung: (counts.get(rung, 0) / total if total else 0.0) for rung in RUNGS}

    def to_dict(self) -> dict[str, Any]:
        """A JSON-compatible form (`stalwart eval --json`)."""
        data = asdict(self)
        data["fields"] = [{**asdict(f), "accuracy": f.accuracy} for f in self.fields]
        data["overall_accuracy"] = self.overall_accuracy
        data["shares"] = {step: self.shares(step) for step in self.ladder}
        return data


def percentile(values: Sequence[float], q: float) -> float | None:
    """The nearest-rank `q`-th percentile (0 < q <= 100), or None for no values.

    Example:
        >>> percentile([10, 20, 30, 40], 50), percentile([10, 20, 30, 40], 95)
        (20, 40)
    """
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def field_value(output: Any, name: str) -> Any:
    """A field of a step's output, whether a model, a mapping or an object; None if absent.

    Example:
        >>> field_value({"category": "billing"}, "category")
        'billing'
    """
    if isinstance(output, Mapping):
        return output.get(name)
    return getattr(output, name, None)


def score(
    agent: str,
    tenant: str,
    results: Sequence[RunResult],
    labels: Sequence[Mapping[str, Mapping[str, Any]] | None],
    reasoning_steps: Sequence[str],
    decisions: Sequence[DecisionRecord] = (),
    runs: Sequence[AgentRun] = (),
) -> Evaluation:
    """Score finished runs against their labels; cost and latency come from their log rows.

    A step's *final* output is scored, whatever rung of the ladder produced it; an input
    whose run has no output for a labelled step (it failed) counts as wrong. A run that stopped
    at a human review (`awaiting_review`) has no final decision yet, neither right nor wrong:
    the labelled steps it did not reach (the one under review and those after it) are not
    scored, and the input is left out of `labelled` and `overall_correct`, so the accuracy is
    that of the decisions made. Such runs are counted in `awaiting_review` and on the ladder's
    `awaiting_review` rung.

    Example:
        >>> score("a", "t", [], [], ["route"]).runs
        0
    """
    ids = {r.run_id for r in results}
    evaluation = Evaluation(
        agent=agent,
        tenant=tenant,
        runs=len(results),
        statuses=dict(Counter(r.status for r in results)),
        awaiting_review=sum(1 for r in results if r.status == "awaiting_review"),
    )
    tallies: dict[tuple[str, str], list[int]] = {}
    for result, wanted in zip(results, labels, strict=True):
        if not wanted:
            continue
        # A run awaiting review has no decision yet for the step under review and the steps
        # after it (no output, yet not failed): those labels wait, the others are scored.
        waiting = result.status == "awaiting_review"
        scored = {s: v for s, v in wanted.items() if not waiting or s in result.outputs}
        all_right = True
        for step, values in scored.items():
            output = result.outputs.get(step)
            for name, value in values.items():
                right = output is not None and field_value(output, name) == value
                tally = tallies.setdefault((step, name), [0, 0])
                tally[0] += right
                tally[1] += 1
                all_right = all_right and right
        if len(scored) == len(wanted):
            evaluation.labelled += 1
            evaluation.overall_correct += all_right
    evaluation.fields = [
        FieldScore(step=step, field=name, correct=c, total=t)
        for (step, name), (c, t) in tallies.items()
    ]
    for step in reasoning_steps:
        rungs: Counter[str] = Counter()
        for result in results:
            path = result.paths.get(step)
            rungs[_RUNG_OF_PATH.get(path, "no decision") if path else "no decision"] += 1
        evaluation.ladder[step] = {rung: rungs.get(rung, 0) for rung in RUNGS}
    mine = [d for d in decisions if d.agent_run_id in ids]
    # A decision replayed from an earlier run (cached) was logged, and paid for, back then.
    logged = {d.agent_run_id for d in mine}
    evaluation.replayed = sum(1 for r in results if r.paths and r.run_id not in logged)
    evaluation.decisions_logged = len(mine)
    evaluation.tool_calls = sum(len(d.tool_calls or ()) for d in mine)
    evaluation.tokens_in = sum(d.tokens_in for d in mine)
    evaluation.tokens_out = sum(d.tokens_out for d in mine)
    evaluation.cost_usd = sum(d.cost for d in mine)
    prices = get_current_settings().model_prices
    evaluation.priced = any(d.model in prices for d in mine)
    model_ms = [d.latency_ms for d in mine if d.latency_ms is not None]
    evaluation.model_ms_p50 = percentile(model_ms, 50)
    evaluation.model_ms_p95 = percentile(model_ms, 95)
    run_ms = [r.duration_ms for r in runs if r.id in ids and r.duration_ms is not None]
    evaluation.run_ms_p50 = percentile(run_ms, 50)
    evaluation.run_ms_p95 = percentile(run_ms, 95)
    return evaluation


def read_log(
    tenant: str, agent: str, since: datetime, expected: int
) -> tuple[list[DecisionRecord], list[AgentRun]]:
    """This eval's decision-log rows and run rows (everything of the agent since `since`)."""
    from agents import decisions
    from agents.store import queries

    limit = max(100, expected * 4)
    rows = decisions.query(tenant=tenant, agent=agent, since=since, limit=limit)
    runs = queries.runs(tenant=tenant, agent=agent, since=since, limit=limit)
    return rows, runs


def default_input(graph: AgentGraph) -> Path | None:
    """The labelled sample an agent's module ships as `SAMPLE_INPUTS`, if any.

    Example:
        >>> default_input(load_agent("ticket-triage").compile()).name  # doctest: +SKIP
        'tickets.jsonl'
    """
    for step in graph.order:
        module = sys.modules.get(step.fn.__module__)
        sample = getattr(module, SAMPLE_ATTRIBUTE, None)
        if sample is not None:
            return Path(sample)
    return None


@contextlib.contextmanager
def model_faults(spec: str | None) -> Iterator[None]:
    """Serve the model from a bundled server with these faults (JSON), for this block.

    A what-if for the offline model only (`{"confidence_by_model": {"stalwart-test": 0.5}}`:
    the primary model is unsure, so the ladder's fallback rung answers).
    """
    if not spec:
        yield
        return
    from agents.modelserver import ModelServer
    from agents.settings import reload_settings

    if get_current_settings().model_url:
        exit_with_error("--model-faults needs the bundled model server; unset STALWART_MODEL_URL")
    try:
        changes = json.loads(spec)
        if not isinstance(changes, dict):
            raise ValueError("expected a JSON object")
        server = ModelServer(port=0)
        server.faults.update(**changes)
    except (ValueError, TypeError) as exc:
        exit_with_error(f"--model-faults: {exc}")
    with server:
        # The runs read the endpoint from settings, in Prefect's threads: set the environment.
        os.environ["STALWART_MODEL_URL"] = server.url
        reload_settings()
        try:
            yield
        finally:
            os.environ.pop("STALWART_MODEL_URL", None)
            reload_settings()


def evaluate(
    graph: AgentGraph,
    items: Sequence[Mapping[str, Any]],
    *,
    tenant: str,
    concurrency: int = 16,
    progress: Progress | None = None,
    tools: bool = True,
) -> Evaluation:
    """Run labelled inputs (each may carry `LABELS_KEY`) and score them.

    With `tools=False` the agent runs with its reasoning steps' tools removed
    (`agents.graph.without_tools`); use a tenant of its own, or it replays the other runs.

    Example:
        >>> evaluate(triage.compile(), lines, tenant="eval-1").overall_accuracy  # doctest: +SKIP
        0.74
    """
    graph = graph if tools else without_tools(graph)
    split = [split_labels(dict(item), graph) for item in items]
    inputs = [inputs for inputs, _ in split]
    labels = [labels for _, labels in split]
    # The log's clock and ours may differ by a little; rows are matched by run id anyway.
    since = datetime.now(UTC) - timedelta(seconds=5)
    bar = progress.add_task("runs", total=len(inputs)) if progress is not None else None
    # run_batch cuts the inputs into flow runs below Prefect's parameter limit.
    results = runner_for(graph).run_batch(
        inputs,
        tenant=tenant,
        concurrency=concurrency,
        on_result=(
            (lambda _i, _r: progress.advance(bar)) if progress and bar is not None else None
        ),
    )
    reasoning = [s.name for s in graph.order if s.layer == "reasoning"]
    rows, runs = read_log(tenant, graph.name, since, len(results))
    evaluation = score(graph.name, tenant, results, labels, reasoning, rows, runs)
    evaluation.tools = tools
    evaluation.flow_run_ids = sorted({r.flow_run_id for r in results if r.flow_run_id})
    return evaluation


def has_tools(graph: AgentGraph) -> bool:
    """Whether any reasoning step of the agent declares tools.

    Example:
        >>> has_tools(load_agent("ticket-triage").compile())  # doctest: +SKIP
        True
    """
    return any(node.tools for node in graph.nodes.values())


def tools_gain(with_tools: Evaluation, without: Evaluation) -> dict[str, float]:
    """Accuracy with tools minus accuracy without, per labelled field and overall.

    Example:
        >>> tools_gain(Evaluation(agent="a", tenant="t", runs=1, labelled=2, overall_correct=2),
        ...            Evaluation(agent="a", tenant="u", runs=1, labelled=2, overall_correct=1))
        {'overall_accuracy': 0.5}
    """
    before = {f"{f.step}.{f.field}": f.accuracy for f in without.fields}
    gain = {
        f"{f.step}.{f.field}": f.accuracy - before[f"{f.step}.{f.field}"]
        for f in with_tools.fields
        if f"{f.step}.{f.field}" in before
    }
    gain["overall_accuracy"] = with_tools.overall_accuracy - without.overall_accuracy
    return gain


def eval_command(
    agent: str = typer.Argument(..., help="A registered agent name or module:attribute."),
    input: Path | None = typer.Option(
        None, "--input", "-i", help="Labelled JSONL; default: the agent's bundled sample."
    ),
    tenant: str | None = typer.Option(
        None, "--tenant", "-t", help="Default: a fresh tenant, so every decision is made anew."
    ),
    concurrency: int = typer.Option(16, "--concurrency", "-c", min=1, help="Runs in flight."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object, nothing else."),
    faults: str | None = typer.Option(
        None, "--model-faults", help="JSON faults for a bundled model server (what-if runs)."
    ),
    no_tools: bool = typer.Option(
        False, "--no-tools", help="Run with every reasoning step's tools removed."
    ),
    compare_tools: bool = typer.Option(
        False,
        "--compare-tools",
        help="Run twice, with the tools and without (tenant T, then T-no-tools): the gain.",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="Show Prefect's lines (one per task run) on the terminal."
    ),
) -> None:
    """Run AGENT over labelled inputs: accuracy, fallback-ladder shares, cost and latency."""
    graph = load_agent(agent).compile()
    if no_tools and compare_tools:
        exit_with_error("--no-tools and --compare-tools exclude each other")
    if compare_tools and not has_tools(graph):
        exit_with_error(f"agent {graph.name!r} declares no tools; nothing to compare")
    source = input or default_input(graph)
    if source is None:
        exit_with_error(f"agent {graph.name!r} ships no labelled sample; pass --input")
    if not source.exists():
        exit_with_error(f"input file {str(source)!r} does not exist")
    log_file = quiet_prefect("eval", verbose)
    # A fresh tenant has no cached results, answers or memory: the eval measures, not replays.
    tenant = tenant or f"eval-{datetime.now(UTC):%Y%m%d-%H%M%S}-{os.urandom(2).hex()}"
    accepted, rejected = read_inputs(source, graph, get_current_settings().max_input_bytes)
    if rejected:
        where = write_quarantine(source, rejected)
        err_console.print(f"{len(rejected)} bad line(s) quarantined in {where}")
    if not accepted:
        exit_with_error(f"no runnable line in {source}")
    # With the tools first: their lookups then read no helpdesk state the other run left.
    plans = [(tenant, True), (f"{tenant}-no-tools", False)] if compare_tools else []
    plans = plans or [(tenant, not no_tools)]
    found: list[Evaluation] = []
    with model_faults(faults):
        for where_to, tools in plans:
            label = graph.name if tools else f"{graph.name} (no tools)"
            with Progress(
                TextColumn(f"[bold]eval {escape(label)}[/bold]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err_console,
                transient=True,
            ) as progress:
                found.append(
                    evaluate(
                        graph,
                        [item for _, item in accepted],
                        tenant=where_to,
                        concurrency=concurrency,
                        progress=progress,
                        tools=tools,
                    )
                )
    let_prefect_record(run for evaluation in found for run in evaluation.flow_run_ids)
    if as_json:
        data = found[0].to_dict()
        if compare_tools:
            data["without_tools"] = found[1].to_dict()
            data["tools_gain"] = tools_gain(found[0], found[1])
        console.print(json.dumps(data), soft_wrap=True, markup=False)
        return
    for evaluation in found:
        print_evaluation(evaluation, source)
    if compare_tools:
        print_comparison(found[0], found[1])
    err_console.print(f"[dim]Prefect log: {escape(str(log_file))}[/dim]")


def _ms(value: float | None) -> str:
    return "—" if value is None else f"{value:,.0f} ms"


def print_evaluation(evaluation: Evaluation, source: Path | None = None) -> None:
    """Print an evaluation as rich tables."""
    e = evaluation
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(e.statuses.items()))
    where = f" over {source}" if source else ""
    tools = "" if e.tools else " · without tools"
    console.print(
        f"[bold]{e.agent}[/bold]{where}{tools} · tenant {e.tenant} · {e.runs} runs ({statuses})"
    )

    accuracy = Table(title="accuracy")
    accuracy.add_column("label")
    accuracy.add_column("right", justify="right")
    accuracy.add_column("accuracy", justify="right")
    for f in e.fields:
        accuracy.add_row(f"{f.step}.{f.field}", f"{f.correct}/{f.total}", f"{f.accuracy:.1%}")
    accuracy.add_section()
    accuracy.add_row(
        "all labels right", f"{e.overall_correct}/{e.labelled}", f"{e.overall_accuracy:.1%}"
    )
    accuracy.add_row("awaiting review (not scored)", str(e.awaiting_review), "")
    console.print(accuracy)

    for step in e.ladder:
        ladder = Table(title=f"fallback ladder · {step}")
        ladder.add_column("rung")
        ladder.add_column("decisions", justify="right")
        ladder.add_column("share", justify="right")
        shares = e.shares(step)
        for rung in RUNGS:
            ladder.add_row(rung, str(e.ladder[step][rung]), f"{shares[rung]:.1%}")
        console.print(ladder)

    cost = Table(title="cost and latency")
    cost.add_column("measure")
    cost.add_column("value", justify="right")
    cost.add_row("decisions logged", str(e.decisions_logged))
    if e.tool_calls:
        cost.add_row("tool calls", str(e.tool_calls))
    if e.replayed:
        cost.add_row("runs replayed from cache (no new cost)", str(e.replayed))
    cost.add_row("tokens in / out", f"{e.tokens_in:,} / {e.tokens_out:,}")
    usd = f"${e.cost_usd:.4f}" if e.priced else "$0 (no price: set STALWART_MODEL_PRICES)"
    cost.add_row("cost", usd)
    cost.add_row("run latency p50 / p95", f"{_ms(e.run_ms_p50)} / {_ms(e.run_ms_p95)}")
    cost.add_row("model latency p50 / p95", f"{_ms(e.model_ms_p50)} / {_ms(e.model_ms_p95)}")
    console.print(cost)
    if e.awaiting_review:
        console.print(
            f"{e.awaiting_review} run(s) await a person's review: "
            + escape(
                f"stalwart reviews --tenant {e.tenant}, then stalwart resume {e.agent} "
                f"--tenant {e.tenant}"
            )
        )


def print_comparison(with_tools: Evaluation, without: Evaluation) -> None:
    """Print what the tools are worth: the two evals side by side, with the gain."""
    table = Table(title="with tools vs without")
    for column in ("measure", "with tools", "without", "gain"):
        table.add_column(column, justify="left" if column == "measure" else "right")
    gain = tools_gain(with_tools, without)
    before = {f"{f.step}.{f.field}": f for f in without.fields}
    for f in with_tools.fields:
        name = f"{f.step}.{f.field}"
        other = before.get(name)
        if other is None:
            continue
        table.add_row(
            name,
            f"{f.accuracy:.1%} ({f.correct}/{f.total})",
            f"{other.accuracy:.1%} ({other.correct}/{other.total})",
            f"{gain[name] * 100:+.1f} pt",
        )
    table.add_row(
        "all labels right",
        f"{with_tools.overall_accuracy:.1%} ({with_tools.overall_correct}/{with_tools.labelled})",
        f"{without.overall_accuracy:.1%} ({without.overall_correct}/{without.labelled})",
        f"{gain['overall_accuracy'] * 100:+.1f} pt",
    )
    table.add_section()
    table.add_row(
        "awaiting review (not scored)",
        str(with_tools.awaiting_review),
        str(without.awaiting_review),
        f"{with_tools.awaiting_review - without.awaiting_review:+d}",
    )
    table.add_row(
        "tool calls",
        str(with_tools.tool_calls),
        str(without.tool_calls),
        f"{with_tools.tool_calls - without.tool_calls:+d}",
    )
    table.add_row(
        "tokens in / out",
        f"{with_tools.tokens_in:,} / {with_tools.tokens_out:,}",
        f"{without.tokens_in:,} / {without.tokens_out:,}",
        f"{with_tools.tokens_in - without.tokens_in:+,} / "
        f"{with_tools.tokens_out - without.tokens_out:+,}",
    )
    if with_tools.priced or without.priced:
        table.add_row(
            "cost",
            f"${with_tools.cost_usd:.4f}",
            f"${without.cost_usd:.4f}",
            f"{with_tools.cost_usd - without.cost_usd:+.4f}",
        )
    table.add_row(
        "run latency p50",
        _ms(with_tools.run_ms_p50),
        _ms(without.run_ms_p50),
        "",
    )
    console.print(table)
