"""The bundled model server without a socket: its default rules, the app (in process), the value
generator and the schema finder, the pattern sampler and fault validation. Over real HTTP on
127.0.0.1: tests/integration/test_modelserver.py."""

from __future__ import annotations

from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from agents.modelserver import Faults, Rules, build_app
from agents.modelserver.completions import find_target, schema_from_messages
from agents.modelserver.patterns import sample_pattern
from agents.modelserver.schema import Steering, generate, is_valid
from tests.support.models import Contact, Priority, Triage

pytestmark = pytest.mark.timeout(60)


def test_default_rules_fit_the_triage_demo() -> None:
    rules = Rules.default()
    assert rules.match("I want a refund for this invoice").values["category"] == "billing"
    assert rules.match("My package never arrived").values["category"] == "shipping"
    assert rules.match("I am locked out of my account").values["category"] == "account"
    assert rules.match("The page shows an error").values["category"] == "technical"
    assert rules.match("URGENT: production outage").values["urgency"] == "high"
    vague = rules.match("help, something is weird")
    assert vague.values["confidence"] == pytest.approx(0.4)
    assert vague.values["category"] == "other"
    assert rules.match("hello").values == {"urgency": "normal"}


def test_build_app_defaults_to_the_demo_rules() -> None:
    from starlette.testclient import TestClient

    app = build_app()
    assert len(app.state.modelserver.rules) == len(Rules.default())
    with TestClient(app) as http:
        assert http.get("/health").json() == {"status": "ok"}


class Node(BaseModel):
    label: str
    children: list[Node] = Field(default_factory=list)


class Kitchen(BaseModel):
    kind: Literal["fixed"]
    ratio: float = Field(gt=0, lt=0.5)
    step: float = Field(multiple_of=0.25, ge=1)
    even: int = Field(multiple_of=2, gt=10, le=14)
    code: str = Field(pattern=r"^[A-Z]{2}\d{3}(-[a-z]+)?$")
    short: str = Field(max_length=4)
    long: str = Field(min_length=30)
    when: Any = None
    pair: tuple[int, str]
    mapping: dict[str, int]
    unique: set[Priority]
    choice: Contact | Priority
    tree: Node
    uid: str = Field(json_schema_extra={"format": "uuid"})
    default_word: str = "kept"


def test_generated_values_validate_against_pydantic_and_jsonschema() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = Kitchen.model_json_schema()
    for seed in ("a", "b", "c"):
        value = generate(schema, seed=seed)
        assert is_valid(value, schema)
        jsonschema.validate(value, schema)
        kitchen = Kitchen.model_validate(value)
        assert kitchen.default_word == "kept"
        assert kitchen.kind == "fixed"


def test_generate_handles_refs_steering_and_bounds() -> None:
    schema = {
        "$defs": {"Level": {"enum": ["low", "high"], "type": "string"}},
        "type": "object",
        "properties": {
            "level": {"$ref": "#/$defs/Level"},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
            "percent_confidence": {"type": "number", "minimum": 0, "maximum": 100},
            "maybe": {"anyOf": [{"type": "null"}, {"type": "integer", "exclusiveMinimum": 3}]},
            "flag": {"type": "boolean"},
        },
        "required": ["level", "confidence", "maybe", "flag"],
    }
    value = generate(schema, seed="x", steering=Steering(values={"level": "HIGH"}))
    assert value["level"] == "high"
    assert value["confidence"] == 0.9
    assert value["maybe"] >= 4
    assert is_valid(value, schema)
    assert generate(schema, seed="x") == generate(schema, seed="x")
    forced = generate(schema, steering=Steering(force_confidence=0.3))
    assert forced["confidence"] == 0.3
    assert not is_valid({"level": "mid"}, schema)


def test_schema_is_found_where_instructor_json_mode_puts_it() -> None:
    # The handler `instructor.from_openai(..., mode=Mode.JSON)` runs before sending a request.
    from instructor.v2.providers.openai.handlers import OpenAIJSONHandler

    _, kwargs = OpenAIJSONHandler().prepare_request(
        Triage, {"messages": [{"role": "user", "content": "hi"}]}
    )
    assert kwargs["response_format"] == {"type": "json_object"}
    assert kwargs["messages"][0]["role"] == "system"
    assert schema_from_messages(kwargs["messages"]) == Triage.model_json_schema()
    target = find_target(kwargs)
    assert target.mode == "json" and target.schema == Triage.model_json_schema()


def test_pattern_sampler() -> None:
    assert sample_pattern(r"^[A-Z]{3}-\d{4}$") == "AAA-0000"
    assert sample_pattern(r"^(foo|bar)+[^a-z]$") is not None
    assert sample_pattern(r"(a)\1") is None  # back-references are not supported


def test_faults_validation() -> None:
    with pytest.raises(ValueError, match="Unknown fault kind"):
        Faults(fail_next=["boom"])
    with pytest.raises(ValueError, match="error_rate"):
        Faults(error_rate=2)
    faults = Faults(fail_next=["drop", "401"])
    assert [faults.draw(), faults.draw(), faults.draw()] == ["drop", "401", None]

    faults.update(error_rate=0.5, error_kinds=["500", "drop"], seed=3)
    first = [faults.draw() for _ in range(20)]
    faults.update(seed=3)  # the same seed again restarts the sequence
    assert [faults.draw() for _ in range(20)] == first
    assert None in first and "500" in first and "drop" in first
