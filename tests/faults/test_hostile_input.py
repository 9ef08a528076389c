"""Scenario 5 (short): hostile and broken input at the loader and at decision parsing.

The loader (`stalwart run --input`) must quarantine every hostile line with a reason and still
run the good lines around it; a hostile model's output must end in a valid decision, the safe
default or a refusal, never an unauthorized action. The full version is
`bench/faults/s5_hostile_input.py`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from agents.cli import app
from agents.cli._run import read_inputs
from agents.errors import ModelOutputError
from agents.execution.runner import runner_for
from agents.inputs import BATCH_PARAMETER_BYTES, batches, parameter_bytes
from agents.settings import reload_settings
from bench.faults.s5_hostile_input import (
    ALLOWED,
    HostileModel,
    build_file,
    check_loader,
    files,
    good_item,
    hostile_lines,
    hostile_outputs,
    parse_json_stream,
    score_cli,
)
from flows.helpdesk.simulated import SimulatedHelpdesk
from flows.ticket_triage import Routing, triage

pytestmark = pytest.mark.faults

COMPILED = triage.compile()
FAST = settings(
    max_examples=80,
    deadline=2000,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@FAST
@given(files())
def test_the_loader_never_crashes_and_passes_on_only_safe_inputs(lines: list[bytes]) -> None:
    assert check_loader(lines, COMPILED, 4096) == []


#: Each hostile kind and the words its quarantine reason must contain.
REASONS = {
    "malformed": "not JSON",
    "not_utf8": "not UTF-8",
    "huge_line": "bytes, over",
    "huge_param": "flow-run parameter",
    "deep": "",  # a recursion bomb fails json.loads; 300 levels fail the nesting cap
    "surrogate": "lone surrogate",
    "nul_subject": "NUL",
    "bigint": "not JSON",
    "not_object": "not a JSON object",
    "unknown_key": "no step has a parameter",
}


def test_every_hostile_kind_is_quarantined_with_a_clear_reason(tmp_path: Path) -> None:
    lines = hostile_lines(0, 700_000)
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join(raw if raw.endswith(b"\n") else raw + b"\n" for _, raw in lines))
    accepted, rejected = read_inputs(path, COMPILED, 700_000)
    kinds = {n: kind for n, (kind, _) in enumerate(lines, start=1)}
    assert [kinds[n] for n, _ in accepted] == ["injection"]  # a valid input: held at run time
    for r in rejected:
        assert REASONS[kinds[r.line]] in r.error, (kinds[r.line], r.error)
    deep = [r.error for r in rejected if kinds[r.line] == "deep"]
    assert any("not JSON" in e for e in deep) and any("nested deeper than" in e for e in deep)


@settings(max_examples=60, deadline=2000, database=None)
@given(st.lists(st.integers(0, 3000), max_size=40), st.integers(200, 5000))
def test_batches_keep_order_and_stay_within_the_budget(sizes: list[int], budget: int) -> None:
    items = [{"raw": "x" * n, "n": i} for i, n in enumerate(sizes)]
    cut = batches(items, budget=budget)
    assert [x for chunk in cut for x in chunk] == items
    for chunk in cut:
        assert len(chunk) == 1 or len(json.dumps(chunk, separators=(",", ":"))) <= budget
    assert BATCH_PARAMETER_BYTES < 512 * 1024  # below Prefect's parameter limit
    assert parameter_bytes({"a": "\u00e9"}) == len('{"a":"\\u00e9"}')


raw_outputs = st.one_of(
    st.text(max_size=200),
    st.sampled_from([text for _, text in hostile_outputs() if len(text) < 100_000]),
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.text(max_size=20) | st.integers(),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids),
        max_leaves=15,
    ).map(json.dumps),
    st.fixed_dictionaries(
        {
            "category": st.sampled_from(["billing", "technical", "nope", ""]),
            "urgency": st.sampled_from(["low", "high", "HIGH"]),
            "action": st.text(max_size=20),
            "confidence": st.floats(allow_nan=True, allow_infinity=True),
            "rationale": st.text(max_size=50),
        }
    ).map(lambda d: json.dumps(d, allow_nan=True)),
)


@FAST
@given(raw_outputs)
def test_decision_parsing_fails_only_with_a_validation_error(raw: str) -> None:
    try:
        decision = Routing.model_validate_json(raw)
    except ValidationError:
        return
    assert 0.0 <= decision.confidence <= 1.0  # NaN and infinities never pass
    assert isinstance(decision.action, str)


@pytest.fixture
def hostile_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[HostileModel]:
    cases = {i: text for i, (_, text) in enumerate(hostile_outputs())}
    env = {
        "STALWART_MODEL_MAX_ATTEMPTS": "2",
        "STALWART_MODEL_RETRY_BASE_SECONDS": "0.01",
        # One request per attempt: bad output is judged, not re-asked (keeps the test fast).
        "STALWART_MODEL_MAX_REASKS": "0",
        "STALWART_MODEL_OUTPUT_RETRIES": "0",
    }
    with HostileModel(cases=cases) as model:
        for name, value in {**env, "STALWART_MODEL_URL": model.url}.items():
            monkeypatch.setenv(name, value)
        reload_settings()
        yield model
    for name in [*env, "STALWART_MODEL_URL"]:
        monkeypatch.delenv(name)
    reload_settings()


def test_a_hostile_model_yields_a_valid_decision_or_a_clear_error(
    hostile_model: HostileModel,
) -> None:
    from agents import LLM

    outcomes: dict[str, set[str]] = {}
    for i, (kind, _) in enumerate(hostile_outputs()):
        try:
            decision = LLM(cache=False).decide(Routing, f"Ticket case-{i}")
        except ModelOutputError as exc:
            assert "never with a valid Routing" in str(exc) and "Last problem" in str(exc)
            outcomes.setdefault(kind, set()).add("error")
        else:
            assert 0.0 <= decision.confidence <= 1.0
            outcomes.setdefault(kind, set()).add("decision")
    assert outcomes["malformed"] == outcomes["deep"] == outcomes["nan"] == {"error"}
    assert outcomes["forbidden"] == {"decision"}  # parsed; the runtime refuses to act on it


@pytest.fixture
def helpdesk(monkeypatch: pytest.MonkeyPatch) -> Iterator[SimulatedHelpdesk]:
    with SimulatedHelpdesk() as desk:
        monkeypatch.setenv("STALWART_HELPDESK_URL", desk.url)
        yield desk


@pytest.mark.usefixtures("prefect_api", "sqlite_url", "model_server")
def test_cli_quarantines_hostile_lines_and_runs_every_good_one(
    tmp_path: Path, helpdesk: SimulatedHelpdesk
) -> None:
    path = tmp_path / "tickets.jsonl"
    kinds = build_file(path, good=10, rounds=1, max_bytes=700_000)
    result = CliRunner().invoke(
        app, ["run", "ticket-triage", "--input", str(path), "--output", "json", "-t", "s5"]
    )
    assert result.exit_code == 1  # quarantined lines make the command fail, visibly
    rows = parse_json_stream(result.stdout)
    good, completed, failures = score_cli(kinds, rows, tmp_path / "tickets.quarantine.jsonl")
    assert failures == []
    assert (good, completed) == (10, 10)
    actions = [r["action"] for r in helpdesk.state.receipts.values()]
    assert len(actions) == 10 and set(actions) <= ALLOWED


@pytest.mark.usefixtures("prefect_api", "sqlite_url")
def test_hostile_model_outputs_never_become_unauthorized_actions(
    hostile_model: HostileModel, helpdesk: SimulatedHelpdesk
) -> None:
    # One output of each kind (the LLM-level test above covers every one).
    picked = {kind: i for i, (kind, _) in reversed(list(enumerate(hostile_outputs())))}
    outputs = [hostile_outputs()[i] for i in sorted(picked.values())]
    items: list[dict[str, Any]] = []
    for i in sorted(picked.values()):
        hostile = good_item(100 + i, marker=f"case-{i}")
        hostile["raw"]["id"] = f"B{i}"
        items += [hostile, good_item(200 + i)]
    results = triage.batch(items, tenant="s5-model", concurrency=8)
    for (kind, _), result in zip(outputs, results[::2], strict=True):
        # A valid or default decision, a refusal, or a clear error naming the bad output.
        clear_error = result.status == "failed" and "ModelOutputError" in (result.error or "")
        assert result.status in ("completed", "held") or clear_error, (kind, result.error)
        if kind == "forbidden":
            assert result.status == "held" and "is not allowed" in " ".join(result.notes)
    assert [r.status for r in results[1::2]] == ["completed"] * len(outputs)
    receipts = list(helpdesk.state.receipts.values())
    assert receipts and {r["action"] for r in receipts} <= ALLOWED
    hostile_results = zip(sorted(picked.values()), results[::2], strict=True)
    held = {f"B{i}" for i, r in hostile_results if r.status == "held"}
    assert not held & {r["ticket_id"] for r in receipts}


@pytest.mark.usefixtures("prefect_api")
def test_agent_batch_refuses_unsafe_inputs_alone_and_splits_what_prefect_would_refuse(
    sqlite_url: str,
) -> None:
    """Called from Python, not through the CLI's loader: a lone surrogate or an input over the
    parameter budget fails alone, and inputs worth more than 512 KiB together still all run
    (in several flow runs), each result at its input's place."""
    from tests.support.cli_agent import agent

    big = "y" * (BATCH_PARAMETER_BYTES // 2 - 100)  # two of these fill one flow run
    inputs: list[dict[str, Any]] = [
        {"raw": {"text": "first"}},
        {"raw": {"text": "\ud800"}},  # nothing can encode it
        {"raw": {"text": big + "a"}},
        {"raw": {"text": "x" * (BATCH_PARAMETER_BYTES + 1)}},  # alone over the budget
        {"raw": {"text": big + "b"}},
        {"raw": {"text": big + "c"}},
        {"raw": {"text": "last"}},
    ]
    assert sum(parameter_bytes(i) for i in inputs) > 512 * 1024
    seen: list[int] = []
    results = runner_for(agent.compile()).run_batch(
        inputs, tenant="hostile-api", on_result=lambda i, _r: seen.append(i)
    )
    assert [r.status for r in results] == [
        "completed",
        "failed",
        "completed",
        "failed",
        "completed",
        "completed",
        "completed",
    ]
    assert "not valid Unicode" in str(results[1].error)
    assert "over 400000" in str(results[3].error)
    assert results[0].outputs["echo"].text == "FIRST" and results[6].outputs["echo"].text == "LAST"
    assert results[5].outputs["echo"].text.endswith("C")
    assert sorted(seen) == list(range(len(inputs)))
    assert len({r.flow_run_id for r in results if r.flow_run_id}) >= 2


def test_a_bare_carriage_return_stays_inside_its_line() -> None:
    """The loader numbers lines by b"\\n" only: a \\r (a file edited on an old Mac, or binary
    junk) neither splits a line nor hides the next one (found by the full fuzzing run)."""
    lines = [b"\x00\r\x01", b'{"raw":\r{"id": 1, "body": "b"}}', b"\r"]  # \r: JSON whitespace
    assert check_loader(lines, COMPILED, 4096) == []
    assert [n for n, _ in read_inputs_of(lines)[0]] == [2]


def read_inputs_of(lines: list[bytes]) -> tuple[list[tuple[int, Any]], list[Any]]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(b"\n".join(lines) + b"\n")
        return read_inputs(path, COMPILED, 4096)
