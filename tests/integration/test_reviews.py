"""Durable human review, end to end through the bundled model server over real HTTP: a batch
never waits for a person; reviews are listed and answered per tenant, in any order, from Python
and the CLI; `resume` continues each run as its verdict says, acting exactly once and asking the
model nothing again; deadlines take the default; a kill mid-continuation loses nothing."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agents.errors import ReviewClosed, ReviewNotFound
from agents.modelserver import ModelServer
from tests.support import review_agent, steplog

pytestmark = pytest.mark.usefixtures("prefect_api")
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def steered_server(steered_model_server: Any) -> ModelServer:
    server: ModelServer = steered_model_server(review_agent.RULES)
    return server


@pytest.fixture
def out(steplog_dir: Path) -> Path:
    return steplog_dir


def test_a_batch_with_unsure_inputs_returns_at_once_and_resumes_as_each_verdict_says(
    state_db: str, steered_server: ModelServer, out: Path
) -> None:
    from agents import decisions, reviews
    from agents.cli import app
    from agents.store import queries

    tenant, other = f"acme-{uuid.uuid4().hex[:8]}", f"rival-{uuid.uuid4().hex[:8]}"
    agent = review_agent.build(f"review-batch-{uuid.uuid4().hex[:6]}")
    items = review_agent.tickets(200, unsure_every=10)

    started = time.monotonic()
    results = agent.batch(items, tenant=tenant, concurrency=32)
    took = time.monotonic() - started
    statuses = Counter(r.status for r in results)
    assert statuses == {"completed": 180, "awaiting_review": 20}, statuses
    assert took < 120  # it returned: nothing waited for a person (the deadline is 3 days)
    waiting = [r for r in results if r.status == "awaiting_review"]
    assert {r.steps["send"] for r in waiting} == {"skipped"}
    assert len(review_agent.effects()) == 180
    assert len(queries.runs(tenant=tenant, agent=agent.name, status="awaiting_review")) == 20
    model_calls = steered_server.stats.requests_total
    assert model_calls == 200

    pending = reviews.pending(tenant=tenant, agent=agent.name)
    assert sorted(p.subject or "" for p in pending) == sorted(r.subject or "" for r in waiting)
    assert [p.confidence for p in pending] == [pytest.approx(0.3)] * 20
    assert all(p.deadline_at > p.created_at for p in pending)
    assert "sk-test" not in json.dumps([p.model_dump(mode="json") for p in pending])

    # Another tenant sees none of them and can answer none of them, through any door.
    assert reviews.pending(tenant=other) == []
    with pytest.raises(ReviewNotFound):
        reviews.answer(pending[0].id, tenant=other, verdict="approve", reviewer="mallory")
    cli = CliRunner()
    listed = cli.invoke(app, ["reviews", "--tenant", other, "--json"])
    assert listed.exit_code == 0 and listed.stdout.strip() == ""
    steal = ["review", pending[0].id, "--tenant", other, "--approve", "--by", "mallory"]
    refused = cli.invoke(app, steal)
    assert refused.exit_code == 1 and "no review" in refused.output

    # Answer in random order, half from Python and half from the CLI.
    rng = random.Random(17)
    rng.shuffle(pending)
    expected: dict[str, str | None] = {}  # subject -> category acted on (None: nothing done)
    for i, review in enumerate(pending):
        kind = ("approve", "correct", "reject")[i % 3]
        proposed = review.proposed["category"]
        expected[review.subject or ""] = {
            "approve": proposed,
            "correct": "account",
            "reject": "other",  # the safe default (confident enough to act on)
        }[kind]
        correction = {"category": "account"} if kind == "correct" else None
        if i % 2:
            reviews.answer(
                review.id, tenant=tenant, verdict=kind, correction=correction, reviewer=f"p{i}"
            )
            continue
        flag = ["--correct", json.dumps(correction)] if correction else [f"--{kind}"]
        done = cli.invoke(app, ["review", review.id, "--tenant", tenant, *flag, "--by", f"c{i}"])
        assert done.exit_code == 0, done.output
    # A second answer to the same review is refused, not applied twice.
    with pytest.raises(ReviewClosed):
        reviews.answer(pending[0].id, tenant=tenant, verdict="reject", reviewer="late")
    again = cli.invoke(app, ["review", pending[1].id, "--tenant", tenant, "--reject", "--by", "x"])
    assert again.exit_code == 1 and "answered already" in again.output
    assert reviews.pending(tenant=tenant) == []

    resumed = agent.resume(tenant=tenant)
    assert len(resumed) == 20 and {r.status for r in resumed} == {"completed"}
    for r in resumed:
        category = expected[r.subject or ""]
        assert r.outputs["send"] == category
        assert r.paths["route"] == ("default" if category == "other" else "human")
    # Exactly once at the outside system; no model call repeated; nothing left to continue.
    calls = steplog.lines("calls")
    assert len(calls) == len(set(calls)) == 200
    assert len(review_agent.effects()) == 200
    assert steered_server.stats.requests_total == model_calls
    assert Counter(steplog.lines("route")) == Counter(str(i) for i in range(200))
    assert agent.resume(tenant=tenant) == []
    assert queries.runs(tenant=tenant, agent=agent.name, status="awaiting_review") == []

    # The decision log: one row per decision, the person's verdict on each reviewed one.
    logged = decisions.query(tenant=tenant, agent=agent.name, limit=1000)
    assert len(logged) == 200
    paths = Counter(d.path for d in logged)
    assert paths == {"direct": 180, "human": 14, "default": 6}, paths
    corrected = [d for d in logged if d.correction]
    assert corrected and all(d.output["category"] == "account" for d in corrected)
    assert all(d.reviewer for d in logged if d.path == "human")
    # (A rerun of the batch asks nothing twice: test_a_rerun_of_the_batch_continues_...)
    assert len(reviews.list_reviews(tenant=tenant)) == 20


def test_a_rerun_of_the_batch_continues_answered_runs_and_leaves_pending_ones_waiting(
    state_db: str, steered_server: ModelServer, out: Path
) -> None:
    from agents import reviews
    from agents.store import queries

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    agent = review_agent.build(f"review-rerun-{uuid.uuid4().hex[:6]}")
    items = review_agent.tickets(10, unsure_every=5)
    first = agent.batch(items, tenant=tenant)
    assert Counter(r.status for r in first) == {"completed": 8, "awaiting_review": 2}
    one, two = reviews.pending(tenant=tenant)
    reviews.answer(one.id, tenant=tenant, verdict="approve", reviewer="ana")

    rerun = agent.batch(items, tenant=tenant)
    assert Counter(r.status for r in rerun) == {"completed": 9, "awaiting_review": 1}
    assert [p.id for p in reviews.pending(tenant=tenant)] == [two.id]  # not asked twice
    assert len(reviews.list_reviews(tenant=tenant)) == 2
    # The earlier executions stopped at the reviews are superseded by the rerun's.
    awaiting = queries.runs(tenant=tenant, agent=agent.name, status="awaiting_review")
    assert [r.subject for r in awaiting] == [two.subject]
    assert agent.resume(tenant=tenant) == []  # the rerun continued the answered one
    assert steered_server.stats.requests_total == 10


def test_a_review_past_its_deadline_takes_the_safe_default(
    state_db: str, steered_server: ModelServer, out: Path
) -> None:
    from agents import reviews

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    # Long enough to be listed however slow the machine; then wait for the deadline itself.
    agent = review_agent.build(f"review-expiry-{uuid.uuid4().hex[:6]}", timeout=4)
    (result,) = agent.batch(review_agent.tickets(1, unsure_every=1), tenant=tenant)
    assert result.status == "awaiting_review"
    (waiting,) = reviews.pending(tenant=tenant)
    deadline = waiting.deadline_at.replace(tzinfo=waiting.deadline_at.tzinfo or UTC)
    time.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 0.2)
    assert reviews.pending(tenant=tenant) == []  # past its deadline it is not listed
    with pytest.raises(ReviewClosed, match="expired"):
        reviews.answer(waiting.id, tenant=tenant, verdict="approve", reviewer="late")
    (done,) = agent.resume(tenant=tenant)
    assert (done.status, done.paths["route"], done.outputs["send"]) == (
        "completed",
        "default",
        "other",
    )
    assert reviews.get(waiting.id, tenant=tenant).state == "expired"
    assert "expired" in " ".join(done.notes)


def test_a_malformed_answer_is_refused_with_a_clear_error_and_changes_nothing(
    sqlite_url: str, steered_server: ModelServer, out: Path
) -> None:
    from agents import reviews

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    agent = review_agent.build(f"review-bad-{uuid.uuid4().hex[:6]}")
    agent.batch(review_agent.tickets(1, unsure_every=1), tenant=tenant)
    (waiting,) = reviews.pending(tenant=tenant)
    bad: list[dict[str, Any]] = [
        {"verdict": "maybe", "reviewer": "ana"},
        {"verdict": "correct", "reviewer": "ana"},
        {"verdict": "correct", "correction": {"category": "nonsense"}, "reviewer": "ana"},
        {"verdict": "correct", "correction": {"queue": "billing"}, "reviewer": "ana"},
        {"verdict": "approve", "reviewer": " "},
    ]
    for answer in bad:
        with pytest.raises(ValueError) as caught:
            reviews.answer(waiting.id, tenant=tenant, **answer)
        assert str(caught.value)
    assert "category" in _error(reviews, waiting.id, tenant, bad[2])
    assert reviews.get(waiting.id, tenant=tenant).state == "pending"


def _error(reviews: Any, review_id: str, tenant: str, answer: dict[str, Any]) -> str:
    try:
        reviews.answer(review_id, tenant=tenant, **answer)
    except ValueError as exc:
        return str(exc)
    raise AssertionError("accepted")


def test_killed_between_the_action_and_the_end_of_its_continuation_resume_finishes_once(
    state_db: str, steered_server: ModelServer, out: Path
) -> None:
    from prefect.settings import PREFECT_API_URL

    from agents import reviews

    tenant = f"acme-{uuid.uuid4().hex[:8]}"
    name = f"review-kill-{uuid.uuid4().hex[:6]}"
    agent = review_agent.build(name)
    items = review_agent.tickets(6, unsure_every=2)
    assert Counter(r.status for r in agent.batch(items, tenant=tenant))["awaiting_review"] == 3
    for review in reviews.pending(tenant=tenant):
        reviews.answer(review.id, tenant=tenant, verdict="approve", reviewer="ana")

    env = dict(os.environ)
    env.update(
        STALWART_TEST_OUT=str(out),
        STALWART_TEST_AGENT=name,
        STALWART_TEST_TENANT=tenant,
        STALWART_TEST_HANG="1",
        PREFECT_API_URL=str(PREFECT_API_URL.value()),
        PYTHONPATH=f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}",
    )
    script = [sys.executable, "-m", "tests.support.review_agent"]
    proc = subprocess.Popen(script, env=env, cwd=ROOT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(steplog.lines("remember")) < 3 + 3 and time.monotonic() < deadline:
            assert proc.poll() is None, "the continuation ended before it could be killed"
            time.sleep(0.2)
        assert len(steplog.lines("calls")) == 6  # every action done, no run ended yet
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert len(reviews.list_reviews(tenant=tenant, state="answered")) == 3

    (done_first, *rest) = agent.resume(tenant=tenant)
    done = [done_first, *rest]
    assert len(done) == 3 and {r.status for r in done} == {"completed"}
    assert {r.steps["send"] for r in done} == {"cached"}  # the action was not run again
    calls = steplog.lines("calls")
    assert len(calls) == len(set(calls)) == 6 and len(review_agent.effects()) == 6
    assert agent.resume(tenant=tenant) == []
    assert steered_server.stats.requests_total == 6
