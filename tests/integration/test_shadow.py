"""`stalwart shadow`: a candidate replays logged decisions; nothing acts, nothing is logged."""

from __future__ import annotations

import json
import uuid

import pytest
from typer.testing import CliRunner

from agents import decisions
from agents.cli import app
from agents.modelserver import ModelServer
from agents.settings import temporary_settings
from agents.shadow import shadow
from agents.store import queries
from flows.ticket_triage import triage
from tests.support.triage import sample, unsure


def _tickets(count: int) -> list[dict]:
    """The sample's first `count` tickets the agent decides on (none waits for a review)."""
    lines = sample()
    waits = unsure(lines)
    return [line for line in lines if line["raw"]["id"] not in waits][:count]


@pytest.mark.usefixtures("prefect_api")
def test_shadow_replays_logged_decisions_through_the_candidate_only(
    state_db: str, model_server: ModelServer
) -> None:
    tenant = f"shadow-{uuid.uuid4().hex[:8]}"
    tickets = _tickets(12)
    results = triage.batch(
        [{"raw": t["raw"], "subject": t["subject"]} for t in tickets], tenant=tenant
    )
    assert all(r.status == "completed" for r in results)
    logged = decisions.query(tenant=tenant, agent="ticket-triage", limit=1000)
    assert len(logged) == 12
    by_run = {r.run_id: t for r, t in zip(results, tickets, strict=True)}
    for row in logged[:5]:  # five decisions get their ground truth as an outcome...
        label = by_run[row.agent_run_id]["expected"]["route"]
        assert decisions.set_outcome(row.id, tenant=tenant, outcome={"label": label})
    sixth = logged[5]  # ...and a sixth through feedback
    triage.feedback(sixth.id, tenant=tenant, label=by_run[sixth.agent_run_id]["expected"]["route"])
    actions_before = len(queries.actions(tenant=tenant))

    model_server.faults.update(confidence_by_model={"candidate-x": 0.55})
    before = dict(model_server.stats.requests_by_model)
    prices = {"stalwart-test": (0.001, 0.002), "candidate-x": (0.01, 0.02)}
    with temporary_settings(model_prices=prices):
        report = shadow(triage, model="candidate-x", tenant=tenant, since="1d")

    assert len(report.cases) == len(report.replayed) == 12
    asked = model_server.stats.requests_by_model.get("candidate-x", 0) - before.get(
        "candidate-x", 0
    )
    assert asked == 12  # the answer cache is off: the candidate was really asked, once each
    assert all(c.candidate_confidence == pytest.approx(0.55) for c in report.cases)
    assert all(c.candidate_cost > 0 and c.candidate_latency_ms > 0 for c in report.cases)
    # The keyword rules steer category, urgency and action alike for any model: a direct
    # decision is reproduced; a logged default (an escalation by policy) is not.
    for case, row in zip(
        sorted(report.cases, key=lambda c: c.decision_id),
        sorted(logged, key=lambda r: r.id),
        strict=True,
    ):
        if row.path == "direct":
            assert case.agrees, (case.logged, case.candidate)
    assert report.labelled == 6
    right = sum(
        all(c.logged.get(k) == v for k, v in (c.label or {}).items())
        for c in report.cases
        if c.label
    )
    assert report.accuracy_logged == pytest.approx(right / 6)

    # Nothing acted and nothing was logged.
    assert len(decisions.query(tenant=tenant, agent="ticket-triage", limit=1000)) == 12
    assert len(queries.actions(tenant=tenant)) == actions_before

    result = CliRunner().invoke(
        app, ["shadow", "ticket-triage", "--model", "candidate-x", "--tenant", tenant, "--json"]
    )
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert payload["replayed"] == 12 and payload["labelled"] == 6


def test_shadow_needs_a_reasoning_step_name_that_exists(sqlite_url: str) -> None:
    with pytest.raises(ValueError, match="not a reasoning step"):
        shadow(triage, model="m", tenant="t", step="act")


@pytest.mark.usefixtures("prefect_api")
@pytest.mark.parametrize("share", [1.0, 0.0])
def test_a_shadow_share_of_live_decisions_is_logged_and_never_acted_on(
    sqlite_url: str, model_server: ModelServer, share: float
) -> None:
    from pydantic import BaseModel

    from agents import LLM, Agent, Decision, Shadow

    class Verdict(Decision):
        category: str

    class Text(BaseModel):
        body: str

    acted: list[str] = []
    agent = Agent(f"live-shadow-{int(share * 100)}")

    @agent.perception
    def text(raw: dict) -> Text:
        return Text(body=raw["body"])

    @agent.reasoning(threshold=0.5, shadow=Shadow(model="candidate-y", share=share))
    def verdict(text: Text, llm: LLM) -> Verdict:
        return llm.decide(Verdict, f"Route: {text.body}")

    @agent.action
    def act(verdict: Verdict) -> str:
        acted.append(verdict.category)
        return verdict.category

    tenant = f"live-{uuid.uuid4().hex[:8]}"
    model_server.faults.update(confidence_by_model={"candidate-y": 0.61})
    bodies = ["I want a refund", "My parcel never arrived", "The app crashes with an error"]
    results = agent.batch([{"raw": {"body": b}} for b in bodies], tenant=tenant)
    assert all(r.status == "completed" for r in results)
    assert len(acted) == 3  # only the real decisions acted
    rows = decisions.query(tenant=tenant, agent=agent.name, limit=100)
    shadows = [r for r in rows if r.path == "shadow"]
    assert len([r for r in rows if r.path == "direct"]) == 3
    assert len(shadows) == (3 if share else 0)
    assert all(r.model == "candidate-y" and r.confidence == pytest.approx(0.61) for r in shadows)
    asked = model_server.stats.requests_by_model.get("candidate-y", 0)
    assert asked == len(shadows)
    listed = decisions.query(tenant=tenant, agent=agent.name, path="shadow")
    assert len(listed) == len(shadows)
