"""Schema-valid values: how the offline model turns a JSON schema into an answer.

This module owns value generation and the small JSON-schema validator it relies on. `generate`
walks a schema (objects, `$ref`/`$defs`, `allOf`, `anyOf`/`oneOf`, `enum`/`const`, arrays,
strings with `format`/`pattern`/lengths, bounded integers and numbers, booleans, defaults) and
returns a value valid against it. Every choice is derived from a sha256 of a caller-supplied seed
and the position in the schema, so the same seed always yields the same value and different
seeds can yield different enum members.

`Steering` carries what the caller wants to force: field values from steering rules, a forced
confidence, the default confidence (0.9) given to a numeric `confidence` field, the sentence for a
`rationale` field, and the user's text that string fields quote.
"""

from __future__ import annotations

import copy
import hashlib
import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from agents.modelserver.patterns import sample_pattern

DEFAULT_CONFIDENCE = 0.9
DEFAULT_RATIONALE = "The offline model derived this answer deterministically from the request."
MAX_DEPTH = 8
_HARD_DEPTH = 4 * MAX_DEPTH
_MAX_REF_HOPS = 64
_MISSING: Any = object()
_TEXT_FIELDS = frozenset(
    {"summary", "title", "subject", "description", "text", "content", "message", "body"}
    | {"reply", "response", "answer", "question", "query", "request", "issue", "problem"}
)
_FORMAT_SAMPLES: dict[str, str] = {
    "date-time": "2024-01-01T12:00:00Z",
    "date": "2024-01-01",
    "time": "12:00:00",
    "duration": "PT1H",
    "email": "user@example.com",
    "idn-email": "user@example.com",
    "uri": "https://example.com/",
    "url": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "192.0.2.1",
    "ipv6": "2001:db8::1",
    "ipvanyaddress": "192.0.2.1",
    "ipvanyinterface": "192.0.2.1/24",
    "ipvanynetwork": "192.0.2.0/24",
    "ipv4interface": "192.0.2.1/24",
    "ipv4network": "192.0.2.0/24",
    "ipv6interface": "2001:db8::1/64",
    "ipv6network": "2001:db8::/64",
    "multi-host-uri": "https://example.com/",
    "path": "/tmp/example",
    "json-string": '"example"',
}


@dataclass(frozen=True)
class Steering:
    """What the caller forces on a generated value, field by field.

    Attributes:
        values: Field name to value, applied wherever a property of that name exists and the
            value is valid for it (strings are matched case-insensitively against enums).
        force_confidence: Overrides any `confidence` field (clamped into the field's bounds).
        default_confidence: Value of a numeric `confidence` field nobody steered.
        rationale: Sentence for a string `rationale` field.
        context: The user's text; generic string fields quote a snippet of it.

    Example:
        >>> Steering(values={"category": "billing"}, force_confidence=0.3).values["category"]
        'billing'
    """

    values: Mapping[str, Any] = field(default_factory=dict)
    force_confidence: float | None = None
    default_confidence: float = DEFAULT_CONFIDENCE
    rationale: str | None = None
    context: str = ""


def generate(schema: Mapping[str, Any], *, seed: str = "", steering: Steering | None = None) -> Any:
    """A value valid against `schema`, chosen deterministically from `seed`.

    Args:
        schema: A JSON schema (draft 2020-12 as Pydantic emits it; `$defs` resolved from it).
        seed: Any string; equal seeds give equal values (use a digest of the request).
        steering: Forced field values and confidence; none by default.

    Returns:
        A JSON-compatible value (dict, list, str, int, float, bool or None).

    Example:
        >>> generate({"type": "object", "properties": {"n": {"type": "integer", "minimum": 5,
        ...     "maximum": 5}}, "required": ["n"]})
        {'n': 5}
    """
    return _Generator(schema, seed, steering or Steering()).value(schema, "#", None, 0)


def is_valid(
    value: Any, schema: Mapping[str, Any], *, root: Mapping[str, Any] | None = None
) -> bool:
    """Whether `value` satisfies `schema` (the subset of JSON schema that `generate` handles).

    Args:
        value: A JSON-compatible value.
        schema: The schema to check against.
        root: The document `$ref`s resolve against; `schema` itself by default.

    Returns:
        True when valid. Unknown keywords and `format` are not checked.

    Example:
        >>> is_valid(0.5, {"type": "number", "minimum": 0, "maximum": 1})
        True
    """
    return _Validator(root if root is not None else schema).check(value, schema, 0)


