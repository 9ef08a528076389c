"""Shadow evaluation: replay logged decisions through a candidate model before swapping it in.

`shadow(agent, model=...)` reads a reasoning step's logged decisions of one tenant, rebuilds the
step's inputs from each decision's input snapshot, calls the step function again with an `LLM`
bound to the candidate, and compares. Nothing else runs: no upstream step, no action, no
memory write, no decision-log row (the answer cache is off, so the candidate is really asked).

Example:
    >>> from flows.ticket_triage import triage
    >>> report = shadow(triage, model="gpt-4o-mini", tenant="acme", since="7d")  # doctest: +SKIP
    >>> report.agreement, report.accuracy_candidate  # doctest: +SKIP
    (0.94, 0.91)

`stalwart shadow AGENT --model CANDIDATE [--since 7d] [--sample N]` prints the same report and,
run inside a flow (the CLI wraps it in one), publishes it as a Prefect markdown artifact.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, TypeAdapter

from agents.decisions import parse_since, query
from agents.declare.decision import LadderPath
from agents.declare.step import resolve_hints
from agents.endpoint import resolve_endpoint
from agents.execution.call import StepCall
from agents.execution.inject import inject
from agents.execution.task import invoke
from agents.graph import AgentGraph
from agents.learning.feedback import answer, is_correct, latest
from agents.pricing import cost_of
from agents.redact import scrub_error
from agents.resources.llm import LLM
from agents.store.tables import DecisionRecord, Feedback

if TYPE_CHECKING:
    from agents.declare.agent import Agent

#: Decision fields that are not the decision itself: never compared.
_META_FIELDS = frozenset({"confidence", "rationale"})


@dataclass
class ShadowCase:
    """One replayed decision: what was logged, what the candidate answered."""

    decision_id: str
    logged: dict[str, Any]
    candidate: dict[str, Any] | None
    logged_confidence: float | None
    candidate_confidence: float | None
    logged_latency_ms: float | None
    candidate_latency_ms: float
    logged_cost: float
    candidate_cost: float
    label: dict[str, Any] | None = None
    error: str | None = None

    @property
    def agrees(self) -> bool:
        """Whether the candidate made the same decision (confidence and rationale aside)."""
        return self.candidate is not None and _same(self.logged, self.candidate)


@dataclass
class ShadowReport:
    """The comparison of a candidate model with the logged decisions of one step."""

    agent: str
    step: str
    tenant: str
    candidate_model: str
    cases: list[ShadowCase] = field(default_factory=list)

    @property
    def replayed(self) -> list[ShadowCase]:
        """Cases the candidate answered."""
        return [c for c in self.cases if c.candidate is not None]

    @property
    def agreement(self) -> float | None:
        """Share of replayed cases where the candidate decided as logged."""
        done = self.replayed
        return sum(c.agrees for c in done) / len(done) if done else None

    def _accuracy(self, which: str) -> float | None:
        labelled = [c for c in self.replayed if c.label]
        if not labelled:
            return None
        right = sum(is_correct(getattr(c, which) or {}, c.label) for c in labelled)
        return right / len(labelled)

    @property
    def accuracy_logged(self) -> float | None:
        """Accuracy of the logged decisions on the labelled cases (None: no labels)."""
        return self._accuracy("logged")

    @property
    def accuracy_candidate(self) -> float | None:
        """Accuracy of the candidate on the labelled cases (None: no labels)."""
        return self._accuracy("candidate")

    @property
    def labelled(self) -> int:
        """How many replayed cases carry a label."""
        return sum(1 for c in self.replayed if c.label)

    def rows(self) -> list[tuple[str, str, str, str]]:
        """(measure, logged, candidate, delta) rows for a table."""
        done = self.replayed

        def stat(values: Sequence[float | None], fn: Any) -> float | None:
            present = [v for v in values if v is not None]
            return float(fn(present)) if present else None

        def fmt(value: float | None, spec: str = ".3f") -> str:
            return "—" if value is None else format(value, spec)

        def delta(a: float | None, b: float | None, spec: str = "+.3f") -> str:
            return "—" if a is None or b is None else format(b - a, spec)

        rows: list[tuple[str, str, str, str]] = []
        agreement = self.agreement
        rows.append(("decisions replayed", str(len(done)), str(len(done)), ""))
        rows.append(("candidate errors", "", str(len(self.cases) - len(done)), ""))
        rows.append(("agreement with the log", "", fmt(agreement, ".1%"), ""))
        acc_l, acc_c = self.accuracy_logged, self.accuracy_candidate
        rows.append(
            (f"accuracy ({self.labelled} labelled)", fmt(acc_l, ".1%"), fmt(acc_c, ".1%"),
             delta(acc_l, acc_c, "+.1%"))
        )  # fmt: skip
        for name, fn in (("mean", statistics.fmean), ("median", statistics.median)):
            lo = stat([c.logged_confidence for c in done], fn)
            hi = stat([c.candidate_confidence for c in done], fn)
            rows.append((f"confidence {name}", fmt(lo), fmt(hi), delta(lo, hi)))
        lo = stat([c.logged_latency_ms for c in done], statistics.median)
        hi = stat([c.candidate_latency_ms for c in done], statistics.median)
        rows.append(("latency p50 ms", fmt(lo, ".0f"), fmt(hi, ".0f"), delta(lo, hi, "+.0f")))
        lo = sum(c.logged_cost for c in done)
        hi = sum(c.candidate_cost for c in done)
        rows.append(("cost USD", fmt(lo, ".4f"), fmt(hi, ".4f"), delta(lo, hi, "+.4f")))
        return rows

    def markdown(self) -> str:
        """The report as a markdown table (the Prefect artifact)."""
        lines = [
            f"# Shadow of `{self.agent}.{self.step}` on `{self.candidate_model}`",
            "",
            f"Tenant `{self.tenant}`; logged decisions replayed through the candidate, "
            "no action run.",
            "",
            "| measure | logged | candidate | delta |",
            "|---|---|---|---|",
        ]
        lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in self.rows()]
        return "\n".join(lines) + "\n"


def _same(a: Mapping[str, Any], b: Mapping[str, Any], only: set[str] | None = None) -> bool:
    keys = (only if only is not None else set(a) | set(b)) - _META_FIELDS
    return all(a.get(k) == b.get(k) for k in keys)


def _label(row: DecisionRecord, given: Feedback | None) -> dict[str, Any] | None:
    """The decision's ground truth, when someone gave one: the answer its latest feedback
    establishes (`agents.learning.feedback.answer`), a reviewer's correction, or an outcome
    carrying `label` (a dict of decision fields). Confidence and rationale are never labels."""
    found: Any = None
    if given is not None:
        found = answer(row, given)
    if found is None and isinstance(row.correction, Mapping) and row.correction:
        found = {**(row.output or {}), **row.correction}
    outcome = row.outcome
    if found is None and isinstance(outcome, Mapping) and isinstance(outcome.get("label"), Mapping):
        found = outcome["label"]
    if not isinstance(found, Mapping):
        return None
    return {k: v for k, v in found.items() if k not in _META_FIELDS} or None


def _rebuild(graph: AgentGraph, step_name: str, snapshot: Any) -> dict[str, Any]:
    node = graph.node(step_name)
    hints, _ = resolve_hints(node.step)
    if not isinstance(snapshot, Mapping):
        raise ValueError("the logged input snapshot is not an object (it was cut at 20 kB)")
    kwargs: dict[str, Any] = {}
    for param in node.step.params:
        if param.name in node.resources:
            continue
        if param.name not in snapshot:
            raise ValueError(f"the snapshot lacks {param.name!r}")
        kwargs[param.name] = TypeAdapter(hints.get(param.name, Any)).validate_python(
            snapshot[param.name]
        )
    return kwargs


async def _replay_one(
    graph: AgentGraph, step_name: str, row: DecisionRecord, model: str, given: Feedback | None
) -> ShadowCase:
    node = graph.node(step_name)
    logged = dict(row.output or {})
    case = ShadowCase(
        decision_id=row.id,
        logged=logged,
        candidate=None,
        logged_confidence=row.confidence,
        candidate_confidence=None,
        logged_latency_ms=row.latency_ms,
        candidate_latency_ms=0.0,
        logged_cost=row.cost,
        candidate_cost=0.0,
        label=_label(row, given),
    )
    llm = LLM(endpoint=resolve_endpoint(model), tenant=row.tenant, cache=False)
    # The logged run, as far as a step can see it; memory is today's, not the past's.
    call = StepCall(
        agent=graph.name,
        step=step_name,
        tenant=row.tenant,
        subject=row.subject,
        run_key=row.run_key or "",
        run_id=row.agent_run_id or "",
        flow_run_id=None,
        cache_key="",
        idempotency_key="",
    )
    try:
        kwargs = _rebuild(graph, step_name, row.input_snapshot)
        kwargs.update(inject(node.resources, call, llm=lambda: llm))
        started = time.perf_counter()
        decision = await invoke(node, kwargs)
        case.candidate_latency_ms = (time.perf_counter() - started) * 1000
    except Exception as exc:  # one bad case must not stop the report
        case.error = scrub_error(exc, 300)
        return case
    if isinstance(decision, BaseModel):
        case.candidate = decision.model_dump(mode="json")
        case.candidate_confidence = getattr(decision, "confidence", None)
    case.candidate_cost = sum(cost_of(c.model, c.tokens_in, c.tokens_out) for c in llm.calls)
    return case


async def ashadow(
    agent: Agent | AgentGraph,
    *,
    model: str,
    tenant: str,
    step: str | None = None,
    since: str | None = "7d",
    sample: int | None = None,
    concurrency: int = 8,
    seed: int = 0,
) -> ShadowReport:
    """Async twin of `shadow`."""
    graph = agent if isinstance(agent, AgentGraph) else agent.compile()
    reasoning = [s.name for s in graph.order if s.layer == "reasoning"]
    if step is None:
        if len(reasoning) != 1:
            raise ValueError(f"{agent.name} has reasoning steps {reasoning}: name one with step=")
        step = reasoning[0]
    if step not in reasoning:
        raise ValueError(f"{agent.name}.{step} is not a reasoning step (those are {reasoning})")
    rows = [
        r
        for r in query(
            tenant=tenant, agent=agent.name, step=step, since=parse_since(since), limit=100_000
        )
        if r.path != LadderPath.SHADOW and r.output
    ]
    if sample is not None and len(rows) > sample:
        rows = random.Random(seed).sample(rows, sample)
    given = await asyncio.to_thread(
        latest, tenant=tenant, agent=agent.name, step=step, decision_ids=[r.id for r in rows]
    )
    gate = asyncio.Semaphore(max(1, concurrency))

    async def one(row: DecisionRecord) -> ShadowCase:
        async with gate:
            return await _replay_one(graph, step, row, model, given.get(row.id))

    cases = list(await asyncio.gather(*(one(r) for r in rows)))
    return ShadowReport(
        agent=agent.name, step=step, tenant=tenant, candidate_model=model, cases=cases
    )


def shadow(
    agent: Agent | AgentGraph,
    *,
    model: str,
    tenant: str,
    step: str | None = None,
    since: str | None = "7d",
    sample: int | None = None,
    concurrency: int = 8,
    seed: int = 0,
) -> ShadowReport:
    """Replay a reasoning step's logged decisions of `tenant` through `model`; compare.

    Args:
        agent: The agent whose decisions to replay.
        model: The candidate model, on the endpoint in force (`STALWART_MODEL_URL` or block).
        tenant: Whose decisions (required, like every read of the log).
        step: The reasoning step; optional when the agent has one.
        since: How far back, e.g. "7d" (None: all).
        sample: Replay at most this many, drawn at random (seeded by `seed`).
        concurrency: Candidate calls in flight.
    """
    from prefect.utilities.asyncutils import run_coro_as_sync

    report = run_coro_as_sync(
        ashadow(
            agent,
            model=model,
            tenant=tenant,
            step=step,
            since=since,
            sample=sample,
            concurrency=concurrency,
            seed=seed,
        )
    )
    assert report is not None
    return report
