"""The bundled offline model server, through the real `openai` client and `instructor`.

Everything runs over real HTTP on 127.0.0.1 against servers started in this process; no client is
mocked. Faults are changed between requests through `server.faults` and the HTTP admin routes.
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import instructor
import openai
import pytest
from instructor.core.exceptions import InstructorRetryException

from agents.modelserver import Faults, ModelServer, Rules
from agents.modelserver.schema import is_valid
from tests.support.models import Priority, Triage

pytestmark = pytest.mark.timeout(60)

MODEL = "stalwart-test"
TEST_RULES = Rules.from_list(
    [
        {
            "when": {"contains": ["refund", "charge"]},
            "set": {"category": "billing", "confidence": 0.92},
        },
        {"when": {"contains": ["crash"]}, "set": {"category": "technical", "priority": "HIGH"}},
        {"when": {"contains": ["vague"]}, "set": {"category": "nonsense", "confidence": 7}},
    ]
)
MODES = [instructor.Mode.TOOLS, instructor.Mode.JSON]


# -- fixtures ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ModelServer]:
    with ModelServer(port=0, rules=TEST_RULES) as running:
        yield running


@pytest.fixture(autouse=True)
def _clean(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").reset()


@pytest.fixture
def client(server: ModelServer) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=10) as raw:
        yield raw


def triage(
    client: openai.OpenAI,
    text: str,
    *,
    mode: instructor.Mode = instructor.Mode.TOOLS,
    max_retries: int = 0,
    model: str = MODEL,
) -> tuple[Triage, Any]:
    patched = instructor.from_openai(client, mode=mode)
    return patched.chat.completions.create_with_completion(
        model=model,
        response_model=Triage,
        messages=[{"role": "user", "content": text}],
        max_retries=max_retries,
    )


def chat(client: openai.OpenAI, text: str = "hello") -> Any:
    return client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": text}])


# -- structured output through instructor -------------------------------------------------------


@pytest.mark.parametrize(
    "mode",
    [*MODES, instructor.Mode.JSON_SCHEMA, instructor.Mode.MD_JSON],
    ids=lambda m: m.name,
)
def test_instructor_modes_return_valid_objects(
    client: openai.OpenAI, mode: instructor.Mode
) -> None:
    result, completion = triage(client, "Order 1234 arrived late", mode=mode)

    assert isinstance(result, Triage)
    assert result.confidence == 0.9
    assert result.rationale.strip()
    assert isinstance(result.priority, Priority)
    assert result.contact.tier in ("free", "pro", "enterprise")
    assert len(result.tags) == 1
    assert 3 <= len(result.summary) <= 40
    assert completion.model == MODEL
    assert completion.object == "chat.completion"
    assert completion.id.startswith("chatcmpl-")
    usage = completion.usage
    assert usage.prompt_tokens >= 1 and usage.completion_tokens >= 1
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_tools_reply_shape(server: ModelServer) -> None:
    schema = Triage.model_json_schema()
    body = {
        "model": "any-model",
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "Triage", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "Triage"}},
    }
    reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()

    choice = reply["choices"][0]
    assert choice["index"] == 0 and choice["finish_reason"] == "tool_calls"
    call = choice["message"]["tool_calls"][0]
    assert call["function"]["name"] == "Triage"
    assert is_valid(json.loads(call["function"]["arguments"]), schema)
    assert reply["model"] == "any-model"
    assert reply["object"] == "chat.completion" and isinstance(reply["created"], int)
    assert set(reply["usage"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}


def test_json_mode_content_is_pure_json(server: ModelServer) -> None:
    schema = Triage.model_json_schema()
    body = {
        "model": MODEL,
        "messages": [
            {
                "role": "system",
                "content": f"match the following json_schema:\n{json.dumps(schema)}",
            },
            {"role": "user", "content": "hi"},
        ],
        "response_format": {"type": "json_object"},
    }
    reply = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()

    assert reply["choices"][0]["finish_reason"] == "stop"
    assert Triage.model_validate_json(reply["choices"][0]["message"]["content"])


def test_json_mode_with_a_system_message(client: openai.OpenAI) -> None:
    patched = instructor.from_openai(client, mode=instructor.Mode.JSON)
    result = patched.chat.completions.create(
        model=MODEL,
        response_model=Triage,
        messages=[
            {"role": "system", "content": "You triage support tickets."},
            {"role": "user", "content": "I was charged twice"},
        ],
        max_retries=0,
    )
    assert result.category == "billing"


def test_plain_chat_is_short_and_deterministic(client: openai.OpenAI) -> None:
    first = chat(client, "How are you?")
    second = chat(client, "How are you?")

    text = first.choices[0].message.content
    assert text == second.choices[0].message.content
    assert "How are you?" in text and len(text) < 200
    assert first.choices[0].finish_reason == "stop"
    assert first.usage.total_tokens >= 2


# -- determinism and steering -------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_same_request_same_answer_and_inputs_vary(
    client: openai.OpenAI, mode: instructor.Mode
) -> None:
    first, _ = triage(client, "Ticket about order 77", mode=mode)
    again, _ = triage(client, "Ticket about order 77", mode=mode)
    assert first.model_dump() == again.model_dump()

    answers = [triage(client, f"Ticket about order {n}", mode=mode)[0] for n in range(8)]
    assert len({a.category for a in answers}) > 1
    assert len({a.model_dump_json() for a in answers}) == 8


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_rules_steer_fields(client: openai.OpenAI, mode: instructor.Mode) -> None:
    billing, _ = triage(client, "Please REFUND the double charge", mode=mode)
    assert billing.category == "billing"
    assert billing.confidence == 0.92
    assert "refund" in billing.rationale.lower()

    crash, _ = triage(client, "The app crashed", mode=mode)
    assert crash.category == "technical"
    assert crash.priority is Priority.high  # matched case-insensitively against the enum


def with_examples(
    client: openai.OpenAI, text: str, shots: list[tuple[str, dict[str, Any]]], mode: instructor.Mode
) -> Triage:
    """Ask with few-shot turns, as `agents.learning.examples.messages` writes them."""
    messages: list[Any] = []
    for shown, answer in shots:
        messages += [
            {"role": "user", "content": shown},
            {"role": "assistant", "content": json.dumps(answer)},
        ]
    messages.append({"role": "user", "content": text})
    patched = instructor.from_openai(client, mode=mode)
    return patched.chat.completions.create(
        model=MODEL, response_model=Triage, messages=messages, max_retries=0
    )


LEDGERLY = [
    ("Ledgerly statement is off by a cent", {"category": "account", "priority": "low"}),
    ("The Ledgerly statement lists March twice", {"category": "account", "priority": "low"}),
    ("Vaultkey seats are missing", {"category": "shipping", "priority": "high"}),
]


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_examples_answer_fields_the_rules_leave_open(
    client: openai.OpenAI, mode: instructor.Mode
) -> None:
    # Two examples share two distinctive words each ("ledgerly", "statement"): weight 4.
    learned = with_examples(client, "Our Ledgerly statement has a wrong total", LEDGERLY, mode)
    assert (learned.category, learned.priority) == ("account", Priority.low)
    assert learned.confidence == round(0.5 + 0.45 * (1 - math.exp(-4 / 2)), 2) == 0.89
    assert "Earlier examples sharing 'ledgerly', 'statement'" in learned.rationale

    # The examples disagree (weight 2 against 2): the confidence falls towards 0.5.
    split = [LEDGERLY[0], ("Ledgerly statement totals", {"category": "other"})]
    torn = with_examples(client, "Ledgerly statement again", split, mode)
    assert torn.confidence == round(0.78 * 0.5 + 0.5 * 0.5, 2) == 0.64

    # One word shared with one example is too little: the answer is the model's own.
    weak = with_examples(client, "Vaultkey question", LEDGERLY, mode)
    assert weak.confidence == 0.9 and "Earlier examples" not in weak.rationale

    # A keyword rule keeps precedence over the examples, field and confidence.
    ruled = with_examples(client, "Refund the Ledgerly statement charge", LEDGERLY, mode)
    assert (ruled.category, ruled.confidence) == ("billing", 0.92)
    assert ruled.priority == Priority.low  # no rule sets priority: the examples answer it


def test_rule_values_invalid_for_the_schema_are_ignored(client: openai.OpenAI) -> None:
    result, _ = triage(client, "something vague")
    assert result.category in ("billing", "technical", "account", "shipping", "other")
    assert result.confidence == 0.9


def test_rules_from_file(tmp_path: Path, client: openai.OpenAI) -> None:
    path = tmp_path / "rules.json"
    path.write_text(json.dumps([{"when": {"contains": "box"}, "set": {"category": "shipping"}}]))
    with (
        ModelServer(rules=path) as other,
        openai.OpenAI(base_url=other.url, api_key="test", max_retries=0) as raw,
    ):
        result, _ = triage(raw, "Where is my box?")
    assert result.category == "shipping"


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_force_confidence(
    server: ModelServer, client: openai.OpenAI, mode: instructor.Mode
) -> None:
    server.faults.force_confidence = 0.25
    assert triage(client, "refund please", mode=mode)[0].confidence == 0.25

    server.faults.force_confidence = 3.0  # out of bounds: clamped to the field's maximum
    assert triage(client, "refund please", mode=mode)[0].confidence == 1.0


# -- faults, as the client sees them ------------------------------------------------------------


def test_429_is_a_rate_limit_error_with_retry_after(
    server: ModelServer, client: openai.OpenAI
) -> None:
    server.faults.update(fail_next=["429"], retry_after_s=2)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    assert caught.value.status_code == 429
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["retry-after-ms"] == "2000"
    assert chat(client).choices[0].message.content  # only the next request was affected


def test_500_is_an_internal_server_error(server: ModelServer, client: openai.OpenAI) -> None:
    server.faults.fail_next = ["500"]
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client)
    assert caught.value.status_code == 500
    assert caught.value.type == "server_error"

    server.faults.fail_next = ["500"]  # instructor wraps the client's error
    with pytest.raises(InstructorRetryException) as wrapped:
        triage(client, "hi")
    assert isinstance(wrapped.value.__cause__, openai.InternalServerError)


def test_timeout_is_an_api_timeout_error(server: ModelServer) -> None:
    server.faults.update(fail_next=["timeout"], timeout_sleep_s=2)
    with openai.OpenAI(base_url=server.url, api_key="test", max_retries=0, timeout=0.5) as raw:
        started = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            chat(raw)
        assert time.monotonic() - started < 1.5
        assert chat(raw).choices[0].message.content  # the server kept serving


def test_timeout_fault_answers_a_patient_client(server: ModelServer, client: openai.OpenAI) -> None:
    server.faults.update(fail_next=["timeout"], timeout_sleep_s=0.2)
    started = time.monotonic()
    assert chat(client).choices[0].message.content
    assert time.monotonic() - started >= 0.2


def test_drop_is_a_connection_error(server: ModelServer, client: openai.OpenAI) -> None:
    server.faults.fail_next = ["drop"]
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(client)
    assert not isinstance(caught.value, openai.APITimeoutError)
    assert chat(client).choices[0].message.content

    server.faults.fail_next = ["drop"]
    with pytest.raises(InstructorRetryException) as wrapped:
        triage(client, "hi")
    assert isinstance(wrapped.value.__cause__, openai.APIConnectionError)
    assert triage(client, "hi")[0].rationale


@pytest.mark.parametrize("kind", ["malformed", "schema_invalid"])
@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_bad_json_fails_instructor_validation(
    server: ModelServer, client: openai.OpenAI, kind: str, mode: instructor.Mode
) -> None:
    server.faults.fail_next = [kind]
    with pytest.raises(InstructorRetryException):
        triage(client, "hi", mode=mode, max_retries=0)


@pytest.mark.parametrize("mode", MODES, ids=lambda m: m.name)
def test_reask_recovers_from_schema_invalid(
    server: ModelServer, client: openai.OpenAI, mode: instructor.Mode
) -> None:
    server.faults.fail_next = ["schema_invalid"]
    result, completion = triage(client, "refund", mode=mode, max_retries=2)

    assert result.category == "billing"
    assert server.stats.requests_total == 2
    assert server.stats.faults_by_kind == {"schema_invalid": 1}
    assert completion.usage.total_tokens > 0


def test_raw_fault_payloads(server: ModelServer) -> None:
    server.faults.fail_next = ["malformed", "schema_invalid"]
    schema = Triage.model_json_schema()
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "tools": [{"type": "function", "function": {"name": "Triage", "parameters": schema}}],
        "tool_choice": {"type": "function", "function": {"name": "Triage"}},
    }
    malformed = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()
    arguments = malformed["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    with pytest.raises(json.JSONDecodeError):
        json.loads(arguments)

    invalid = httpx.post(f"{server.url}/chat/completions", json=body, timeout=5).json()
    parsed = json.loads(invalid["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"])
    assert isinstance(parsed, dict)
    assert not set(schema["required"]) & set(parsed)


def test_status_code_faults(server: ModelServer, client: openai.OpenAI) -> None:
    server.faults.update(status_code=401, status_code_times=2)
    for _ in range(2):
        with pytest.raises(openai.AuthenticationError):
            chat(client)
    assert chat(client).choices[0].message.content

    server.faults.fail_next = ["400"]
    with pytest.raises(openai.BadRequestError) as caught:
        chat(client)
    assert caught.value.type == "invalid_request_error"

    server.faults.status_code = 503  # every request until cleared
    for _ in range(3):
        with pytest.raises(openai.InternalServerError):
            chat(client)
    server.faults.status_code = None
    assert chat(client).choices[0].message.content


def test_error_rate_is_reproducible_with_a_seed(server: ModelServer, client: openai.OpenAI) -> None:
    def outcomes() -> list[str]:
        seen = []
        for _ in range(12):
            try:
                chat(client)
                seen.append("ok")
            except openai.RateLimitError:
                seen.append("429")
            except openai.InternalServerError:
                seen.append("500")
        return seen

    server.faults.update(error_rate=0.5, error_kinds=["429", "500"], seed=7, retry_after_s=0)
    first = outcomes()
    server.faults.reset()
    server.faults.update(error_rate=0.5, error_kinds=["429", "500"], seed=7, retry_after_s=0)
    assert outcomes() == first
    assert {"ok", "429", "500"} <= set(first)


def test_latency(server: ModelServer, client: openai.OpenAI) -> None:
    server.faults.latency_ms = 200
    started = time.monotonic()
    chat(client)
    assert time.monotonic() - started >= 0.2

    server.faults.update(latency_ms=0, latency_ms_range=(50, 100))
    delays = [server.faults.latency_s() for _ in range(20)]
    assert all(0.05 <= d <= 0.1 for d in delays) and len(set(delays)) > 1


def test_latency_does_not_block_other_requests(server: ModelServer) -> None:
    server.faults.latency_ms = 700
    results: list[float] = []

    def slow() -> None:
        with openai.OpenAI(base_url=server.url, api_key="t", max_retries=0) as raw:
            started = time.monotonic()
            chat(raw)
            results.append(time.monotonic() - started)

    threads = [threading.Thread(target=slow) for _ in range(4)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len(results) == 4
    assert time.monotonic() - started < 2.0  # concurrent, not 4 x 0.7 s


# -- tool loop -----------------------------------------------------------------------------------


def test_tool_loop_through_the_openai_client() -> None:
    """Two tools in one turn, a 500 on the next turn, then an answer steered by a tool result."""
    rules: list[dict[str, Any]] = [
        {
            "when": {"contains": ["order"]},
            "call": [
                {"tool": "lookup_order", "arguments": {"order_id": {"regex": r"order #?(\d+)"}}},
                {"tool": "customer_history", "arguments": {"customer": {"regex": r"cust-\d+"}}},
            ],
        },
        {"when": {"contains": ["refund"]}, "set": {"category": "billing", "confidence": 0.92}},
    ]
    tools: Any = [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"The {name} tool.",
                "parameters": {
                    "type": "object",
                    "properties": {arg: {"type": "string"}},
                    "required": [arg],
                },
            },
        }
        for name, arg in (("lookup_order", "order_id"), ("customer_history", "customer"))
    ]
    tools.append(
        {
            "type": "function",
            "function": {"name": "final_result", "parameters": Triage.model_json_schema()},
        }
    )
    messages: list[Any] = [{"role": "user", "content": "Order #981 for cust-12 is missing."}]
    with (
        ModelServer(port=0, rules=rules) as server,
        openai.OpenAI(base_url=server.url, api_key="t", max_retries=0, timeout=10) as raw,
    ):
        first = raw.chat.completions.create(
            model=MODEL, messages=messages, tools=tools, tool_choice="required"
        )
        choice = first.choices[0]
        assert choice.finish_reason == "tool_calls" and choice.message.content is None
        calls = choice.message.tool_calls or []
        made = {c.function.name: json.loads(c.function.arguments) for c in calls}  # type: ignore[union-attr]
        assert made == {
            "lookup_order": {"order_id": "981"},
            "customer_history": {"customer": "cust-12"},
        }
        results = {"lookup_order": '{"status": "refund issued"}', "customer_history": "[]"}
        messages.append(
            {"role": "assistant", "content": None, "tool_calls": [c.model_dump() for c in calls]}
        )
        messages.extend(
            {"role": "tool", "tool_call_id": c.id, "content": results[c.function.name]}  # type: ignore[union-attr]
            for c in calls
        )

        server.faults.fail_next = ["500"]
        with pytest.raises(openai.InternalServerError):
            raw.chat.completions.create(
                model=MODEL, messages=messages, tools=tools, tool_choice="required"
            )
        final = raw.chat.completions.create(
            model=MODEL, messages=messages, tools=tools, tool_choice="required"
        )

        [answer] = final.choices[0].message.tool_calls or []
        assert answer.function.name == "final_result"  # type: ignore[union-attr]
        triaged = Triage.model_validate_json(answer.function.arguments)  # type: ignore[union-attr]
        assert triaged.category == "billing" and triaged.confidence == pytest.approx(0.92)
        stats = server.stats.snapshot()
        assert stats["requests_total"] == 3 and stats["tool_calls_total"] == 2
        assert stats["faults_by_kind"] == {"500": 1}


# -- admin routes, stats, life cycle -------------------------------------------------------------


def test_stats_counters(server: ModelServer, client: openai.OpenAI) -> None:
    _, first = triage(client, "hi")
    _, second = triage(client, "hi", model="other-model")
    server.faults.fail_next = ["500"]
    with pytest.raises(openai.InternalServerError):
        chat(client)

    stats = httpx.get(f"{server.base_url}/_stalwart/stats", timeout=5).json()
    assert stats == server.stats.snapshot()
    assert stats["requests_total"] == 3
    assert stats["requests_by_model"] == {MODEL: 2, "other-model": 1}
    assert stats["faults_injected"] == 1 and stats["faults_by_kind"] == {"500": 1}
    served = first.usage.total_tokens + second.usage.total_tokens
    assert stats["tokens_served"] == served

    server.stats.reset()
    assert server.stats.snapshot()["requests_total"] == 0


def test_faults_over_http(server: ModelServer, client: openai.OpenAI) -> None:
    admin = f"{server.base_url}/_stalwart/faults"
    reply = httpx.post(admin, json={"fail_next": ["500"], "force_confidence": 0.1}, timeout=5)
    assert reply.status_code == 200 and reply.json()["fail_next"] == ["500"]
    assert server.faults.force_confidence == 0.1

    with pytest.raises(openai.InternalServerError):
        chat(client)
    assert triage(client, "hi")[0].confidence == 0.1

    bad = httpx.post(admin, json={"fail_next": ["explode"]}, timeout=5)
    assert bad.status_code == 400 and "explode" in bad.json()["error"]["message"]
    assert server.faults.fail_next == []  # rolled back
    assert httpx.post(admin, json={"no_such": 1}, timeout=5).status_code == 400

    reset = httpx.post(admin, json={"reset": True}, timeout=5).json()
    assert reset["force_confidence"] is None
    assert httpx.get(admin, timeout=5).json() == server.faults.to_dict()

    everything = httpx.post(f"{server.base_url}/_stalwart/reset", timeout=5).json()
    assert everything["requests_total"] == 0


def test_health_models_and_bad_requests(server: ModelServer, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server.base_url}/health", timeout=5).json() == {"status": "ok"}
    assert MODEL in {m.id for m in client.models.list()}
    assert client.models.retrieve("gpt-x").id == "gpt-x"

    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    not_json = httpx.post(
        f"{server.url}/chat/completions",
        content=b"{nope",
        timeout=5,
        headers={"content-type": "application/json"},
    )
    assert not_json.status_code == 400


def test_servers_restart_and_coexist() -> None:
    first = ModelServer()
    with first:
        port = first.port
        with ModelServer() as second:
            assert second.port != port
            assert httpx.get(f"{second.base_url}/health", timeout=5).status_code == 200
    assert not first.running
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{first.base_url}/health", timeout=1)

    first.start()
    try:
        assert first.port == port
        with openai.OpenAI(base_url=first.url, api_key="t", max_retries=0) as raw:
            assert chat(raw).choices[0].message.content
    finally:
        first.stop()
    first.stop()  # idempotent


def test_stop_is_prompt_during_a_pending_timeout_fault() -> None:
    server = ModelServer(faults=Faults(fail_next=["timeout"], timeout_sleep_s=30)).start()
    raw = openai.OpenAI(base_url=server.url, api_key="t", max_retries=0, timeout=20)
    errors: list[Exception] = []

    def call() -> None:
        try:
            chat(raw)
        except Exception as exc:  # the server goes away mid-request
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.3)
    started = time.monotonic()
    server.stop()
    assert time.monotonic() - started < 3
    thread.join(timeout=5)
    raw.close()


def test_serve_runs_in_the_foreground(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"set": {"category": "other"}}]}))
    code = f"from agents.modelserver import serve; serve(port={port}, rules_path={str(rules)!r})"
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=Path(__file__).resolve().parents[2],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert process.poll() is None, "serve() exited"
            assert time.monotonic() < deadline, "serve() did not come up"
            time.sleep(0.1)
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="t", max_retries=0
        ) as raw:
            assert triage(raw, "anything")[0].category == "other"
    finally:
        process.terminate()
        process.wait(timeout=10)


# -- who is waiting ------------------------------------------------------------------------------


def test_in_flight_requests_are_known_by_client_port_and_map_to_their_process(
    server: ModelServer,
) -> None:
    from bench.faults.s2_worker_kill import processes_on_ports

    server.faults.update(latency_ms_range=(2000.0, 2000.0))
    asker = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import openai, sys; openai.OpenAI(base_url=sys.argv[1], api_key='k', max_retries=0)"
            ".chat.completions.create(model='m', messages=[{'role': 'user', 'content': 'hi'}])",
            server.url,
        ]
    )
    try:
        deadline = time.monotonic() + 20
        ports: set[int] = set()
        while not ports and time.monotonic() < deadline and asker.poll() is None:
            ports = server.stats.ports_in_flight()
            time.sleep(0.02)
        assert len(ports) == 1, "the request never showed as in flight"
        assert processes_on_ports(ports, server.port) == {asker.pid}
        assert asker.wait(timeout=20) == 0
    finally:
        asker.kill()
    assert server.stats.ports_in_flight() == set()
    assert server.stats.in_flight == 0
    assert processes_on_ports(ports, server.port) == set()