def resolve(schema: Mapping[str, Any] | bool, root: Mapping[str, Any]) -> dict[str, Any]:
    """`schema` with its top-level `$ref` chain inlined and `allOf` merged (not recursive).

    Sibling keywords of a `$ref` (a default, a description) win over the target's.

    Args:
        schema: A (sub)schema; `True` means anything, `False` is returned as `{"not": {}}`.
        root: The document `$ref`s point into (`#/$defs/...`, `#/definitions/...`).

    Returns:
        A new dict; the inputs are not modified.

    Example:
        >>> resolve({"$ref": "#/$defs/A"}, {"$defs": {"A": {"type": "string"}}})
        {'type': 'string'}
    """
    if schema is True:
        return {}
    if schema is False:
        return {"not": {}}
    current = dict(schema)
    for _ in range(_MAX_REF_HOPS):
        ref = current.pop("$ref", None)
        if not isinstance(ref, str):
            break
        target = dict(_lookup(ref, root))
        target.update(current)
        current = target
    parts = current.pop("allOf", None)
    if isinstance(parts, list):
        for part in parts:
            current = _merge(current, resolve(part, root))
    return current


def _lookup(ref: str, root: Mapping[str, Any]) -> Mapping[str, Any]:
    if not ref.startswith("#"):
        return {}
    node: Any = root
    for raw in ref[1:].split("/"):
        if not raw:
            continue
        key = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(node, Mapping) and key in node:
            node = node[key]
        elif isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
        else:
            return {}
    return node if isinstance(node, Mapping) else {}


def _merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if key == "properties" and isinstance(value, Mapping):
            merged["properties"] = {**dict(merged.get("properties") or {}), **dict(value)}
        elif key == "required" and isinstance(value, list):
            seen = list(merged.get("required") or [])
            merged["required"] = seen + [name for name in value if name not in seen]
        else:
            merged.setdefault(key, value)
    return merged


def _is_null_schema(schema: Mapping[str, Any]) -> bool:
    return schema.get("type") == "null" or ("const" in schema and schema["const"] is None)


def _json_equal(left: Any, right: Any) -> bool:
    if isinstance(left, bool) or isinstance(right, bool):
        return type(left) is type(right) and left == right
    return bool(left == right)


def _is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_type(value: Any, kind: str) -> bool:
    checks: dict[str, bool] = {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
        "number": _is_number(value) and math.isfinite(value),
        "integer": _is_number(value) and math.isfinite(value) and float(value).is_integer(),
    }
    return checks.get(kind, True)


def _numeric_limits(schema: Mapping[str, Any]) -> tuple[float | None, bool, float | None, bool]:
    """(low, low_exclusive, high, high_exclusive), understanding draft-4 boolean exclusives."""
    low: float | None = None
    high: float | None = None
    low_excl = high_excl = False
    minimum, maximum = schema.get("minimum"), schema.get("maximum")
    ex_min, ex_max = schema.get("exclusiveMinimum"), schema.get("exclusiveMaximum")
    if _is_number(minimum):
        low, low_excl = float(minimum), ex_min is True
    if _is_number(ex_min) and (low is None or ex_min >= low):
        low, low_excl = float(ex_min), True
    if _is_number(maximum):
        high, high_excl = float(maximum), ex_max is True
    if _is_number(ex_max) and (high is None or ex_max <= high):
        high, high_excl = float(ex_max), True
    return low, low_excl, high, high_excl


def _step(schema: Mapping[str, Any]) -> float | None:
    """The schema's positive `multipleOf`, or None."""
    step = schema.get("multipleOf")
    return float(step) if _is_number(step) and step > 0 else None


def _is_multiple(value: float, step: float) -> bool:
    quotient = value / step
    return abs(quotient - round(quotient)) < 1e-9


