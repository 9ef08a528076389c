"""Quality monitoring: rolling metrics, the drift detector (Prefect events, one Sentry message per
incident, recovery), `stalwart stats` / `stalwart report`, and the monitor artifact.

The end-to-end test runs a model-backed agent against the bundled model server, swaps in a
degraded model (low confidence, wrong labels) on the same port, then the good one again. Database
tests run on SQLite and PostgreSQL (`state_db`); every test writes under its own tenant.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest
import typer
from prefect.events.worker import EventsWorker
from prefect.testing.fixtures import asserting_and_emitting_events_worker  # noqa: F401
from typer.testing import CliRunner

from agents import LLM, Agent, Decision, decisions
from agents.cli._stats import report_command, stats_command
from agents.modelserver import ModelServer
from agents.observe import drift
from agents.observe.metrics import window_metrics
from agents.observe.sentry import shutdown_sentry
from agents.settings import reload_settings
from agents.store import AgentRun, DecisionRecord, record_decisions, record_run_start
from agents.testing.sentry import SentryReceiver
from tests.support.models import Ticket

TICKETS = [
    ("I want a refund for order {n}", "billing"),
    ("I forgot my password, account {n}", "account"),
    ("The app crashes on start, build {n}", "technical"),
    ("Where is my parcel {n}?", "shipping"),
]
GOOD_RULES = [
    {"when": {"schema": "Label", "contains": [word]}, "set": {"category": c, "confidence": p}}
    for word, c, p in [
        ("refund", "billing", 0.92),
        ("password", "account", 0.86),
        ("crash", "technical", 0.9),
        ("parcel", "shipping", 0.88),
    ]
]
DEGRADED_RULES = [{"when": {"schema": "Label"}, "set": {"category": "other", "confidence": 0.3}}]

runner = CliRunner()


class Label(Decision):
    category: Literal["billing", "technical", "account", "shipping", "other"]


def labelling_agent(name: str) -> Agent:
    agent = Agent(name)

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning
    def label(ticket: Ticket, llm: LLM) -> Label:
        return llm.decide(Label, f"Label this ticket: {ticket.text}")

    return agent


@pytest.fixture
def tenant() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


class SwappableModel:
    """The bundled model server on a fixed loopback port; `swap` restarts it with other rules
    (a model deploy that regressed, then its rollback)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.server = ModelServer(port=0, rules=GOOD_RULES).start()
        self.port = self.server.port
        monkeypatch.setenv("STALWART_MODEL_URL", self.server.url)
        monkeypatch.setenv("STALWART_API_KEY", "sk-test-not-a-real-key-0000000000000000000")
        reload_settings()

    def swap(self, rules: list[dict[str, Any]]) -> None:
        self.server.stop()
        self.server = ModelServer(port=self.port, rules=rules).start()


@pytest.fixture
def model(monkeypatch: pytest.MonkeyPatch) -> Iterator[SwappableModel]:
    swappable = SwappableModel(monkeypatch)
    yield swappable
    swappable.server.stop()
    monkeypatch.delenv("STALWART_MODEL_URL")
    monkeypatch.delenv("STALWART_API_KEY")
    reload_settings()


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[SentryReceiver]:
    """SENTRY_DSN points at an in-process receiver; the detector initialises Sentry from it."""
    with SentryReceiver() as rec:
        monkeypatch.setenv("SENTRY_DSN", rec.dsn)
        reload_settings()
        try:
            yield rec
        finally:
            shutdown_sentry(timeout=1.0)
            monkeypatch.delenv("SENTRY_DSN")
            reload_settings()


def _quality_events(worker: EventsWorker, tenant: str) -> list[Any]:
    from prefect.events.clients import AssertingPassthroughEventsClient

    client = worker._client
    assert isinstance(client, AssertingPassthroughEventsClient)
    return [
        e
        for e in client.events
        if e.event.startswith("stalwart.quality.") and e.resource.get("stalwart.tenant") == tenant
    ]


def _wait_events(worker: EventsWorker, tenant: str, n: int) -> list[Any]:
    deadline = time.monotonic() + 10
    while True:
        events = _quality_events(worker, tenant)
        if len(events) >= n or time.monotonic() > deadline:
            return events
        time.sleep(0.05)


