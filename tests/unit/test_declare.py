"""Declaration: decorators, edges by parameter name, and every validation error."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from agents import LLM, Agent, Decision, DeclarationError, Memory
from tests.support.models import Ticket


class Routing(Decision):
    queue: str


class Sent(BaseModel):
    queue: str


def triage_agent() -> Agent:
    agent = Agent("triage")

    @agent.perception
    def ticket(raw: dict[str, Any]) -> Ticket:
        return Ticket(text=raw["text"])

    @agent.reasoning(threshold=0.7)
    def route(ticket: Ticket, memory: Memory, llm: LLM) -> Routing:
        return Routing(queue="billing", confidence=0.9, rationale="rule")

    @agent.action(retries=3)
    def send(route: Routing) -> Sent:
        return Sent(queue=route.queue)

    @agent.learning
    def remember(send: Sent, memory: Memory) -> None:
        return None

    return agent


def problems_of(agent: Agent) -> list[str]:
    with pytest.raises(DeclarationError) as info:
        agent.compile()
    return info.value.problems


def test_parameter_names_are_edges_resources_are_injected_and_the_rest_are_inputs() -> None:
    agent = triage_agent()
    compiled = agent.compile()
    assert [s.name for s in compiled.order] == ["ticket", "route", "send", "remember"]
    route = compiled.info("route")
    assert route.depends_on == ("ticket",)
    assert route.resources == ("memory", "llm")
    assert route.options.threshold == 0.7
    assert compiled.info("ticket").run_inputs == ("raw",)
    assert compiled.info("send").options.retries == 3
    assert compiled.input_names == ("raw",)


def test_a_step_stays_a_plain_callable() -> None:
    agent = triage_agent()
    send = agent.compile().steps["send"]
    out = send(Routing(queue="x", confidence=1, rationale="r"))
    assert out.queue == "x"


def test_decorators_work_bare_and_with_options_and_on_async_functions() -> None:
    agent = Agent("opts")

    @agent.perception(retries=2, retry_delay=0.5, timeout=3, cache=False, tags=["a"])
    async def seen(raw: str) -> str:
        return raw

    @agent.reasoning
    def pick(seen: str) -> Routing:
        return Routing(queue=seen, confidence=1, rationale="r")

    info = agent.compile().info("seen")
    assert info.is_async
    assert (info.options.retries, info.options.retry_delay, info.options.timeout) == (2, 0.5, 3)
    assert info.options.cache is False and info.options.tags == ("a",)


def test_unknown_option_is_rejected_when_applied() -> None:
    agent = Agent("bad-option")
    with pytest.raises(DeclarationError, match="unknown option"):
        agent.perception(retires=3)  # type: ignore[call-overload]
    with pytest.raises(DeclarationError, match="threshold"):
        agent.action(threshold=0.5)  # type: ignore[call-overload]


def test_missing_hint_names_step_and_parameter() -> None:
    agent = Agent("hints")
    with pytest.raises(DeclarationError) as info:

        @agent.perception
        def ticket(raw) -> str:  # type: ignore[no-untyped-def]
            return str(raw)

    assert "perception step 'ticket': parameter 'raw' has no type hint" in str(info.value)


def test_cycle_is_reported_with_its_path() -> None:
    agent = Agent("cycle")

    @agent.perception
    def a(b: str, raw: str) -> str:
        return raw

    @agent.perception
    def b(a: str) -> str:
        return a

    @agent.reasoning
    def decide(a: str) -> Routing:
        return Routing(queue=a, confidence=1, rationale="r")

    found = problems_of(agent)
    assert any("cycle a → b → a" in p or "cycle b → a → b" in p for p in found), found


def test_duplicate_names_are_reported() -> None:
    agent = Agent("dupes")

    @agent.perception
    def ticket(raw: str) -> str:
        return raw

    @agent.reasoning
    def decide(ticket: str) -> Routing:
        return Routing(queue=ticket, confidence=1, rationale="r")

    def make() -> None:
        @agent.perception
        def ticket(raw: str) -> str:
            return raw

    make()
    found = problems_of(agent)
    assert any("step 'ticket': declared 2 times" in p for p in found), found


def test_an_action_must_be_downstream_of_a_reasoning_step() -> None:
    agent = Agent("blind")

    @agent.perception
    def ticket(raw: str) -> str:
        return raw

    @agent.action
    def send(ticket: str) -> str:
        return ticket

    found = problems_of(agent)
    assert any("action step 'send': no reasoning step upstream" in p for p in found), found


def test_a_perception_output_nobody_reads_is_reported() -> None:
    agent = Agent("dangling")

    @agent.perception
    def ticket(raw: str) -> str:
        return raw

    @agent.perception
    def unused(raw: str) -> int:
        return len(raw)

    @agent.reasoning
    def decide(ticket: str) -> Routing:
        return Routing(queue=ticket, confidence=1, rationale="r")

    found = problems_of(agent)
    assert any("perception step 'unused': its output reaches no step" in p for p in found)


def test_type_mismatch_between_concrete_classes_names_both() -> None:
    agent = Agent("types")

    @agent.perception
    def ticket(raw: str) -> Ticket:
        return Ticket(text=raw)

    @agent.reasoning
    def decide(ticket: Routing) -> Routing:
        return ticket

    found = problems_of(agent)
    assert any(
        "reasoning step 'decide': parameter 'ticket' expects Routing, but step 'ticket' "
        "returns Ticket" in p
        for p in found
    ), found


def test_subclass_and_generic_hints_are_compatible() -> None:
    agent = Agent("compatible")

    @agent.perception
    def ticket(raw: str) -> Routing:
        return Routing(queue=raw, confidence=1, rationale="r")

    @agent.reasoning
    def decide(ticket: Decision) -> Routing:
        return Routing(queue="x", confidence=1, rationale="r")

    @agent.learning
    def log(decide: dict[str, Any] | Routing) -> None:
        return None

    agent.compile()


def test_reasoning_must_return_a_decision_and_data_flows_one_way() -> None:
    agent = Agent("layers")

    @agent.perception
    def ticket(raw: str, decide: str) -> str:
        return raw

    @agent.reasoning
    def decide(ticket: str) -> str:
        return ticket

    found = problems_of(agent)
    assert any("reasoning step 'decide': returns str" in p for p in found), found
    assert any("consumes reasoning step 'decide', a later layer" in p for p in found), found


def test_all_problems_are_reported_at_once_sorted_with_a_count() -> None:
    agent = Agent("many")

    @agent.perception
    def unused(raw: str) -> str:
        return raw

    @agent.action
    def send(raw: str) -> str:
        return raw

    with pytest.raises(DeclarationError) as info:
        agent.compile()
    assert "has 2 declaration problems" in str(info.value)
    assert info.value.problems == sorted(info.value.problems)


def test_resources_are_restricted_to_their_layers() -> None:
    agent = Agent("res")
    with pytest.raises(DeclarationError, match="'llm' is only injected"):

        @agent.action
        def send(route: Routing, llm: LLM) -> None:
            return None

    with pytest.raises(DeclarationError, match="'idempotency_key' is only injected"):

        @agent.reasoning
        def decide(raw: str, idempotency_key: str) -> Routing:
            return Routing(queue=raw, confidence=1, rationale="r")


def test_a_missing_run_input_is_named_at_call_time_before_any_step_runs() -> None:
    agent = triage_agent()
    calls: list[str] = []
    with pytest.raises(DeclarationError) as info:
        agent.run(tenant="acme", wrong={"text": "x"})
    message = str(info.value)
    assert "perception step 'ticket': run input 'raw' is missing" in message
    assert "input 'wrong': no step has a parameter of that name" in message
    assert calls == []


def test_graph_shows_layers_inputs_and_edges() -> None:
    text = triage_agent().graph()
    assert text.startswith("flowchart LR")
    assert "subgraph reasoning" in text
    assert "in_raw --> ticket" in text
    assert "route --> send" in text
    plain = triage_agent().compile().text()
    assert "reasoning  route ← ticket using memory, llm [threshold=0.7]" in plain


def test_a_step_whose_source_cannot_be_read_still_declares(tmp_path: Path) -> None:
    """Code exec'd under the name of a file that holds something else (a README's text) made
    `inspect.getsource` raise TokenError at declaration; the step falls back to its name."""
    text = tmp_path / "notes.md"
    text.write_text("Some prose (with an unclosed parenthesis\n" * 5)
    namespace: dict[str, Any] = {"Agent": Agent, "Decision": Decision}
    code = (
        'agent = Agent("opaque")\n'
        "class Echo(Decision):\n    text: str\n"
        "@agent.perception\ndef words(raw: str) -> str:\n    return raw\n"
        "@agent.reasoning\ndef echo(words: str) -> Echo:\n"
        "    return Echo(text=words, confidence=1.0, rationale='echo')\n"
    )
    exec(compile(code, str(text), "exec"), namespace)
    assert [s.name for s in namespace["agent"].steps] == ["words", "echo"]


def test_one_duration_grammar_for_review_timeouts_and_since() -> None:
    from agents import Review
    from agents.decisions import parse_since

    assert Review(timeout="1w").timeout_seconds == 7 * 86400
    assert Review(timeout="90s").timeout_seconds == 90
    cutoff = parse_since("1w")
    assert cutoff is not None
    with pytest.raises(ValueError, match="duration 'soon'"):
        _ = Review(timeout="soon").timeout_seconds


def test_a_review_timeout_that_is_not_a_duration_is_refused_at_declaration() -> None:
    from agents import Review

    agent = Agent("bad-review")
    with pytest.raises(DeclarationError, match="option 'review': timeout: duration 'soon'"):

        @agent.reasoning(threshold=0.5, review=Review(timeout="soon"))
        def judge(text: str) -> Decision:
            return Decision(confidence=1.0, rationale="")
