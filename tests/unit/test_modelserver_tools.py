"""The bundled model server's tool turns, in process (Starlette's TestClient, no socket): rules
name tool calls, the answer (`final_result`) reads the tool results, failed results are retried
once, faults hit tool turns, and requests that are not tool loops are answered as before. Over
real HTTP with the openai client: tests/integration/test_modelserver.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field
from starlette.testclient import TestClient

from agents.errors import ConfigurationError
from agents.modelserver import Faults, Rules, Stats, build_app
from agents.modelserver.completions import complete
from agents.modelserver.schema import is_valid
from agents.modelserver.tools import ANSWER_TOOL, MAX_TRIES, is_failure

pytestmark = pytest.mark.timeout(60)

RULES = Rules.from_list(
    [
        {
            "when": {"contains": ["order"]},
            "call": [
                {"tool": "lookup_order", "arguments": {"order_id": {"regex": r"order #?(\d+)"}}},
                {"tool": "customer_history", "arguments": {"customer": {"regex": r"cust-\d+"}}},
            ],
        },
        {"when": {"contains": ["inventory"]}, "call": [{"tool": "not_offered"}]},
        {"when": {"contains": ["refund"]}, "set": {"category": "billing", "confidence": 0.93}},
        {"when": {"contains": ["delivered"]}, "set": {"category": "shipping"}},
        {"set": {"category": "other", "confidence": 0.5}},
    ]
)


class Routing(BaseModel):
    category: Literal["billing", "shipping", "other"]
    confidence: float = Field(ge=0, le=1)
    rationale: str


class LookupOrder(BaseModel):
    order_id: str


class CustomerHistory(BaseModel):
    customer: str
    limit: int = 5


def function(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "parameters": parameters}}


TOOLS = [
    function("lookup_order", LookupOrder.model_json_schema()),
    function("customer_history", CustomerHistory.model_json_schema()),
    function(ANSWER_TOOL, Routing.model_json_schema()),
]
TICKET = "Where is my order #4411? Customer cust-7."


def request(messages: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"model": "stalwart-test", "messages": messages, "tools": TOOLS, **extra} | (
        {} if "tool_choice" in extra else {"tool_choice": "required"}
    )


def first_turn(text: str = TICKET) -> list[dict[str, Any]]:
    return [{"role": "system", "content": "Triage tickets."}, {"role": "user", "content": text}]


def answered(
    messages: list[dict[str, Any]], reply: dict[str, Any], results: dict[str, str]
) -> list[dict[str, Any]]:
    """`messages` plus the reply's assistant turn and one tool message per call."""
    message = reply["choices"][0]["message"]
    turn = {"role": "assistant", "content": None, "tool_calls": message["tool_calls"]}
    tool_messages = [
        {"role": "tool", "tool_call_id": call["id"], "content": results[call["function"]["name"]]}
        for call in message["tool_calls"]
    ]
    return [*messages, turn, *tool_messages]


def calls_of(reply: dict[str, Any]) -> list[tuple[str, Any]]:
    calls = reply["choices"][0]["message"]["tool_calls"]
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


@pytest.fixture
def app() -> Iterator[tuple[TestClient, Faults, Stats]]:
    faults, stats = Faults(), Stats()
    with TestClient(build_app(rules=RULES, faults=faults, stats=stats)) as http:
        yield http, faults, stats