class Runner:
    """Runs the agent once per ticket, labels the decision like feedback would, checks drift."""

    def __init__(self, agent: Agent, tenant: str) -> None:
        self.agent, self.tenant, self.count = agent, tenant, 0
        self.log: list[drift.CheckResult] = []

    def run(self) -> drift.CheckResult:
        text, truth = TICKETS[self.count % len(TICKETS)]
        self.count += 1
        result = self.agent.run(tenant=self.tenant, raw=text.format(n=self.count))
        assert result.status == "completed", result.error
        (newest,) = decisions.query(tenant=self.tenant, agent=self.agent.name, limit=1)
        assert newest.agent_run_id == result.run_id
        decisions.set_outcome(
            newest.id, tenant=self.tenant, outcome={"correct": newest.output["category"] == truth}
        )
        checked = drift.check(tenant=self.tenant, agent=self.agent.name)
        self.log.append(checked)
        return checked


# -- end to end -----------------------------------------------------------------------------------


@pytest.mark.usefixtures("prefect_api")
def test_a_degraded_model_fires_once_per_signal_and_recovers(
    state_db: str,
    tenant: str,
    model: SwappableModel,
    receiver: SentryReceiver,
    asserting_and_emitting_events_worker: EventsWorker,  # noqa: F811
) -> None:
    worker = asserting_and_emitting_events_worker
    agent = labelling_agent("monitored-labeller")
    runs = Runner(agent, tenant)
    config = drift.DetectorConfig()

    # Baseline: the warm-up runs, then two healthy runs that change nothing.
    for _ in range(config.baseline_runs + 2):
        checked = runs.run()
        assert checked.opened == [] and checked.recovered == []
    healthy = {(s.step, s.signal): s for s in checked.signals}
    assert healthy[("label", "confidence")].status == "ok"
    assert healthy[("label", "accuracy")].baseline == pytest.approx(1.0)

    # The model regresses: confidence 0.3 and every ticket labelled "other".
    model.swap(DEGRADED_RULES)
    fired: dict[str, int] = {}
    for degraded_run in range(1, 7):
        for state in runs.run().opened:
            assert state.signal not in fired, "an open incident fired again"
            fired[state.signal] = degraded_run
    confidence = healthy[("label", "confidence")]
    assert confidence.baseline is not None and confidence.threshold is not None
    bound = drift.detection_delay(confidence.baseline - 0.3, confidence.threshold)
    assert bound == 2
    assert fired == {"confidence": 2, "accuracy": 2}  # documented: 2 runs for both

    events = _wait_events(worker, tenant, 2)
    assert sorted(e.resource["stalwart.signal"] for e in events) == ["accuracy", "confidence"]
    assert {e.event for e in events} == {drift.DEGRADED_EVENT}
    assert {e.resource.id for e in events} == {"stalwart.agent.monitored-labeller"}
    assert events[0].payload["tenant"] == tenant
    sentry = receiver.wait_for(2)
    time.sleep(0.3)
    sentry = receiver.events()
    assert len(sentry) == 2
    assert sorted(e["tags"]["signal"] for e in sentry) == ["accuracy", "confidence"]
    assert all(e["level"] == "warning" and "Quality degraded" in e["message"] for e in sentry)

    # The rollback: both incidents clear within the documented bound, with no Sentry message.
    model.swap(GOOD_RULES)
    cleared: dict[str, int] = {}
    for good_run in range(1, 12):
        for state in runs.run().recovered:
            cleared[state.signal] = good_run
        if len(cleared) == 2:
            break
    assert set(cleared) == {"accuracy", "confidence"}
    assert cleared["confidence"] <= drift.recovery_delay(
        confidence.baseline - 0.3, confidence.threshold
    )  # 10 runs
    assert cleared["accuracy"] <= drift.recovery_delay(1.0, 0.2)  # 11 runs
    events = _wait_events(worker, tenant, 4)
    assert [e.event for e in events].count(drift.RECOVERED_EVENT) == 2
    assert len(events) == 4
    time.sleep(0.3)
    assert len(receiver.events()) == 2

    metrics = window_metrics(tenant=tenant, agent=agent.name, since="1h")
    (label,) = metrics
    assert label.decisions == runs.count and label.runs == runs.count
    assert label.labelled == runs.count and label.accuracy is not None and label.accuracy < 1.0
    print(f"\nfired after {fired} degraded runs; cleared after {cleared} good runs")