class _Validator:
    def __init__(self, root: Mapping[str, Any]) -> None:
        self.root = root

    def check(self, value: Any, schema: Mapping[str, Any] | bool, depth: int) -> bool:
        if depth > 64:
            return True
        s = resolve(schema, self.root)
        return (
            self._check_choices(value, s, depth)
            and self._check_type(value, s)
            and self._check_string(value, s)
            and self._check_number(value, s)
            and self._check_array(value, s, depth)
            and self._check_object(value, s, depth)
        )

    def _check_choices(self, value: Any, s: Mapping[str, Any], depth: int) -> bool:
        if "const" in s and not _json_equal(value, s["const"]):
            return False
        enum = s.get("enum")
        if isinstance(enum, list) and not any(_json_equal(value, item) for item in enum):
            return False
        any_of = s.get("anyOf")
        if isinstance(any_of, list) and not any(self.check(value, b, depth + 1) for b in any_of):
            return False
        one_of = s.get("oneOf")
        if isinstance(one_of, list) and sum(self.check(value, b, depth + 1) for b in one_of) != 1:
            return False
        negated = s.get("not")
        return not (isinstance(negated, Mapping | bool) and self.check(value, negated, depth + 1))

    @staticmethod
    def _check_type(value: Any, s: Mapping[str, Any]) -> bool:
        kind = s.get("type")
        if kind is None:
            return True
        kinds = [kind] if isinstance(kind, str) else list(kind)
        return any(_is_type(value, item) for item in kinds)

    @staticmethod
    def _check_string(value: Any, s: Mapping[str, Any]) -> bool:
        if not isinstance(value, str):
            return True
        if len(value) < s.get("minLength", 0):
            return False
        max_length = s.get("maxLength")
        if isinstance(max_length, int) and len(value) > max_length:
            return False
        pattern = s.get("pattern")
        if isinstance(pattern, str):
            try:
                return re.search(pattern, value) is not None
            except re.error:
                return True
        return True

    @staticmethod
    def _check_number(value: Any, s: Mapping[str, Any]) -> bool:
        if not _is_number(value):
            return True
        low, low_excl, high, high_excl = _numeric_limits(s)
        if low is not None and (value < low or (low_excl and value == low)):
            return False
        if high is not None and (value > high or (high_excl and value == high)):
            return False
        step = _step(s)
        return step is None or _is_multiple(float(value), step)

    def _check_array(self, value: Any, s: Mapping[str, Any], depth: int) -> bool:
        if not isinstance(value, list):
            return True
        if len(value) < s.get("minItems", 0):
            return False
        max_items = s.get("maxItems")
        if isinstance(max_items, int) and len(value) > max_items:
            return False
        prefix = s.get("prefixItems")
        prefix_list: list[Any] = list(prefix) if isinstance(prefix, list) else []
        for item, sub in zip(value, prefix_list, strict=False):
            if not self.check(item, sub, depth + 1):
                return False
        items = s.get("items")
        rest = value[len(prefix_list) :]
        if isinstance(items, Mapping | bool) and not all(
            self.check(item, items, depth + 1) for item in rest
        ):
            return False
        if s.get("uniqueItems") is True:
            seen: list[Any] = []
            for item in value:
                if any(_json_equal(item, other) for other in seen):
                    return False
                seen.append(item)
        return True

    def _check_object(self, value: Any, s: Mapping[str, Any], depth: int) -> bool:
        if not isinstance(value, dict):
            return True
        required = s.get("required") or []
        if any(name not in value for name in required):
            return False
        properties: Mapping[str, Any] = s.get("properties") or {}
        additional = s.get("additionalProperties", True)
        for key, item in value.items():
            if key in properties:
                if not self.check(item, properties[key], depth + 1):
                    return False
            elif additional is False or (
                isinstance(additional, Mapping) and not self.check(item, additional, depth + 1)
            ):
                return False
        if len(value) < s.get("minProperties", 0):
            return False
        max_properties = s.get("maxProperties")
        return not (isinstance(max_properties, int) and len(value) > max_properties)