def post(http: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    reply: dict[str, Any] = response.json()
    return reply


def test_two_tools_are_called_in_one_turn(app: tuple[TestClient, Faults, Stats]) -> None:
    http, _, stats = app
    reply = post(http, request(first_turn()))

    choice = reply["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    assert calls_of(reply) == [
        ("lookup_order", {"order_id": "4411"}),
        ("customer_history", {"customer": "cust-7", "limit": 5}),
    ]
    ids = [call["id"] for call in choice["message"]["tool_calls"]]
    assert len(set(ids)) == 2 and all(i.startswith("call_") for i in ids)
    assert all(call["type"] == "function" for call in choice["message"]["tool_calls"])
    assert reply["usage"]["completion_tokens"] > 0
    assert stats.tool_calls_total == 2 and stats.requests_total == 1
    again = post(http, request(first_turn()))  # deterministic: same request, same calls
    assert again["choices"] == reply["choices"]


def test_the_answer_reads_the_tool_results(app: tuple[TestClient, Faults, Stats]) -> None:
    http, _, stats = app
    messages = first_turn()
    reply = post(http, request(messages))
    results = {"lookup_order": '{"status": "refund pending"}', "customer_history": "2 tickets"}
    messages = answered(messages, reply, results)

    final = post(http, request(messages))

    [(name, arguments)] = calls_of(final)
    assert name == ANSWER_TOOL and final["choices"][0]["finish_reason"] == "tool_calls"
    assert Routing.model_validate(arguments).category == "billing"  # "refund" in a result
    assert arguments["confidence"] == pytest.approx(0.93)
    assert "lookup_order, customer_history" in arguments["rationale"]
    assert stats.tool_calls_total == 2  # the answer is not a tool call


def test_with_only_the_answer_tool_offered_the_answer_comes_at_once(
    app: tuple[TestClient, Faults, Stats],
) -> None:
    http, _, _ = app
    text = "No tools for this ticket about order 5."
    tools = [TOOLS[2]]  # only the answer tool: nothing to call, answered at once
    [(name, arguments)] = calls_of(post(http, request(first_turn(text), tools=tools)))
    assert name == ANSWER_TOOL
    assert arguments["category"] == "other" and arguments["confidence"] == 0.5


def test_a_failed_tool_is_retried_once_then_answered(
    app: tuple[TestClient, Faults, Stats],
) -> None:
    http, _, stats = app
    messages = first_turn("Where is order 12?")  # no customer: only lookup_order
    reply = post(http, request(messages))
    assert calls_of(reply) == [("lookup_order", {"order_id": "12"})]

    failures = ["Error: the order service timed out", '{"error": "unavailable"}']
    for tries, failure in enumerate(failures, start=1):
        messages = answered(messages, reply, {"lookup_order": failure})
        reply = post(http, request(messages))
        if tries < MAX_TRIES:
            assert calls_of(reply) == [("lookup_order", {"order_id": "12"})]
    [(name, arguments)] = calls_of(reply)
    assert name == ANSWER_TOOL
    # Failed results do not steer: "error"/"unavailable" would say nothing anyway, and the
    # answer says it used no tool.
    assert arguments["category"] == "other" and "results of" not in arguments["rationale"]
    assert stats.tool_calls_total == MAX_TRIES


def test_a_successful_call_is_not_made_again(app: tuple[TestClient, Faults, Stats]) -> None:
    http, _, _ = app
    messages = first_turn()
    reply = post(http, request(messages))
    results = {"lookup_order": "error: down", "customer_history": "delivered last week"}
    messages = answered(messages, reply, results)

    again = post(http, request(messages))

    assert calls_of(again) == [("lookup_order", {"order_id": "4411"})]  # only the failed one


def test_tools_a_step_does_not_offer_are_not_called(
    app: tuple[TestClient, Faults, Stats],
) -> None:
    http, _, stats = app
    [(name, _)] = calls_of(post(http, request(first_turn("Check the inventory"))))
    assert name == ANSWER_TOOL and stats.tool_calls_total == 0


def test_requests_that_are_not_tool_loops_are_answered_as_before() -> None:
    forced = request(
        first_turn(), tool_choice={"type": "function", "function": {"name": ANSWER_TOOL}}
    )
    reply = complete(forced, rules=RULES)
    [call] = reply["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == ANSWER_TOOL  # instructor's forced call: the answer
    assert call["id"] == f"call_{reply['id'].removeprefix('chatcmpl-')}"

    no_answer_tool = request(first_turn(), tools=TOOLS[:2])
    [call] = complete(no_answer_tool, rules=RULES)["choices"][0]["message"]["tool_calls"]
    assert call["function"]["name"] == "lookup_order"  # the first function, as before
    assert is_valid(json.loads(call["function"]["arguments"]), LookupOrder.model_json_schema())

    plain = complete({"model": "m", "messages": first_turn()}, rules=RULES)
    assert plain["choices"][0]["finish_reason"] == "stop"
    assert plain["choices"][0]["message"]["content"].startswith("This is the Stalwart")

    none = complete(request(first_turn(), tool_choice="none"), rules=RULES)
    assert none["choices"][0]["message"].get("tool_calls") is None


@pytest.mark.parametrize("kind", ["500", "429"])
def test_http_faults_hit_tool_turns(app: tuple[TestClient, Faults, Stats], kind: str) -> None:
    http, faults, stats = app
    faults.fail_next = [kind]
    response = http.post("/v1/chat/completions", json=request(first_turn()))
    assert response.status_code == int(kind)
    assert stats.faults_by_kind == {kind: 1} and stats.tool_calls_total == 0
    assert calls_of(post(http, request(first_turn())))[0][0] == "lookup_order"


def test_content_faults_and_forced_confidence_hit_tool_turns(
    app: tuple[TestClient, Faults, Stats],
) -> None:
    http, faults, _ = app
    faults.fail_next = ["malformed"]
    calls = post(http, request(first_turn()))["choices"][0]["message"]["tool_calls"]
    assert len(calls) == 2
    for call in calls:
        with pytest.raises(ValueError):
            json.loads(call["function"]["arguments"])

    faults.fail_next = ["schema_invalid"]
    for _, arguments in calls_of(post(http, request(first_turn()))):
        assert "order_id" not in arguments and "customer" not in arguments

    messages = answered(
        first_turn(),
        post(http, request(first_turn())),
        {"lookup_order": "ok", "customer_history": "ok"},
    )
    faults.force_confidence = 0.2
    [(_, arguments)] = calls_of(post(http, request(messages)))
    assert arguments["confidence"] == pytest.approx(0.2)


def test_latency_applies_to_tool_turns(app: tuple[TestClient, Faults, Stats]) -> None:
    import time

    http, faults, _ = app
    faults.latency_ms = 300
    started = time.monotonic()
    post(http, request(first_turn()))
    assert time.monotonic() - started >= 0.3


def test_captured_arguments_fit_the_tool_schema() -> None:
    rules = Rules.from_list(
        [{"call": [{"tool": "get", "arguments": {"n": {"regex": r"#(\d+)"}, "flag": True}}]}]
    )
    schema = {
        "type": "object",
        "properties": {
            "n": {"type": "integer"},
            "flag": {"type": "boolean"},
            "who": {"type": "string"},
        },
        "required": ["n", "who"],
    }
    body = request(first_turn("ticket #42"), tools=[function("get", schema), TOOLS[2]])
    [(name, arguments)] = calls_of(complete(body, rules=rules))
    assert name == "get" and arguments["n"] == 42 and arguments["flag"] is True
    assert is_valid(arguments, schema)  # "who" generated, as an answer's field would be


def test_call_rules_parse_and_fail_clearly() -> None:
    rule = Rules.from_list([{"call": {"tool": "t", "arguments": {"x": {"literal": {"regex": 1}}}}}])
    assert rule.calls("anything") == [("t", {"x": {"regex": 1}})]
    assert rule.match("anything").values == {}  # a call-only rule steers no field
    with pytest.raises(ConfigurationError, match="invalid regex"):
        Rules.from_list([{"call": [{"tool": "t", "arguments": {"x": {"regex": "("}}}]}])
    with pytest.raises(ConfigurationError, match="no group 2"):
        Rules.from_list(
            [{"call": [{"tool": "t", "arguments": {"x": {"regex": "(a)", "group": 2}}}]}]
        )
    with pytest.raises(ConfigurationError, match="'tool' name"):
        Rules.from_list([{"call": [{"arguments": {}}]}])
    with pytest.raises(ConfigurationError, match="'set'"):
        Rules.from_list([{"when": {"contains": ["x"]}}])


def test_failures_are_recognised() -> None:
    assert is_failure("error: boom") and is_failure("ERROR 500") and is_failure(None)
    assert is_failure('{"error": {"type": "Timeout"}}')
    assert not is_failure('{"error": null, "status": "ok"}')
    assert not is_failure("The order has no errors.") and not is_failure("[1, 2]")


def test_bundled_rules_call_the_triage_tools() -> None:
    rules = Rules.default()
    assert rules.calls("I need a return label for order 77310.") == [
        ("lookup_order", {"order_id": "77310"})
    ]
    assert rules.calls("You confirmed my order 10 days ago") == []  # not an order number
    assert rules.calls("Any update? Customer: cust-002") == [
        ("customer_history", {"customer": "cust-002"})
    ]
    assert rules.calls("Just following up on what I sent on Monday") == []  # no customer id
    assert rules.calls("I want a refund") == []