# -- unit level: synthetic decision logs ----------------------------------------------------------


def _decision(tenant: str, at: datetime, **fields: Any) -> DecisionRecord:
    fields.setdefault("agent", "pricing")
    fields.setdefault("step", "quote")
    fields.setdefault("input_digest", uuid.uuid4().hex * 2)
    return DecisionRecord(tenant=tenant, created_at=at, **fields)


def test_a_cost_spike_fires_once_and_clears(state_db: str, tenant: str) -> None:
    start = datetime.now(UTC) - timedelta(hours=2)
    cost = [0.010, 0.012, 0.011, 0.009, 0.010, 0.011, 0.010, 0.012, 0.009, 0.010]
    cost += [0.011, 0.010] + [0.05] * 5 + [0.010] * 12
    opened, recovered = [], []
    for i, value in enumerate(cost):
        record_decisions(
            [_decision(tenant, start + timedelta(seconds=i), cost=value, confidence=0.9)],
            url=state_db,
        )
        result = drift.check(tenant=tenant, agent="pricing", signals=["cost"], url=state_db)
        opened += [(i, s.signal) for s in result.opened]
        recovered += [(i, s.signal) for s in result.recovered]
    baseline = sum(cost[:10]) / 10
    delay = drift.detection_delay(0.05 - baseline, 0.5 * baseline)
    assert delay == 1  # a 5x rise: lambda * shift already exceeds the threshold
    assert opened == [(12 + delay - 1, "cost")]  # the first expensive decision
    assert len(recovered) == 1 and recovered[0][1] == "cost"
    (state,) = drift.signal_states(tenant=tenant, agent="pricing", url=state_db)
    assert state.status == "ok" and state.signal == "cost"
    # Another tenant's log is never read.
    assert drift.signal_states(tenant=f"{tenant}-other", url=state_db) == []


def test_one_tenants_volume_jump_fires_once(state_db: str, tenant: str) -> None:
    quiet = f"{tenant}-quiet"
    now = datetime.now(UTC).replace(microsecond=0)
    for who in (tenant, quiet):
        for hour in range(1, 25):  # a steady 3 runs an hour for a day
            for k in range(3):
                at = now - timedelta(hours=hour, minutes=10 * k + 5)
                record_run_start(_run(who, at), url=state_db)
    for k in range(40):  # the last hour: 40 runs for one tenant only
        record_run_start(_run(tenant, now - timedelta(minutes=k + 1)), url=state_db)
    jumped = drift.check(tenant=tenant, agent="pricing", signals=["volume"], now=now, url=state_db)
    calm = drift.check(tenant=quiet, agent="pricing", signals=["volume"], now=now, url=state_db)
    assert [s.signal for s in jumped.opened] == ["volume"]
    assert jumped.opened[0].value == 40 and jumped.opened[0].baseline == pytest.approx(3.0)
    assert calm.opened == [] and calm.signals[0].status == "ok"
    again = drift.check(tenant=tenant, agent="pricing", signals=["volume"], now=now, url=state_db)
    assert again.opened == [] and again.signals[0].status == "degraded"
    later = now + timedelta(hours=1)  # the next hour is back to normal
    cleared = drift.check(
        tenant=tenant, agent="pricing", signals=["volume"], now=later, url=state_db
    )
    assert [s.signal for s in cleared.recovered] == ["volume"]


def _run(tenant: str, at: datetime) -> AgentRun:
    return AgentRun(
        tenant=tenant,
        agent="pricing",
        run_key=uuid.uuid4().hex,
        status="completed",
        inputs_digest="0" * 64,
        started_at=at,
    )


def test_an_error_spike_fires(state_db: str, tenant: str) -> None:
    from agents.store import record_run_end

    start = datetime.now(UTC) - timedelta(hours=1)
    statuses = ["completed"] * 12 + ["failed"] * 3
    opened = []
    for i, status in enumerate(statuses):
        run = _run(tenant, start + timedelta(seconds=i))
        record_run_start(run, url=state_db)
        record_run_end(
            run.id,
            tenant=tenant,
            status=status,
            finished_at=start + timedelta(seconds=i, milliseconds=500),
            url=state_db,
        )
        result = drift.check(tenant=tenant, agent="pricing", signals=["error_rate"], url=state_db)
        opened += [(i, s.step) for s in result.opened]
    assert opened == [(13, "*")]  # from 0% to 100% failures: the second failed run