class _Generator:
    def __init__(self, root: Mapping[str, Any], seed: str, steering: Steering) -> None:
        self.root = root
        self.seed = seed
        self.steering = steering
        self.validator = _Validator(root)

    # -- deterministic choices -------------------------------------------------------------

    def _digest(self, path: str) -> bytes:
        return hashlib.sha256(f"{self.seed}|{path}".encode()).digest()

    def pick(self, path: str, count: int) -> int:
        if count <= 1:
            return 0
        return int.from_bytes(self._digest(path)[:8], "big") % count

    def fraction(self, path: str) -> float:
        return int.from_bytes(self._digest(path)[:8], "big") / 2.0**64

    def valid(self, value: Any, schema: Mapping[str, Any]) -> bool:
        return self.validator.check(value, schema, 0)

    # -- dispatch ------------------------------------------------------------------------------

    def value(
        self, schema: Mapping[str, Any] | bool, path: str, name: str | None, depth: int
    ) -> Any:
        if depth > _HARD_DEPTH:  # only a schema with no finite instance gets here
            return None
        s = resolve(schema, self.root)
        if name is not None:
            steered = self.steered(name, s)
            if steered is not _MISSING:
                return steered
        if "const" in s:
            return copy.deepcopy(s["const"])
        enum = s.get("enum")
        if isinstance(enum, list) and enum:
            options = [item for item in enum if item is not None] or enum
            return copy.deepcopy(options[self.pick(path, len(options))])
        if name is not None and "default" in s and self.valid(s["default"], s):
            return copy.deepcopy(s["default"])
        branches = s.get("anyOf") or s.get("oneOf")
        if isinstance(branches, list) and branches:
            return self.value(self.choose_branch(branches, depth), path, name, depth)
        kind = self.type_of(s, depth)
        if kind == "object":
            return self.object_value(s, path, depth)
        if kind == "array":
            return self.array_value(s, path, depth)
        if kind == "integer":
            return self.integer_value(s, path)
        if kind == "number":
            return self.number_value(s, path)
        if kind == "boolean":
            return self.pick(path, 2) == 0
        if kind == "null":
            return None
        return self.string_value(s, path, name)

    def choose_branch(self, branches: Sequence[Any], depth: int) -> Any:
        resolved = [(branch, resolve(branch, self.root)) for branch in branches]
        nulls = [branch for branch, r in resolved if _is_null_schema(r)]
        if depth >= MAX_DEPTH and nulls:
            return nulls[0]
        others = [branch for branch, r in resolved if not _is_null_schema(r)]
        return others[0] if others else branches[0]

    @staticmethod
    def type_of(s: Mapping[str, Any], depth: int) -> str:
        kind = s.get("type")
        if isinstance(kind, list):
            if depth >= MAX_DEPTH and "null" in kind:
                return "null"
            non_null = [item for item in kind if item != "null"]
            return str(non_null[0]) if non_null else "null"
        if isinstance(kind, str):
            return kind
        if any(key in s for key in ("properties", "additionalProperties", "required")):
            return "object"
        if "items" in s or "prefixItems" in s:
            return "array"
        if any(key in s for key in ("minimum", "maximum", "exclusiveMinimum", "multipleOf")):
            return "number"
        return "string"

    # -- steering ------------------------------------------------------------------------------

    def steered(self, name: str, s: Mapping[str, Any]) -> Any:
        steering = self.steering
        if name == "confidence" and steering.force_confidence is not None:
            forced = self.clamp(float(steering.force_confidence), s)
            if forced is not _MISSING:
                return forced
        if name in steering.values:
            candidate = self.coerce(steering.values[name], s)
            if candidate is not _MISSING:
                return candidate
        if name == "confidence":
            default = steering.default_confidence
            for candidate in (default, round(default * 100, 6)):
                if self.valid(candidate, s):
                    return candidate
        if name == "rationale":
            text = _fit_length(steering.rationale or DEFAULT_RATIONALE, s)
            if self.valid(text, s):
                return text
        return _MISSING

    def coerce(self, value: Any, s: Mapping[str, Any]) -> Any:
        if self.valid(value, s):
            return copy.deepcopy(value)
        if isinstance(value, str):
            for option in self.enum_options(s):
                if isinstance(option, str) and option.casefold() == value.casefold():
                    return option
        return _MISSING

    def enum_options(self, s: Mapping[str, Any]) -> list[Any]:
        options: list[Any] = list(s.get("enum") or [])
        if "const" in s:
            options.append(s["const"])
        for branch in s.get("anyOf") or s.get("oneOf") or []:
            options.extend(self.enum_options(resolve(branch, self.root)))
        return options

    def clamp(self, value: float, s: Mapping[str, Any]) -> Any:
        if self.valid(value, s):
            return value
        numeric = [s, *(resolve(b, self.root) for b in s.get("anyOf") or s.get("oneOf") or [])]
        for candidate in numeric:
            if candidate.get("type") not in ("number", "integer"):
                continue
            low, low_excl, high, high_excl = _numeric_limits(candidate)
            clamped = value
            if low is not None and clamped <= low:
                clamped = low + (1e-9 if low_excl else 0.0)
            if high is not None and clamped >= high:
                clamped = high - (1e-9 if high_excl else 0.0)
            if self.valid(clamped, s):
                return clamped
        return _MISSING

    # -- containers ----------------------------------------------------------------------------

    def object_value(self, s: Mapping[str, Any], path: str, depth: int) -> dict[str, Any]:
        properties: Mapping[str, Any] = s.get("properties") or {}
        required = [name for name in s.get("required") or [] if isinstance(name, str)]
        additional = s.get("additionalProperties")
        extra_schema: Mapping[str, Any] = additional if isinstance(additional, Mapping) else {}
        out: dict[str, Any] = {}
        for key, sub in properties.items():
            if depth >= MAX_DEPTH and key not in required:
                continue
            out[key] = self.value(sub, f"{path}/{key}", key, depth + 1)
        for key in required:
            if key not in out:
                out[key] = self.value(extra_schema, f"{path}/{key}", key, depth + 1)
        wanted = max(int(s.get("minProperties", 0)), 1 if isinstance(additional, Mapping) else 0)
        index = 0
        while len(out) < wanted and not properties and depth < MAX_DEPTH and index < 64:
            key = "key" if index == 0 else f"key{index}"
            out.setdefault(key, self.value(extra_schema, f"{path}/{key}", key, depth + 1))
            index += 1
        return out

    def array_value(self, s: Mapping[str, Any], path: str, depth: int) -> list[Any]:
        min_items = int(s.get("minItems", 0))
        max_items = s.get("maxItems")
        count = min_items if depth >= MAX_DEPTH else max(1, min_items)
        if isinstance(max_items, int):
            count = min(count, max_items)
        prefix = s.get("prefixItems")
        prefix_list: list[Any] = list(prefix) if isinstance(prefix, list) else []
        items = s.get("items")
        item_schema: Mapping[str, Any] | bool = items if isinstance(items, Mapping | bool) else {}
        out: list[Any] = []
        for index, sub in enumerate(prefix_list):
            out.append(self.value(sub, f"{path}/{index}", None, depth + 1))
        if items is False:
            return out
        unique = s.get("uniqueItems") is True
        index = len(out)
        attempts = 0
        while len(out) < count and attempts < count + 16:
            candidate = self.value(item_schema, f"{path}/{index}~{attempts}", None, depth + 1)
            attempts += 1
            if unique and any(_json_equal(candidate, seen) for seen in out):
                continue
            out.append(candidate)
            index += 1
        return out

    # -- scalars -------------------------------------------------------------------------------

    def integer_value(self, s: Mapping[str, Any], path: str) -> int:
        low_f, low_excl, high_f, high_excl = _numeric_limits(s)
        low = None if low_f is None else (math.floor(low_f) + 1 if low_excl else math.ceil(low_f))
        high = (
            None if high_f is None else (math.ceil(high_f) - 1 if high_excl else math.floor(high_f))
        )
        if low is None and high is None:
            low, high = 1, 100
        elif low is None:
            assert high is not None
            low = high - 99
        elif high is None:
            high = low + 99
        if low > high:
            return low
        value = low + self.pick(path, min(high - low + 1, 100))
        step = _step(s)
        if step is not None:
            candidate = math.ceil(value / step) * step
            if candidate > high:
                candidate = math.floor(high / step) * step
            value = int(candidate)
        return value

    def number_value(self, s: Mapping[str, Any], path: str) -> float:
        low, _, high, _ = _numeric_limits(s)
        if low is None and high is None:
            low, high = 0.0, 100.0
        elif low is None:
            assert high is not None
            low = high - 100.0
        elif high is None:
            high = low + 100.0
        step = _step(s)
        if step is not None:
            first = math.ceil(low / step)
            for k in range(first, first + 3):
                candidate = round(k * step, 10)
                if self.valid(candidate, s):
                    return candidate
        exact = low + (high - low) * (0.1 + 0.8 * self.fraction(path))
        rounded = round(exact, 2)
        if self.valid(rounded, s):
            return rounded
        midpoint = (low + high) / 2.0
        return exact if self.valid(exact, s) else midpoint

    def string_value(self, s: Mapping[str, Any], path: str, name: str | None) -> str:
        pattern = s.get("pattern")
        fmt = s.get("format")
        if isinstance(pattern, str):
            sample = sample_pattern(pattern)
            if sample is not None:
                fitted = _fit_length(sample, s)
                return fitted if self.valid(fitted, s) else sample
        text: str | None = None
        if fmt == "uuid":
            digest = self._digest(path)
            text = str(uuid.UUID(bytes=digest[:16], version=4))
        elif isinstance(fmt, str):
            text = _FORMAT_SAMPLES.get(fmt)
        if text is None:
            text = self.text_for(name)
        return _fit_length(text, s)

    def text_for(self, name: str | None) -> str:
        label = (name or "item").replace("_", " ").strip() or "item"
        snippet = _snippet(self.steering.context, 60)
        if snippet and (name or "").lower() in _TEXT_FIELDS:
            return snippet
        return f"{label}: {snippet}" if snippet else f"example {label}"


def _snippet(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    if len(flat) <= limit:
        return flat
    return flat[: limit - 3].rstrip() + "..."


def _fit_length(text: str, s: Mapping[str, Any]) -> str:
    min_length = s.get("minLength", 0)
    max_length = s.get("maxLength")
    if isinstance(min_length, int) and len(text) < min_length:
        text = text + "x" * (min_length - len(text))
    if isinstance(max_length, int) and len(text) > max_length:
        text = text[:max_length]
    return text