def test_window_metrics_over_a_labelled_log(state_db: str, tenant: str) -> None:
    now = datetime.now(UTC)
    rows = [
        _decision(tenant, now - timedelta(minutes=5), confidence=0.9, cost=0.01, latency_ms=100,
                  outcome={"correct": True}),
        _decision(tenant, now - timedelta(minutes=4), confidence=0.5, path="fallback_model",
                  cost=0.03, latency_ms=300, attempts=2, outcome={"correct": False}),
        _decision(tenant, now - timedelta(minutes=3), confidence=0.6, path="human",
                  reviewer="ana", correction={"category": "billing"}, latency_ms=200),
        _decision(tenant, now - timedelta(minutes=2), confidence=0.4, path="human",
                  reviewer="bo", outcome={"reopened": True}),
        _decision(tenant, now - timedelta(minutes=1), confidence=None, path="default",
                  reviewer="cy"),
        _decision(tenant, now - timedelta(days=3), confidence=0.1),
    ]  # fmt: skip
    record_decisions(rows, url=state_db)
    (m,) = window_metrics(tenant=tenant, agent="pricing", since="1d", url=state_db)
    assert m.decisions == 5
    assert m.confidence_mean == pytest.approx(0.6)
    assert m.confidence_p50 == pytest.approx(0.55)
    assert m.paths["human"] == pytest.approx(0.4) and m.paths["direct"] == pytest.approx(0.2)
    assert m.reviewed == 3 and m.human_rate == pytest.approx(0.6)
    assert m.override_rate == pytest.approx(2 / 3)  # a correction and a reject; one approval
    assert m.labelled == 2 and m.accuracy == pytest.approx(0.5)
    assert m.retry_rate == pytest.approx(0.2)
    assert m.cost_sum == pytest.approx(0.04) and m.latency_p50_ms == pytest.approx(200)
    series = window_metrics(tenant=tenant, agent="pricing", since="4d", bucket="1d", url=state_db)
    assert [b.decisions for b in series] == [1, 0, 0, 5]  # buckets are aligned on `since`
    assert window_metrics(tenant=f"{tenant}-x", since="4d", url=state_db) == []


# -- CLI and artifact -----------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command("stats")(stats_command)
    app.command("report")(report_command)
    return app


def test_stats_and_report_commands(state_db: str, tenant: str, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    rows = [
        _decision(tenant, now - timedelta(hours=h, minutes=m), confidence=0.5 + h / 100,
                  cost=0.01 * (h % 3), path="direct" if m % 2 else "fallback_model",
                  outcome={"correct": bool(m % 3)})
        for h in range(30)
        for m in range(3)
    ]  # fmt: skip
    record_decisions(rows, url=state_db)
    result = runner.invoke(_cli(), ["stats", "--tenant", tenant, "--since", "2d"])
    assert result.exit_code == 0, result.output
    assert "quote" in result.output and "90" in result.output
    result = runner.invoke(_cli(), ["stats", "--tenant", tenant, "--since", "1d", "--json"])
    assert result.exit_code == 0, result.output
    (line,) = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
    assert line["decisions"] == 72 and line["step"] == "quote"
    output = tmp_path / "report.html"
    result = runner.invoke(
        _cli(), ["report", "--tenant", tenant, "--since", "2d", "--output", str(output)]
    )
    assert result.exit_code == 0, result.output
    html = output.read_text(encoding="utf-8")
    assert html.count("<svg") >= 4 and "http://" not in html.replace("http://www.w3.org", "")
    assert "confidence" in html and "cost" in html and "accuracy" in html
    bad = runner.invoke(_cli(), ["stats", "--tenant", tenant, "--since", "soon"])
    assert bad.exit_code != 0


@pytest.mark.usefixtures("prefect_api")
def test_monitor_publishes_a_summary_artifact(state_db: str, tenant: str) -> None:
    from prefect import flow, get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    now = datetime.now(UTC)
    record_decisions(
        [_decision(tenant, now - timedelta(minutes=i), confidence=0.8) for i in range(3)],
        url=state_db,
    )

    @flow
    async def scheduled_run() -> drift.CheckResult:  # the end of a scheduled run
        return await drift.monitor(tenant, "pricing", url=state_db)

    result = asyncio.run(scheduled_run())
    assert {s.signal for s in result.signals} >= {"confidence", "cost", "volume"}

    async def read() -> list[Any]:
        async with get_client() as client:
            key = f"stalwart-monitor-pricing-{tenant}"
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]))
            )

    (artifact,) = asyncio.run(read())
    assert artifact.type == "markdown"
    assert "| quote | 3 |" in str(artifact.data) and "## Detectors" in str(artifact.data)


# -- feedback counts as a label ------------------------------------------------------------------


def _give(tenant: str, decision_id: str, url: str, **given: Any) -> None:
    from agents.learning import feedback

    feedback.give(decision_id, tenant=tenant, by="ana", url=url, **given)


def test_feedback_alone_moves_accuracy_in_stats(state_db: str, tenant: str) -> None:
    now = datetime.now(UTC)
    rows = [
        _decision(tenant, now - timedelta(minutes=10 - i), confidence=0.9,
                  output={"category": "billing"}, outcome=outcome)
        for i, outcome in enumerate([{"correct": True}, {"correct": True}, None, None, None])
    ]  # fmt: skip
    record_decisions(rows, url=state_db)

    def stats() -> tuple[int, float | None]:
        result = runner.invoke(_cli(), ["stats", "--tenant", tenant, "--since", "1d", "--json"])
        assert result.exit_code == 0, result.output
        (line,) = [json.loads(x) for x in result.output.splitlines() if x.startswith("{")]
        return line["labelled"], line["accuracy"]

    assert stats() == (2, 1.0)  # outcome labels only
    # Feedback overrides an outcome label, and labels decisions that had none: a corrected
    # label that differs from the output is wrong, one that agrees is right.
    _give(tenant, rows[0].id, state_db, correct=False)
    _give(tenant, rows[2].id, state_db, label={"category": "shipping"})
    _give(tenant, rows[3].id, state_db, label={"category": "billing"})
    _give(tenant, rows[4].id, state_db, note="no verdict: a note alone labels nothing")
    assert stats() == (4, 0.5)
    # The latest feedback of a decision wins.
    _give(tenant, rows[2].id, state_db, correct=True)
    assert stats() == (4, 0.75)
    # Another tenant's feedback is never joined (a decision id of this tenant, given there).
    assert window_metrics(tenant=f"{tenant}-x", since="1d", url=state_db) == []


def test_feedback_alone_fires_and_clears_the_accuracy_alarm(state_db: str, tenant: str) -> None:
    # Every decision is logged first, unlabelled; labels arrive later, by feedback only, and
    # the detector is checked after each one.
    start = datetime.now(UTC) - timedelta(hours=1)
    verdicts = [True] * 12 + [False] * 4 + [True] * 12
    rows = [
        _decision(tenant, start + timedelta(seconds=i), confidence=0.9,
                  output={"category": "billing"})
        for i in range(len(verdicts))
    ]  # fmt: skip
    record_decisions(rows, url=state_db)
    before = drift.check(tenant=tenant, agent="pricing", signals=["accuracy"], url=state_db)
    assert [s.observations for s in before.signals] == [0]  # nothing labelled yet

    opened: list[int] = []
    recovered: list[int] = []
    for i, (row, ok) in enumerate(zip(rows, verdicts, strict=True)):
        if i % 2:  # half by a verdict, half by a corrected label
            _give(tenant, row.id, state_db, correct=ok)
        else:
            _give(tenant, row.id, state_db, label={"category": "billing" if ok else "other"})
        result = drift.check(tenant=tenant, agent="pricing", signals=["accuracy"], url=state_db)
        opened += [i for s in result.opened if s.signal == "accuracy"]
        recovered += [i for s in result.recovered if s.signal == "accuracy"]
    print(f"\nfeedback-only labels: opened at label {opened}, recovered at label {recovered}")
    assert opened == [13]  # 100% -> 0%: the second wrong label (documented: 2 observations)
    assert len(recovered) == 1 and recovered[0] - 15 <= drift.recovery_delay(1.0, 0.2)
    (state,) = drift.signal_states(tenant=tenant, agent="pricing", url=state_db)
    assert state.status == "ok" and state.observations == len(verdicts)
